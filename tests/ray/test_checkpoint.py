"""Checkpoints: stop and resume is bitwise the same training as going straight through.

For each schedule, three 2-stage jobs on the shared Ray cluster (``shared_runs`` in conftest,
run once per session): straight, 10 steps with a checkpoint every 5 (two schedule runs); split,
5 steps (checkpoint every 5) into another directory, then a NEW controller with steps=10 and
resume=True on that directory runs the last 5.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import reference as ref
from pipewave.service.control.checkpoint import load_model_state, read_manifest
from pipewave.service.spec import JobSpec
from pipewave.workers.models import build_model

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
SCHEDULES = ["gpipe", "1f1b", "pipedream", "2bw"]


def assert_bitwise(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values: same structure, torch.equal tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |diff| {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            assert_bitwise(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def stage_payloads(directory: str | Path) -> list[dict[str, Any]]:
    d = Path(directory)
    return [torch.load(d / e["file"], weights_only=True)
            for e in read_manifest(d)["stages"]]



@pytest.mark.parametrize("schedule", SCHEDULES)
def test_resume_is_bitwise_equal_to_straight_run(schedule, shared_runs):
    r = shared_runs(schedule)
    assert [Path(c).name for c in r.straight.checkpoints] == ["step-000005", "step-000010"]
    assert [Path(c).name for c in r.first.checkpoints] == ["step-000005"]
    assert [Path(c).name for c in r.resumed.checkpoints] == ["step-000010"]
    assert r.resumed.first_step == 5 and r.resumed.step_done == 10
    assert [m.step for m in r.resumed.metrics] == [6, 7, 8, 9, 10]
    # the step-5 checkpoints, then the final ones: weights, optimizer state, older versions
    for a, b in ((r.straight.checkpoints[0], r.first.checkpoints[0]),
                 (r.straight.checkpoints[1], r.resumed.checkpoints[0])):
        pa, pb = stage_payloads(a), stage_payloads(b)
        for s, (x, y) in enumerate(zip(pa, pb, strict=True)):
            assert_bitwise(x, y, f"{Path(a).name}/stage-{s}")
        opt = pa[0]["optimizer"]
        assert opt["kind"] == r.straight_spec.optimizer.kind
        if opt["kind"] == "sgd":
            assert opt["momentum_buffer"], "the momentum buffers are checkpointed"
        else:
            assert opt["exp_avg"] and opt["exp_avg_sq"] and opt["step"]
    # the resumed steps computed exactly the same losses and used the same versions
    assert [m.loss for m in r.resumed.metrics] == [m.loss for m in r.straight.metrics[5:]]
    assert [x.versions_used for x in r.resumed.last_run] == \
        [x.versions_used for x in r.straight.last_run]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_straight_run_across_a_checkpoint_matches_reference(schedule, shared_runs):
    """Runs end at checkpoints (the async schedules drain and warm up again): the reference
    executors model that, so 10 steps in two runs must still equal them."""
    r = shared_runs(schedule)
    spec = r.straight_spec
    expected = ref.train(spec)
    assert len(expected.runs) == 2
    for ctl in (r.straight, r.resumed):
        for s, report in enumerate(ctl.last_run):
            got = sorted(ref.versions_by_microbatch(report).items())
            assert got == expected.runs[-1][s], f"stage {s}: version ids of the second run"
    losses = [m.loss for m in r.straight.metrics]
    assert losses == pytest.approx(expected.step_losses, rel=1e-4, abs=1e-5)
    updates = spec.steps * (spec.microbatches if schedule == "pipedream" else 1)
    ref.assert_state_close(load_model_state(r.straight.checkpoints[-1]), expected.state, spec,
                           updates)


def test_checkpoint_loads_with_plain_torch(shared_runs, tmp_path: Path):
    """A fresh interpreter, torch only (no Ray, no pipewave runtime): the manifest and the stage
    files load into build_model(cfg, seed) with strict=True."""
    r = shared_runs("1f1b")
    ckpt = Path(r.straight.checkpoints[-1])
    script = textwrap.dedent(f"""
        import json, sys, torch
        from types import SimpleNamespace
        from pipewave.workers.models import build_model
        d, out = {str(ckpt)!r}, {str(tmp_path / "plain.pt")!r}
        manifest = json.load(open(d + "/manifest.json"))
        sd = {{}}
        for s in manifest["stages"]:
            sd.update(torch.load(d + "/" + s["file"], weights_only=True)["model"])
        cfg = SimpleNamespace(**manifest["spec"]["model"])
        model = build_model(cfg, manifest["spec"]["seed"])
        model.load_state_dict(sd, strict=True)
        assert "ray" not in sys.modules, "loading a checkpoint must not need Ray"
        torch.save(model.state_dict(), out)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plain = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert_bitwise(plain, load_model_state(ckpt))
    # and in this process, against the spec the job ran
    spec = r.straight_spec
    model = build_model(spec.model, spec.seed)
    model.load_state_dict(load_model_state(ckpt), strict=True)
    assert json.loads((ckpt / "manifest.json").read_text())["step"] == 10


def test_resume_with_a_different_model_fails_clearly(shared_runs, run_job, tmp_path: Path):
    r = shared_runs("1f1b")
    assert r.resumed.step_done == 10  # split_dir holds the checkpoints of steps 5 and 10
    out = tmp_path / "out"
    shutil.copytree(r.split_dir, out)
    data = r.straight_spec.model_dump(mode="json")
    data["model"]["d_model"] = 48
    data["steps"] = 15
    spec = JobSpec.model_validate(data)
    ctl, summary = run_job(spec, out, resume=True)
    assert summary.state == "FAILED"
    assert "fields differ: model" in summary.reason, summary.reason
    assert "\n" not in summary.reason
    assert not ctl.checkpoints and ctl.actors == []
    # the directory's checkpoints are untouched
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000005",
                                                                        "step-000010"]


@pytest.mark.parametrize("schedule", ["1f1b", "2bw"])
def test_resume_into_another_partition(schedule, shared_runs, run_job, tmp_path: Path):
    """A checkpoint of 2 stages resumes into 3: each stage gathers its layers (weights, 2BW's
    previous version, optimizer state) from whichever files hold them. Both schedules' updates
    do not depend on where the cuts are (2BW: every stage uses version t-1), so the result is
    the straight 2-stage run's."""
    r = shared_runs(schedule)
    out = tmp_path / "out"
    shutil.copytree(r.first.checkpoints[-1], out / "checkpoints" / "step-000005")
    spec = r.straight_spec.model_copy(update={"stages": 3})
    ctl, summary = run_job(spec, out, resume=True)
    assert summary.state == "SUCCEEDED", summary.reason
    assert ctl.partition == ((0, 2), (2, 4), (4, 6)) and summary.first_step == 5
    assert any("re-partitioned from [[0, 3], [3, 6]]" in e.message for e in ctl.events)
    a, b = load_model_state(ctl.checkpoints[-1]), load_model_state(r.straight.checkpoints[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
