"""The import contracts (pyproject.toml, ``[tool.importlinter]``): the code keeps them, and they
catch a backward import; private Ray APIs are used only through service/cluster/ray_private.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_RAY = re.compile(r"\bray(\.\w+)*\._\w+|\bray\.experimental\b|internal_kv|\bray\.core\.generated\b")


def lint_imports() -> str:
    here = Path(sys.executable).parent / "lint-imports"
    found = str(here) if here.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed (import-linter, a dev dependency)")
    return found


def run_lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([lint_imports(), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_code_keeps_the_import_contracts() -> None:
    done = run_lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and " kept, 0 broken" in done.stdout


def _names(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _names(v)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def fake_project(tmp_path: Path) -> Path:
    """A tree ``fakewave.*`` with a package for every module the contracts name, under the same
    contracts with ``pipewave`` renamed; it imports nothing yet, so it keeps them all."""
    section = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]

    def renamed(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"^pipewave\.", "fakewave.", value)
        if isinstance(value, list):
            return [renamed(v) for v in value]
        return value

    config = {k: renamed(v) for k, v in section.items() if k != "contracts"}
    contracts = [{k: renamed(v) for k, v in c.items()} for c in section["contracts"]]
    lines = ["[tool.importlinter]"] + [f"{k} = {_toml(v)}" for k, v in config.items()]
    for c in contracts:
        lines += ["", "[[tool.importlinter.contracts]]"] + [f"{k} = {_toml(v)}" for k, v in c.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    named = {n for c in contracts for v in c.values() for n in _names(v)} | set(config["root_packages"])
    for name in sorted(n for n in named if n.startswith("fakewave.")):
        package = tmp_path.joinpath(*name.split("."))
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").touch()
    return tmp_path


def test_a_backward_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root)}
    kept = run_lint(root, env)
    assert kept.returncode == 0, kept.stdout + kept.stderr  # the fake tree alone keeps them
    (root / "fakewave" / "service" / "backward.py").write_text("from fakewave.api import thing\n")
    broken = run_lint(root, env)
    assert broken.returncode != 0, broken.stdout + broken.stderr
    assert "fakewave.service is not allowed to import fakewave.api" in broken.stdout, broken.stdout
    assert "fakewave.service.backward -> fakewave.api" in broken.stdout


def test_private_ray_apis_only_in_their_wrapper() -> None:
    wrapper = ROOT / "service" / "cluster" / "ray_private.py"
    uses = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
            for top in ("api", "service", "workers") for path in sorted((ROOT / top).rglob("*.py"))
            if path != wrapper
            for i, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE_RAY.search(line)]
    assert uses == [], "private Ray APIs outside service/cluster/ray_private.py:\n" + "\n".join(uses)
    assert PRIVATE_RAY.search(wrapper.read_text())  # the pattern does find them where they are
