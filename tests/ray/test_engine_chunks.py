"""Schedules with several model chunks per stage worker (interleaved-1f1b, hanayo) on a real
local Ray cluster, against the unpipelined single-process reference (tests/reference.py): they
are synchronous, so after 5 steps the weights must equal plain full-batch training."""

from __future__ import annotations

from pathlib import Path

import pytest

import reference as ref
from pipewave.service.control.checkpoint import load_model_state, read_manifest
from pipewave.service.control.job import STAGES_READY
from pipewave.service.planning.partition import uniform
from pipewave.service.schedules import make_schedule, simulate
from pipewave.workers.models import num_layers

pytestmark = pytest.mark.ray

GPT8 = {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 3, "n_heads": 2, "seq_len": 16}


@pytest.mark.parametrize(
    ("schedule", "extra"),
    [("hanayo", {}), ("hanayo", {"waves": 2, "model": GPT8}), ("interleaved-1f1b", {"chunks": 2})],
    ids=["hanayo-W1", "hanayo-W2", "interleaved-V2"],
)
def test_chunked_schedules_equal_unpipelined_training(schedule, extra, make_spec, run_job,
                                                      tmp_path: Path) -> None:
    spec = make_spec(schedule=schedule, stages=2, microbatches=4, batch_size=8, steps=5, **extra)
    ctl, summary = run_job(spec, tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    P, V, M = 2, spec.chunks_per_stage, spec.microbatches
    placement = spec.placement()
    # the layers cut into P x V equal chunks, each worker holding the ones its placement names
    assert tuple(tuple(b) for b in ctl.partition) == uniform(num_layers(spec.model), P * V)
    (ready,) = [e for e in ctl.events if e.topic == STAGES_READY]
    held = [[tuple(c) for c in st["chunks"]] for st in ready.data["stages"]]
    assert held == [[ctl.partition[v] for v in placement.workers[w]] for w in range(P)]
    # every action of every chunk ran; each microbatch's F and B on every chunk used version t
    sched = make_schedule(spec.schedule, P, M, spec.steps, **spec.schedule_args)
    sim = simulate(sched)
    for s, report in enumerate(ctl.last_run):
        assert [a for a, _, _ in report.spans] == sched.stage_actions(s)
        assert {a.chunk for a, _, _ in report.spans} == set(range(V))
        got = ref.versions_by_microbatch(report, chunks=V)
        assert got == {m: m // M for m in range(spec.steps * M)}, f"stage {s}: version ids"
        assert report.peak_activations == sim.peak_activations[s]
        assert report.peak_versions == 1
    # the losses (on the worker of the last chunk: worker 0 for hanayo) and the final weights
    expected = ref.train_sync(spec)
    assert [m.loss for m in ctl.metrics] == pytest.approx(expected.step_losses, rel=1e-4, abs=1e-5)
    ref.assert_state_close(load_model_state(ctl.checkpoints[-1]), expected.state, spec, spec.steps)
    # the checkpoint names each stage's chunks
    manifest = read_manifest(Path(ctl.checkpoints[-1]))
    assert [[tuple(c) for c in e["chunks"]] for e in manifest["stages"]] == held


def test_chunked_checkpoint_resumes_on_another_layout(make_spec, run_job, tmp_path: Path) -> None:
    """A hanayo checkpoint of 2 workers (chunks 0+3 / 1+2 of 6 layers) resumed on 3 workers
    (chunks 0+5 / 1+4 / 2+3): every stage takes its layers from whichever files hold them; 5 + 5
    steps equal 10 unpipelined ones."""
    common = {"schedule": "hanayo", "microbatches": 4, "batch_size": 8, "checkpoint": {"every_steps": 5}}
    _, summary = run_job(make_spec(stages=2, steps=5, **common), tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    second = make_spec(stages=3, steps=10, **common)
    ctl2, summary2 = run_job(second, tmp_path, resume=True)
    assert summary2.state == "SUCCEEDED", summary2.reason
    assert ctl2.first_step == 5 and [m.step for m in ctl2.metrics] == list(range(6, 11))
    assert any("re-partitioned" in e.message for e in ctl2.events)
    expected = ref.train_sync(second)
    ref.assert_state_close(load_model_state(ctl2.checkpoints[-1]), expected.state, second, 10)


def test_schedule_auto_plans_and_trains_a_synchronous_schedule(make_spec, run_job,
                                                               tmp_path: Path) -> None:
    """schedule "auto" with a planned partition: the planner picks a synchronous schedule (and
    its chunks or waves) from the profiled layers; the job runs it and, whichever it is, ends
    with the weights of unpipelined training."""
    spec = make_spec(schedule="auto", partition="auto", stages=2, microbatches=4, steps=5)
    ctl, summary = run_job(spec, tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    (plan,) = [e.data["plan"] for e in ctl.events if e.kind == "plan"]
    assert ctl.spec.schedule == plan["schedule"] == summary.schedule
    assert ctl.spec.schedule in ("1f1b", "gpipe", "interleaved-1f1b", "hanayo")
    assert ctl.spec.is_resolved and len(ctl.partition) == 2 * ctl.spec.chunks_per_stage
    assert "the best other schedule" in plan["reason"]
    expected = ref.train_sync(ctl.spec)
    ref.assert_state_close(load_model_state(ctl.checkpoints[-1]), expected.state, ctl.spec, 5)


def test_matching_in_send_order_trains_the_same(make_spec, ray_cluster, tmp_path: Path) -> None:
    """The mailbox's NCCL mode (receives matched in each sender's order, tags unused), run here
    over gloo: hanayo, whose stages take a peer's messages out of their send order, trains
    exactly as with tag matching."""
    from pipewave.service.control.controller import ControllerOptions, JobController

    spec = make_spec(schedule="hanayo", stages=2, microbatches=4, batch_size=8, steps=5)
    ctl = JobController(spec, tmp_path, ControllerOptions(
        cpus_per_stage=1, threads_per_stage=1, resume=False, ready_timeout_s=60.0,
        match_in_send_order=True))
    summary = ctl.run()
    assert summary.state == "SUCCEEDED", summary.reason
    assert [r.matching for r in ctl.last_run] == ["send order"] * 2
    expected = ref.train_sync(spec)
    ref.assert_state_close(load_model_state(ctl.checkpoints[-1]), expected.state, spec, 5)
