"""The engine on a real (embedded, local) Ray cluster against the single-process reference.

Every schedule must train exactly what its semantics say (see tests/reference.py): the final
weights equal the reference executor's up to float rounding, every backward uses its forward's
weight version, the version ids are the ones the semantics assign, and the stages never hold more
versions than the schedule's bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import reference as ref
from pipewave.service.control.checkpoint import load_model_state
from pipewave.workers.models import num_layers

pytestmark = pytest.mark.ray

# ----------------------------------------------------------------------------- helpers


def check_job(ctl, summary, spec, expected: ref.Result, updates: int) -> None:
    """Everything a finished job must agree on with the reference."""
    assert summary.state == "SUCCEEDED", summary.reason
    assert summary.steps == spec.steps
    S = spec.stages
    assert [tuple(b) for b in ctl.partition] == ref.stage_bounds(num_layers(spec.model), S)
    # the versions of the last run, per stage
    assert [r.stage for r in ctl.last_run] == list(range(S))
    for s, report in enumerate(ctl.last_run):
        got = ref.versions_by_microbatch(report)
        assert sorted(got.items()) == expected.runs[-1][s], f"stage {s}: version ids"
    # losses, as reported per step
    losses = [m.loss for m in ctl.metrics]
    assert losses == pytest.approx(expected.step_losses, rel=1e-4, abs=1e-5)
    # the final weights
    assert ctl.checkpoints, "a checkpoint is always written at the end"
    ref.assert_state_close(load_model_state(ctl.checkpoints[-1]), expected.state, spec, updates)


# ----------------------------------------------------------------------------- synchronous


def five_step_job(make_spec, run_job, shared_runs, tmp_path: Path, **kw):
    """A 5-step job; the 2-stage ones without vertical sync are the session's shared jobs
    (conftest.shared_runs: the first half of the checkpoint tests' split runs, which use
    sgd+momentum for gpipe, adamw+weight decay for 1f1b and adam for the async schedules)."""
    if kw["stages"] == 2 and not kw.get("vertical_sync"):
        r = shared_runs(kw["schedule"])
        assert r.first_spec.steps == 5 and r.first_spec.model == make_spec().model
        return r.first_spec, r.first, r.first_summary
    spec = make_spec(**kw)
    return (spec, *run_job(spec, tmp_path))


@pytest.mark.parametrize(
    ("schedule", "stages"), [("gpipe", 2), ("gpipe", 4), ("1f1b", 2), ("1f1b", 4)]
)
def test_sync_schedules_equal_unpipelined_training(schedule, stages, make_spec, run_job,
                                                   shared_runs, tmp_path: Path):
    """2 stages: sgd with momentum (gpipe), adamw with weight decay (1f1b); 4: adam lr 1e-2."""
    spec, ctl, summary = five_step_job(make_spec, run_job, shared_runs, tmp_path,
                                       schedule=schedule, stages=stages)
    expected = ref.train_sync(spec)
    check_job(ctl, summary, spec, expected, updates=spec.steps)
    assert summary.peak_versions == [1] * stages


# ----------------------------------------------------------------------------- asynchronous


def semantic_versions(spec, stage: int) -> dict[int, int]:
    """The version id each microbatch of a single-run job uses on ``stage``, from the spec alone."""
    S, M, N = spec.stages, spec.microbatches, spec.steps * spec.microbatches
    if spec.schedule == "2bw":
        return {m: m // M - 1 for m in range(N)}
    warm = S if spec.vertical_sync else min(S - stage, N)
    return {m: max(0, m - warm + 1) for m in range(N)}


@pytest.mark.parametrize(
    ("schedule", "vertical_sync", "stages"),
    [
        ("pipedream", False, 2),
        ("pipedream", False, 4),
        ("pipedream", True, 2),
        ("pipedream", True, 3),
        ("2bw", False, 2),
        ("2bw", False, 3),
    ],
)
def test_async_schedules_match_reference(schedule, vertical_sync, stages, make_spec, run_job,
                                         shared_runs, tmp_path: Path):
    spec, ctl, summary = five_step_job(make_spec, run_job, shared_runs, tmp_path,
                                       schedule=schedule, vertical_sync=vertical_sync,
                                       stages=stages)
    expected = ref.train(spec)
    M = spec.microbatches
    updates = spec.steps * (M if schedule == "pipedream" else 1)
    check_job(ctl, summary, spec, expected, updates)

    # the version ids, straight from the semantics (one run: ids count from training start)
    used = [ref.versions_by_microbatch(r) for r in ctl.last_run]
    for s in range(stages):
        assert used[s] == semantic_versions(spec, s), f"stage {s}"
    if vertical_sync:
        assert all(u == used[0] for u in used), "vertical sync: every stage uses stage 0's id"
    # version bounds
    peaks = summary.peak_versions
    if schedule == "2bw":
        assert all(p <= 2 for p in peaks), peaks
    elif not vertical_sync:
        assert all(peaks[s] <= stages - s for s in range(stages)), peaks
    assert peaks == expected.peak_versions


# ----------------------------------------------------------------------------- failures


def _text_spec(make_spec, path: Path, **kw):
    from pipewave.service.spec import parse_spec

    spec = make_spec(**kw)
    data = spec.model_dump(mode="json")
    data["data"] = {"kind": "text", "path": str(path)}
    return parse_spec(data)  # validated while the file is whole


@pytest.mark.timeout(120)
def test_stage_failing_mid_run_fails_the_job(make_spec, run_job, tmp_path: Path):
    """The text file shrinks after validation: stage 0 raises at its first batch while stage 1
    waits for an activation that never comes. The job must end FAILED, at once, with the cause."""
    import time

    import ray

    data = tmp_path / "corpus.txt"
    data.write_bytes(b"hello pipewave " * 20)
    spec = _text_spec(make_spec, data, stages=2)
    data.write_bytes(b"tiny")
    t0 = time.time()
    ctl, summary = run_job(spec, tmp_path / "out")
    assert summary.state == "FAILED"
    assert "corpus has 4 bytes" in summary.reason and "\n" not in summary.reason, summary.reason
    assert time.time() - t0 < 60, "no hang"
    assert ctl.actors == [] and ctl.pg is None, "the stages are stopped"
    assert not ctl.checkpoints
    # the cluster got its CPUs back for the next job
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_stage_failing_at_start_fails_the_job(make_spec, run_job, tmp_path: Path):
    """The text file disappears after validation: the first and last stages cannot load it."""
    data = tmp_path / "corpus.txt"
    data.write_bytes(b"hello pipewave " * 20)
    spec = _text_spec(make_spec, data, stages=2)
    data.unlink()
    ctl, summary = run_job(spec, tmp_path / "out")
    assert summary.state == "FAILED"
    reason = summary.reason
    assert "text corpus not found" in reason, reason
    assert "\n" not in reason and "\x1b" not in reason, reason
    assert ctl.actors == [] and ctl.pg is None
