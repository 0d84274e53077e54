"""The command line without the server packages, as the client install has it (no torch, Ray,
FastAPI...): a subprocess whose imports of them fail, run as a user runs ``pipewave``."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

# the top-level modules of pyproject's `server` extra
SERVER_MODULES = ("torch", "ray", "numpy", "pydantic_settings", "fastapi", "uvicorn",
                  "sqlalchemy", "psycopg", "sse_starlette", "prometheus_client", "transformers",
                  "tokenizers", "safetensors", "pyarrow")
LAYERS_BELOW = ("pipewave.api", "pipewave.service", "pipewave.workers")
SERVER_HINT = "needs the server install"
INSTALL = "pip install 'pipewave[server]'"

# sys.argv[1]: the comma-separated names whose import fails; the rest: pipewave's arguments
RUN = """
import importlib.abc, sys

BLOCKED = tuple(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv = ["pipewave", *sys.argv[2:]]
from pipewave.cli.main import main
main()
"""


def pipewave(blocked: tuple[str, ...], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN, ",".join(blocked), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [["train", "job.yaml"], ["train", "missing.yaml", "--json"], ["plan", "job.yaml"],
     ["drain", "0123abcd"], ["serve", "--port", "8123"],
     ["prepare", "a.txt", "-t", "bytes", "-o", "out"], ["export", "runs/x", "--output", "out"]],
)
def test_cluster_side_commands_name_the_server_install(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "job.yaml").write_text("name: x\nmodel: {kind: mlp}\n")
    r = pipewave(SERVER_MODULES, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert line.startswith(f"error: pipewave {args[0]} {SERVER_HINT}") and line.endswith(INSTALL), line
    assert r.stdout == ""


def test_schedule_needs_no_server_package(tmp_path: Path) -> None:
    r = pipewave(SERVER_MODULES, "schedule", "1f1b", "--stages", "2", "--microbatches", "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stage 0 | 0F0  0F1  .    0B0  0F2  0B1  0F3  0B2  .    0B3+" in r.stdout


def test_help_and_client_commands_import_no_lower_layer(tmp_path: Path) -> None:
    """--help and the client's commands work with the server packages AND pipewave's api, service
    and workers unimportable: the client imports none of them."""
    blocked = SERVER_MODULES + LAYERS_BELOW
    top = pipewave(blocked, "--help", cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    for command in ("train", "serve", "submit", "jobs", "status", "cancel", "logs"):
        assert command in top.stdout
    assert pipewave(blocked, "submit", "--help", cwd=tmp_path).returncode == 0

    url = closed_url()
    for args in (["jobs"], ["logs", "j-1"]):  # the other commands connect as these do
        r = pipewave(blocked, *args, "--url", url, "--token", "t", cwd=tmp_path)
        assert r.returncode == 1, r.stderr
        assert one_error_line(r) == f"error: cannot reach the pipewave server at {url}: connection refused"

    job = tmp_path / "job.yaml"
    job.write_text("name: tiny\nsteps: 3\n")
    r = pipewave(blocked, "submit", str(job), "--url", url, "--token", "t", cwd=tmp_path)
    assert r.returncode == 1 and "cannot reach the pipewave server" in one_error_line(r)
    job.write_text("name: [unclosed\n")
    r = pipewave(blocked, "submit", str(job), "--url", url, cwd=tmp_path)
    assert r.returncode == 2 and one_error_line(r).startswith(f"error: cannot read job file {job}: ")


def test_a_missing_module_of_no_server_package_is_not_hidden(tmp_path: Path) -> None:
    """Only the server extra's packages get the install hint; pipewave's own code missing is a bug
    and shows as one (its traceback)."""
    r = pipewave(("pipewave.service",), "schedule", "1f1b", cwd=tmp_path)
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr and SERVER_HINT not in r.stderr
