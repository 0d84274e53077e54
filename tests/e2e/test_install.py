"""pipewave installed (not editable) into fresh venvs outside the repository, as a user gets it.

- The client install (``pipewave[client]``): no torch, no Ray, no FastAPI; its ``pipewave``
  submits, lists, shows, follows, cancels and reads the logs of jobs on a real service.
- The full install, from a wheel: only the ``pipewave.*`` names import (no top-level ``api``,
  ``service``, ``workers``), and a job trains on an embedded Ray cluster started from it, so the
  stage actors import their code under those names. Its dependencies come from the repository's
  venv through a plain path line in a .pth file (that directory's own .pth files, the editable
  install's import hook among them, are not processed), to not download torch and Ray again.

The client install downloads its few dependencies from the package index (pip's cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiserver import TOKEN, Server, tiny_job

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "api", "service", "workers")  # the folders that install as pipewave.*
PIP_TIMEOUT_S = 600
SERVER_ONLY = ("torch", "ray", "numpy", "pydantic_settings", "fastapi", "uvicorn", "sqlalchemy")

pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def checked(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"{r.args} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a source distribution holds, copied out of the checkout (no build output, no .venv)."""
    src = tmp_path_factory.mktemp("source") / "pipewave"
    src.mkdir()
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    return src


def new_venv(path: Path, with_pip: bool) -> Path:
    checked(run(sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), path,
                cwd=path.parent, timeout=120))
    return path / "bin"


def cannot_import(python: Path, name: str, cwd: Path) -> bool:
    r = run(python, "-c", f"import {name}", cwd=cwd)
    return r.returncode == 1 and f"ModuleNotFoundError: No module named '{name}'" in r.stderr


# ------------------------------------------------------------------------- the full install


def test_wheel_imports_only_as_pipewave_and_trains_on_ray(source: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    checked(run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, source,
                cwd=tmp_path, timeout=PIP_TIMEOUT_S))
    (wheel,) = wheels.glob("pipewave-*.whl")
    bin_ = new_venv(tmp_path / "venv", with_pip=False)
    python = bin_ / "python"
    checked(run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel,
                cwd=tmp_path, timeout=PIP_TIMEOUT_S))
    site = Path(checked(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                            cwd=tmp_path)).stdout.strip())
    assert site.is_relative_to(tmp_path / "venv")
    (site / "pipewave-server-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    work.mkdir()
    for name in PACKAGES:  # the folders' own names are no packages
        assert cannot_import(python, name, work), name
    probe = checked(run(python, "-c", (
        "import json, sys, pipewave, pipewave.service, pipewave.workers.stage, pipewave.api.app, torch, ray\n"
        "print(json.dumps([list(pipewave.__path__), pipewave.workers.stage.__file__, "
        "[m for m in sys.modules if 'editable' in m]]))"), cwd=work))
    paths, stage_file, editable = json.loads(probe.stdout)
    assert paths == [str(site / "pipewave")] and Path(stage_file).is_relative_to(site), probe.stdout
    assert editable == [], "the repository's editable install leaked into the venv"

    job = {"name": "installed", "model": {"kind": "mlp", "d_model": 32, "n_layers": 2, "seq_len": 16},
           "data": {"kind": "synthetic"}, "schedule": "1f1b", "stages": 2, "microbatches": 2,
           "batch_size": 8, "steps": 3, "optimizer": {"kind": "adam", "lr": 0.003}}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    env = {**os.environ, "PIPEWAVE_HOME": str(tmp_path / "home")}
    r = run(bin_ / "pipewave", "train", "job.yaml", "--json", "--output", tmp_path / "run", cwd=work,
            env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads(r.stdout)
    assert summary["state"] == "SUCCEEDED" and summary["steps"] == 3, summary["reason"]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3]


# ------------------------------------------------------------------------- the client install


@pytest.fixture(scope="module")
def client_bin(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pipewave[client]`` installed by its own pip (not editable)."""
    bin_ = new_venv(tmp_path_factory.mktemp("client") / "venv", with_pip=True)
    checked(run(bin_ / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt",
                f"{source}[client]", cwd=source.parent, timeout=PIP_TIMEOUT_S))
    return bin_


def test_client_install_has_no_server_packages(client_bin: Path, tmp_path: Path) -> None:
    for name in (*SERVER_ONLY, *PACKAGES):
        assert cannot_import(client_bin / "python", name, tmp_path), name
    checked(run(client_bin / "python", "-c", "import pipewave.cli.client, pipewave.cli.main", cwd=tmp_path))
    assert "submit" in checked(run(client_bin / "pipewave", "--help", cwd=tmp_path)).stdout
    sched = checked(run(client_bin / "pipewave", "schedule", "1f1b", "--stages", "2", cwd=tmp_path))
    assert "stage 1 |" in sched.stdout
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(tiny_job()))
    for args in (("train", "job.yaml"), ("serve",), ("plan", "job.yaml"), ("drain", "abc")):
        r = run(client_bin / "pipewave", *args, cwd=tmp_path)
        line = one_line(r)
        head = f"error: pipewave {args[0]} needs the server install (no module named '"
        assert r.returncode == 2 and line.startswith(head), r.stderr
        missing, _, rest = line.removeprefix(head).partition("'")
        assert missing in SERVER_ONLY and rest == "): pip install 'pipewave[server]'", line


def test_client_install_drives_a_service(client_bin: Path, server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "PIPEWAVE_URL": server.url, "PIPEWAVE_API_TOKEN": TOKEN, "COLUMNS": "200",
           "PIPEWAVE_HOME": str(tmp_path / "home")}

    def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(client_bin / "pipewave", *args, cwd=tmp_path, env=env, timeout=timeout)

    def as_json(r: subprocess.CompletedProcess[str]) -> Any:
        return json.loads(checked(r).stdout)

    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(tiny_job(name="light", steps=6)))
    done = as_json(cli("submit", str(short), "--follow", "--json"))
    assert done["state"] == "SUCCEEDED" and done["step"] == 6
    listed = as_json(cli("jobs", "--json", "--state", "succeeded"))
    assert done["id"] in [j["id"] for j in listed["items"]]
    table = checked(cli("jobs"))
    assert done["id"] in table.stdout and "SUCCEEDED" in table.stdout
    assert "SUCCEEDED" in checked(cli("status", done["id"])).stdout
    assert as_json(cli("status", done["id"], "--json"))["step"] == 6
    assert "SUCCEEDED" in checked(cli("logs", done["id"])).stdout

    long = tmp_path / "long.yaml"
    long.write_text(json.dumps(tiny_job(name="light-long", steps=1_000_000)))
    long_id = checked(cli("submit", str(long))).stdout.strip()
    server.wait_state(long_id, {"RUNNING"})
    assert as_json(cli("cancel", long_id, "--json"))["cancel_requested"]
    server.wait_state(long_id, {"CANCELLED"})
    assert "CANCELLED" in checked(cli("logs", long_id, "--follow")).stdout  # ended: prints, returns
    assert "CANCELLED" in checked(cli("cancel", long_id)).stdout

    bad = tmp_path / "bad.yaml"  # read here, refused by the server (422): one line, exit 2
    bad.write_text(yaml.safe_dump(tiny_job(colour="blue", steps=0)))
    r = cli("submit", str(bad))
    assert r.returncode == 2 and one_line(r).startswith("error: invalid job spec: "), r.stderr
    assert "colour: unknown field" in r.stderr and "steps" in r.stderr
    r = cli("status", "j-000000000000")
    assert r.returncode == 1 and one_line(r) == "error: no such job: j-000000000000"
