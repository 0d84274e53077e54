"""The controller on the embedded cluster: a cancel from another thread during a run (as the
service delivers it) ends the job CANCELLED with the cancel's reason (issue 14 point 8)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray

from harness import ensure_local_ray
from pipewave.service.control.controller import ControllerOptions, JobController, JobState

pytestmark = pytest.mark.ray


@pytest.mark.timeout(180)
def test_a_cancel_during_a_run_keeps_its_reason(ray_cluster: None, make_spec, tmp_path: Path) -> None:
    ensure_local_ray()
    # one long run (no checkpoints, no run limit): the cancel lands while the stages train
    spec = make_spec(steps=2000, stages=2)
    seen: list[int] = []
    ctl = JobController(spec, tmp_path / "out", ControllerOptions(
        cpus_per_stage=1, threads_per_stage=1, resume=False, ready_timeout_s=60.0),
        on_progress=lambda step, loss: seen.append(step))
    driver = threading.Thread(target=ctl.run, name="job")
    driver.start()
    deadline = time.time() + 120
    while not seen or ctl.step_done != 0:  # the run is under way: stages report steps
        assert time.time() < deadline and driver.is_alive(), (ctl.state, ctl.reason)
        time.sleep(0.05)
    assert ctl.state is JobState.RUNNING
    ctl.cancel("cancelled by user")  # what api/manager.py does (from its request thread)
    driver.join(60)
    assert not driver.is_alive()
    assert ctl.state is JobState.CANCELLED and ctl.reason == "cancelled by user"
    assert ctl.step_done == 0, "the run was cut short, not finished"
    assert ctl.actors == [] and ctl.pg is None
    deadline = time.time() + 20  # the cluster got its CPUs back
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.2)
