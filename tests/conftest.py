"""Shared fixtures. Ray tests share ONE embedded local cluster for the whole test session.

The environment below must be set before anything imports ray (test modules import the
controller, which imports ray, at collection time): Ray 2.60 turns token authentication on by
default for new local clusters, so we ask for it explicitly, and we keep Ray's nodes on loopback.
"""

from __future__ import annotations

import os
import tempfile

os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# pipewave's state (layer profiles) for this test session only, never the user's ~/.pipewave
os.environ["PIPEWAVE_HOME"] = tempfile.mkdtemp(prefix="pipewave-tests-")

import functools
import importlib.abc
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harness import ensure_local_ray, new_spec, run_spec


class _OldNames(importlib.abc.MetaPathFinder):
    """pipewave's code imports only as ``pipewave.*``: the folders ``api``, ``service``,
    ``workers`` and ``cli`` are on no import path when installed, and must not be found through
    the repository root in tests either (``python -m pytest`` puts the working directory first)."""

    NAMES = frozenset({"api", "service", "workers", "cli"})

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None):
        if fullname.split(".")[0] in self.NAMES:
            raise ImportError(f"{fullname!r}: pipewave's code imports as 'pipewave.{fullname}'")
        return None


sys.meta_path.insert(0, _OldNames())

# Tests mirror the code: tests/unit needs no Ray; tests/ray and tests/e2e are marked ``ray``
# here, by folder, so ``-m "not ray"`` is a Ray-free lane without a marker to forget.
RAY_FIXTURES = frozenset({"_ray_session", "ray_cluster", "ray_address", "server", "run_job", "shared_runs"})
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        lane = Path(str(item.path)).resolve().relative_to(HERE).parts[0]
        if lane in ("ray", "e2e"):
            item.add_marker(pytest.mark.ray)
        elif lane == "unit":
            used = RAY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if used:
                raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(used)}: "
                                        "move it to tests/ray or tests/e2e")


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    """Stop whatever Ray this process still holds at the end of the session."""
    yield
    from pipewave.service.cluster.runtime import disconnect

    disconnect()


@pytest.fixture
def ray_cluster(_ray_session: None) -> None:
    """The embedded local Ray cluster, started once and shared (lazily: only if a ray test runs;
    started again if a multi-node test replaced it with a ``ray.cluster_utils.Cluster``)."""
    ensure_local_ray()


@pytest.fixture
def make_spec():
    """``make_spec(**overrides)`` -> a tiny JobSpec (no Ray needed)."""
    return new_spec


@pytest.fixture
def run_job(ray_cluster):
    """``run_job(spec, output, resume=False)`` -> (controller, summary), on the shared cluster."""
    return run_spec


# ----------------------------------------------------------------------------- shared jobs

# Starting stage actors dominates a tiny job's time (about 1.5 s per actor on 2 cores), so the
# 2-stage jobs of the checkpoint tests are run once per session and also serve the engine tests.
# One optimizer per schedule, so each optimizer's state goes through a checkpoint once.
SHARED_OPTIMIZERS = {
    "gpipe": {"kind": "sgd", "lr": 0.5, "momentum": 0.9},
    "1f1b": {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1},
    "pipedream": {"kind": "adam", "lr": 1e-2},
    "2bw": {"kind": "adam", "lr": 1e-2},
}


class SharedRuns:
    """Three 2-stage jobs of one schedule (checkpoint every 5 steps), each run on first use:

    - first: 5 steps into ``split_dir`` (one run: also the engine tests' plain 5-step job);
    - resumed: a new controller, steps=10, resume=True on ``split_dir``: steps 6..10;
    - straight: 10 steps into ``straight_dir`` (two schedule runs).
    """

    def __init__(self, schedule: str, base: Path) -> None:
        kw = {"schedule": schedule, "stages": 2, "optimizer": SHARED_OPTIMIZERS[schedule],
              "checkpoint": {"every_steps": 5}}
        self.first_spec, self.straight_spec = new_spec(steps=5, **kw), new_spec(steps=10, **kw)
        self.split_dir, self.straight_dir = base / "split", base / "straight"

    @functools.cached_property
    def _first(self) -> tuple[Any, Any]:
        ctl, summary = run_spec(self.first_spec, self.split_dir)
        assert summary.state == "SUCCEEDED", summary.reason
        return ctl, summary

    @property
    def first(self) -> Any:
        return self._first[0]

    @property
    def first_summary(self) -> Any:
        return self._first[1]

    @functools.cached_property
    def resumed(self) -> Any:
        assert self.first is not None  # the first half must be in split_dir
        ctl, summary = run_spec(self.straight_spec, self.split_dir, resume=True)
        assert summary.state == "SUCCEEDED", summary.reason
        return ctl

    @functools.cached_property
    def straight(self) -> Any:
        ctl, summary = run_spec(self.straight_spec, self.straight_dir)
        assert summary.state == "SUCCEEDED", summary.reason
        return ctl


@pytest.fixture(scope="session")
def shared_runs(_ray_session, tmp_path_factory) -> Callable[[str], SharedRuns]:
    """``shared_runs(schedule)`` -> SharedRuns, cached for the session."""
    cache: dict[str, SharedRuns] = {}

    def get(schedule: str) -> SharedRuns:
        if schedule not in cache:
            cache[schedule] = SharedRuns(schedule, tmp_path_factory.mktemp(f"shared-{schedule}"))
        return cache[schedule]

    return get


# ----------------------------------------------------------------------------- the service

@pytest.fixture(scope="module")
def ray_address(_ray_session: None) -> str:
    """The session cluster's address, for a ``pipewave serve`` process to join."""
    import ray

    ensure_local_ray()
    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture(scope="module")
def server(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real ``pipewave serve`` (uvicorn on loopback) joined to the session cluster; its data
    root holds ``corpus.txt``."""
    from apiserver import Server

    home = tmp_path_factory.mktemp("service")
    (home / "data").mkdir()
    (home / "data" / "corpus.txt").write_text("hello pipewave " * 200)
    srv = Server(home, ray_address).start()
    yield srv
    srv.stop()


@pytest.fixture
def closed_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
