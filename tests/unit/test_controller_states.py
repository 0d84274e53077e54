"""The job controller's state machine, stepped by hand without Ray: the transition table, the
handler per state, cancels (issue 14 point 8: a cancel during a run keeps its reason), the GPUs
a live move's new actors take (issue 14 point 8: the same as the job's), and the words a
checkpoint boundary shows. Ray's calls the controller makes are replaced by fakes here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray

from harness import new_spec
from pipewave.service.control import moves
from pipewave.service.control.controller import (
    TRANSITIONS,
    ControllerOptions,
    IllegalTransitionError,
    JobController,
    JobState,
)
from pipewave.service.control.job import stage_gpus
from pipewave.service.control.states import check_transition

NON_TERMINAL = {s for s in JobState if not s.is_terminal}


def walk(ctl: JobController, *states: JobState) -> None:
    """Move ``ctl`` through ``states`` by legal transitions (what its handlers would do)."""
    for s in states:
        ctl._transition(s, f"test: {s.value}")


# -- the table ---------------------------------------------------------------------------------
def test_table_covers_every_state_and_ends_only_in_terminal_states() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state, after in TRANSITIONS.items():
        if state.is_terminal:
            assert after == frozenset(), f"{state} is terminal: nothing may follow it"
        else:
            assert {JobState.FAILED, JobState.CANCELLED} <= after, state
            assert after, state


def test_every_state_is_reachable_and_every_path_can_succeed() -> None:
    seen, todo = {JobState.CREATED}, [JobState.CREATED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(JobState)
    for state in NON_TERMINAL:  # from every live state, SUCCEEDED can still be reached
        reach, todo = {state}, [state]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in reach:
                    reach.add(nxt)
                    todo.append(nxt)
        assert JobState.SUCCEEDED in reach, state


@pytest.mark.parametrize(("old", "new"), [
    (JobState.CREATED, JobState.RUNNING), (JobState.STARTING, JobState.CHECKPOINTING),
    (JobState.WAITING, JobState.REBALANCING), (JobState.REBALANCING, JobState.CHECKPOINTING),
    (JobState.RUNNING, JobState.STOPPING), (JobState.RUNNING, JobState.WAITING),
    (JobState.SUCCEEDED, JobState.FAILED), (JobState.CANCELLED, JobState.RUNNING),
])
def test_an_illegal_transition_raises(old: JobState, new: JobState) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{old.value} cannot move to {new.value}"):
        check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), [
    (JobState.RUNNING, JobState.RECOVERING), (JobState.RECOVERING, JobState.WAITING),
    (JobState.RECOVERING, JobState.RUNNING), (JobState.WAITING, JobState.RUNNING),
    (JobState.CHECKPOINTING, JobState.RUNNING), (JobState.REBALANCING, JobState.RUNNING),
])
def test_the_elastic_paths_are_legal(old: JobState, new: JobState) -> None:
    check_transition(old, new)


# -- the controller ----------------------------------------------------------------------------
@pytest.fixture
def ctl(tmp_path: Path) -> JobController:
    return JobController(new_spec(steps=20), tmp_path, ControllerOptions(poll_s=0.0))


class FakeActor:
    """A stage actor whose run never finishes (the fake ``ray.wait`` reports nothing done)."""

    def __init__(self) -> None:
        self.runs: list[Any] = []
        self.run = SimpleNamespace(remote=lambda r: self.runs.append(r) or object())


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The actors the controller stops (``ray.kill`` replaced)."""
    out: list[Any] = []
    monkeypatch.setattr(ray, "kill", out.append)
    return out


def test_one_handler_per_live_state(ctl: JobController) -> None:
    assert set(ctl.handlers) == NON_TERMINAL


def test_the_controller_refuses_an_illegal_transition(ctl: JobController) -> None:
    with pytest.raises(IllegalTransitionError):
        ctl._transition(JobState.RUNNING, "skipping STARTING")
    assert ctl.state is JobState.CREATED and not ctl.events


def test_a_handler_moving_illegally_fails_the_job(tmp_path: Path, killed: list[Any]) -> None:
    class Skipping(JobController):
        def _on_created(self) -> None:
            self._transition(JobState.RUNNING, "skipping STARTING")

    c = Skipping(new_spec(), tmp_path)
    assert c.step() is JobState.FAILED
    assert "CREATED cannot move to RUNNING" in c.reason


def test_stepping_by_hand_runs_the_current_states_handler(ctl: JobController,
                                                          killed: list[Any]) -> None:
    walk(ctl, JobState.STARTING, JobState.RUNNING, JobState.CHECKPOINTING, JobState.STOPPING)
    assert ctl.step() is JobState.SUCCEEDED and ctl.reason == "0 steps"
    assert ctl.step() is JobState.SUCCEEDED  # a terminal state stays
    states = [e.data["state"] for e in ctl.events if e.kind == "state"]
    assert states == ["STARTING", "RUNNING", "CHECKPOINTING", "STOPPING", "SUCCEEDED"]


def test_a_cancel_between_steps_keeps_its_reason(ctl: JobController, killed: list[Any]) -> None:
    ctl.cancel("cancelled by user")
    assert ctl.step() is JobState.CANCELLED and ctl.reason == "cancelled by user"
    assert not (ctl.output / "plan.json").exists()  # CREATED's handler did not run


