"""The client's own reading: the job file ``submit`` sends (read here, validated by the server) and
where it finds the API token (where the service writes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipewave.cli.client import pipewave_home, resolve_connection
from pipewave.cli.client_commands import register


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app



def _submit(app: typer.Typer, path: Path, url: str) -> Any:
    result = CliRunner().invoke(app, ["submit", str(path), "--url", url, "--token", "t"])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("bad.yaml", "name: [unclosed\n", "cannot read job file {path}: while parsing a flow sequence"),
        ("tabs.yaml", "name: x\n\tsteps: 3\n", "cannot read job file {path}: while scanning"),
        ("bad.json", '{"name": "x",}', "cannot read job file {path}: Expecting property name"),
        ("list.yaml", "- name: x\n", "job file {path} must hold a mapping of fields, not list"),
        ("empty.yaml", "", "job file {path} must hold a mapping of fields, not NoneType"),
        ("date.yaml", "name: 2024-01-02\n", "cannot send job file {path} as JSON: Object of type date"),
        ("nan.yaml", "name: x\noptimizer: {lr: .nan}\n", "cannot send job file {path} as JSON: Out of range"),
        ("bytes.yaml", "name: x", None),  # replaced by invalid UTF-8 below
    ],
)
def test_unreadable_job_file_is_one_line_exit_2(cli: typer.Typer, closed_url: str, tmp_path: Path,
                                                name: str, text: str, error: str | None) -> None:
    path = tmp_path / name
    if error is None:
        path.write_bytes(b"name: \xff\xfe\n")
        error = "cannot read job file {path}: 'utf-8' codec can't decode"
    else:
        path.write_text(text)
    r = _submit(cli, path, closed_url)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + error.format(path=path)), r.stderr


def test_missing_job_file_and_directory(cli: typer.Typer, closed_url: str, tmp_path: Path) -> None:
    for path in (tmp_path / "none.yaml", tmp_path):
        r = _submit(cli, path, closed_url)
        assert (r.exit_code, r.stderr.strip()) == (2, f"error: job file not found: {path}")


def test_a_readable_file_goes_to_the_server(cli: typer.Typer, closed_url: str, tmp_path: Path) -> None:
    """What the client can read it sends, even a spec the server will refuse (the server decides)."""
    for name, text in (("ok.yaml", "name: tiny\nsteps: 0\ncolour: blue\n"),
                       ("ok.json", '{"name": "tiny", "data": {"kind": "text", "path": "corpus.txt"}}')):
        path = tmp_path / name
        path.write_text(text)
        r = _submit(cli, path, closed_url)
        refused = f"error: cannot reach the pipewave server at {closed_url}: connection refused"
        assert (r.exit_code, r.stderr.strip()) == (1, refused)


def test_client_reads_the_token_where_the_service_writes_it(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from pipewave.api.settings import Settings

    monkeypatch.delenv("PIPEWAVE_URL", raising=False)
    monkeypatch.delenv("PIPEWAVE_API_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for home in (None, tmp_path / "state"):
        if home is None:
            monkeypatch.delenv("PIPEWAVE_HOME", raising=False)
        else:
            monkeypatch.setenv("PIPEWAVE_HOME", str(home))
        settings = Settings()
        assert pipewave_home() == settings.home
        settings.token_file.parent.mkdir(parents=True, exist_ok=True)
        settings.token_file.write_text(f"token-of-{settings.home.name}\n")
        assert resolve_connection(None, None) == ("http://127.0.0.1:8000", f"token-of-{settings.home.name}")
    assert pipewave_home() == tmp_path / "state"
    monkeypatch.delenv("PIPEWAVE_HOME")
    assert pipewave_home() == tmp_path / "user" / ".pipewave"
