"""The test lanes and the test session itself: ``-m "not ray"`` collects only tests/unit and
``-m ray`` only tests/ray and tests/e2e (markers set by folder in tests/conftest.py); the old
top-level names are refused; conftest is imported once and keeps its PIPEWAVE_HOME."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# this module is imported while the session collects, after tests/conftest.py set it
HOME_AT_COLLECTION = os.environ.get("PIPEWAVE_HOME")


def _lane(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return [line.strip() for line in out.splitlines() if line.startswith("tests/") and "::" in line]


@pytest.fixture(scope="module")
def lanes() -> Iterator[dict[str, list[str]]]:
    """The test ids each marker expression collects (both collections run at once)."""
    procs = {
        expr: subprocess.Popen(
            [sys.executable, "-m", "pytest", "tests", "--collect-only", "-q", "-p", "no:cacheprovider",
             "-m", expr],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for expr in ("not ray", "ray")
    }
    try:
        yield {expr: _lane(proc) for expr, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _folders(ids: list[str]) -> set[str]:
    return {"/".join(i.split("::")[0].split("/")[:2]) for i in ids}


def test_not_ray_is_the_unit_lane(lanes: dict[str, list[str]]) -> None:
    ids = lanes["not ray"]
    assert _folders(ids) == {"tests/unit"}
    assert f"tests/unit/{Path(__file__).name}::test_not_ray_is_the_unit_lane" in ids
    assert any(i.startswith("tests/unit/test_partition.py::") for i in ids)


def test_ray_is_the_ray_and_e2e_lanes(lanes: dict[str, list[str]]) -> None:
    ids = lanes["ray"]
    assert _folders(ids) == {"tests/ray", "tests/e2e"}
    assert not set(ids) & set(lanes["not ray"])
    # every test file of the two folders has its tests in the lane
    for folder in ("ray", "e2e"):
        files = {f"tests/{folder}/{p.name}" for p in (ROOT / "tests" / folder).glob("test_*.py")}
        assert files and files <= {i.split("::")[0] for i in ids}


@pytest.mark.parametrize("name", ["service", "api", "workers", "cli"])
def test_old_top_level_names_are_refused(name: str) -> None:
    assert name not in sys.modules
    with pytest.raises(ImportError, match=f"^'{name}': pipewave's code imports as 'pipewave.{name}'$"):
        importlib.import_module(name)
    with pytest.raises(ImportError, match=f"^'{name}': "):
        importlib.import_module(f"{name}.anything")
    assert importlib.import_module(f"pipewave.{name}").__name__ == f"pipewave.{name}"


def test_conftest_is_imported_once_and_keeps_pipewave_home() -> None:
    conftest = sys.modules["conftest"]
    assert Path(str(conftest.__file__)).resolve() == ROOT / "tests" / "conftest.py"
    twice = [name for name, mod in list(sys.modules.items())
             if name != "conftest" and Path(str(getattr(mod, "__file__", ""))).name == "conftest.py"
             and Path(str(mod.__file__)).resolve() == ROOT / "tests" / "conftest.py"]
    assert twice == [] and "tests.conftest" not in sys.modules
    home = os.environ["PIPEWAVE_HOME"]
    assert home == HOME_AT_COLLECTION
    assert Path(home).is_dir() and Path(home).parent == Path(tempfile.gettempdir())
    assert Path(home).name.startswith("pipewave-tests-")


def test_test_file_names_are_unique_across_lanes() -> None:
    """pytest imports each test file by its base name (rootdir-relative folders have no
    __init__.py), so two lanes' test_x.py would collide at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