def running(ctl: JobController) -> list[FakeActor]:
    walk(ctl, JobState.STARTING, JobState.RUNNING)
    actors = [FakeActor() for _ in range(ctl.spec.num_stages)]
    ctl.stages.actors = list(actors)
    return actors


def test_a_cancel_during_a_run_is_recorded_as_the_cancel(ctl: JobController, killed: list[Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The service cancels (another thread) while the run's stages work: the job ends CANCELLED
    "cancelled by user", not "interrupted (Ctrl-C)", and its stages are stopped."""
    actors = running(ctl)

    def wait(pending: list[Any], **_: Any) -> tuple[list[Any], list[Any]]:
        ctl.cancel("cancelled by user")  # arrives while the stages run
        return [], pending

    monkeypatch.setattr(ray, "wait", wait)
    assert ctl.step() is JobState.CANCELLED
    assert ctl.reason == "cancelled by user"
    assert ctl.events[-1].message == "CANCELLED: cancelled by user"
    assert all(len(a.runs) == 1 for a in actors), "the run had started"
    assert killed == actors and ctl.actors == []
    assert ctl.step_done == 0 and not ctl.metrics


def test_ctrl_c_during_a_run_is_recorded_as_an_interrupt(ctl: JobController, killed: list[Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    actors = running(ctl)

    def wait(pending: list[Any], **_: Any) -> tuple[list[Any], list[Any]]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "wait", wait)
    assert ctl.step() is JobState.CANCELLED and ctl.reason == "interrupted (Ctrl-C)"
    assert killed == actors


def test_a_checkpoint_boundary_does_not_read_like_a_resume(ctl: JobController,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    walk(ctl, JobState.STARTING, JobState.RUNNING, JobState.CHECKPOINTING)
    ctl.training.step_done = 10
    monkeypatch.setattr(ctl, "_save_checkpoint", lambda: None)
    assert ctl.step() is JobState.RUNNING
    assert ctl.reason == "running steps 11..20 (checkpoint at step 10 saved)"
    assert "resum" not in ctl.events[-1].message


# -- GPUs: one choice, kept by live moves --------------------------------------------------------
def test_stage_gpus() -> None:
    assert stage_gpus(0.5, 0.0, 3) == 0.5  # given: taken as given, GPUs or not
    assert stage_gpus(2.0, 8.0, 2) == 2.0
    assert stage_gpus(0.0, 2.0, 2) == 1.0  # a GPU for every stage: one each
    assert stage_gpus(0.0, 2.0, 3) == 0.0  # not for every stage: none
    assert stage_gpus(0.0, 0.0, 1) == 0.0


class FakeStageClass:
    """What ``ray.remote(...)(StageWorker)`` returns, recording each actor's options."""

    def __init__(self) -> None:
        self.options_seen: list[dict[str, Any]] = []

    def __call__(self, cls: Any) -> FakeStageClass:
        return self

    def options(self, **kw: Any) -> Any:
        self.options_seen.append(kw)
        return SimpleNamespace(remote=lambda *a: object())


@pytest.mark.parametrize(("gpus_per_stage", "cluster_gpus", "chosen"), [
    (0.5, 0.0, 0.5),  # declared per stage (a node may declare GPUs it does not have)
    (0.0, 2.0, 1.0),  # auto: one each on a cluster with a GPU per stage (2 stages, 2 GPUs)
])
def test_a_live_move_keeps_the_jobs_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         gpus_per_stage: float, cluster_gpus: float,
                                         chosen: float) -> None:
    """A 2-stage job grows to 3 stages: the stage the move starts on a new node (the path
    ``_decide_move`` takes) takes the GPUs the job's stages took when they started."""
    spec = new_spec(stages=2, microbatches=4, partition="auto",
                    elastic={"min_stages": 1, "max_stages": 4})
    ctl = JobController(spec, tmp_path, ControllerOptions(gpus_per_stage=gpus_per_stage))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": cluster_gpus})
    assert ctl._choose_gpus() == chosen  # what _start_actors asks for, per stage
    fake = FakeStageClass()
    monkeypatch.setattr(ray, "remote", lambda **_: fake)
    ctl.planning.job_plan = SimpleNamespace()  # type: ignore[assignment]
    ctl.planning.stage_nodes = ["node-a", "node-b"]
    ctl.elastic.change = frozenset({"node-a", "node-b", "node-c"})
    plan = SimpleNamespace(stages=3, microbatches=4,
                           plan=SimpleNamespace(worker_nodes=["node-a", "node-b", "node-c"],
                                                partition=((0, 1), (1, 3), (3, 4))))
    monkeypatch.setattr(moves, "cluster_nodes", lambda: [])
    monkeypatch.setattr(moves, "slots_of", lambda *a: [])
    monkeypatch.setattr(moves, "decide", lambda *a, **k: SimpleNamespace(
        action="move", plan=plan, reason="a node joined"))
    monkeypatch.setattr(moves, "NodeAffinitySchedulingStrategy", lambda node, soft: node)
    ctl._decide_move()
    assert set(ctl.stages.prestarted) == {2}  # only node-c is new
    assert [kw["num_gpus"] for kw in fake.options_seen] == [chosen]
    assert ctl.planning.move is not None and ctl.planning.move.reason == "a node joined"
