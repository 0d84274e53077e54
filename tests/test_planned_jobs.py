"""Jobs with ``partition: auto``: profiled, planned by the exact partitioner, placed as planned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.checkpoint import load_model_state
from service.controller import ControllerOptions, JobController
from service.partition import uniform

pytestmark = pytest.mark.ray

# The head (64 x 16384 logits per row) costs ~20 blocks: a cut the profile's noise cannot flip
# (10 layers: embed, 4 x (attention, MLP), head)
HEAVY_HEAD = {"kind": "gpt", "vocab_size": 16384, "d_model": 64, "n_layers": 4, "n_heads": 2,
              "seq_len": 32}


def run(spec, out: Path, profiles: Path, **opts):
    ctl = JobController(spec, out, ControllerOptions(threads_per_stage=1, resume=False,
                                                     profile_dir=profiles, **opts))
    return ctl, ctl.run()


def test_planned_partition_balances_and_trains_like_uniform(ray_cluster, make_spec, tmp_path: Path) -> None:
    spec = make_spec(model=HEAVY_HEAD, stages=3, partition="auto", steps=4)
    ctl, summary = run(spec, tmp_path / "auto", tmp_path / "profiles")
    assert summary.state == "SUCCEEDED", summary.reason
    # the large-vocabulary head is heavy: the planner gives it a stage of its own
    assert ctl.partition != uniform(10, 3) and ctl.partition[-1] == (9, 10)
    assert ctl.job_plan is not None and [s.node_id for s in ctl.job_plan.plan.stages] == ctl.stage_nodes
    assert len(summary.predicted_stage_busy_s) == 3 and len(summary.measured_stage_busy_s) == 3
    assert all(p > 0 for p in summary.predicted_stage_busy_s)
    assert any(e.kind == "plan" for e in ctl.events)
    # a synchronous schedule's result does not depend on where the cuts are
    uctl, usummary = run(make_spec(model=HEAVY_HEAD, stages=3, steps=4), tmp_path / "uniform",
                         tmp_path / "profiles")
    assert usummary.state == "SUCCEEDED" and uctl.partition == uniform(10, 3)
    a, b = load_model_state(ctl.checkpoints[-1]), load_model_state(uctl.checkpoints[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # the layer profile is stored for re-plans (one file: one model, one microbatch shape)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1


def test_unfittable_job_is_refused_before_it_starts(ray_cluster, make_spec, tmp_path: Path) -> None:
    spec = make_spec(model=HEAVY_HEAD, stages=2, partition="auto")
    ctl, summary = run(spec, tmp_path / "out", tmp_path / "profiles", memory_fraction=1e-12)
    assert summary.state == "FAILED"
    assert summary.reason.startswith("cannot place the job: ") and "\n" not in summary.reason
    assert ctl.metrics == [] and not any(e.message.startswith("STARTING") for e in ctl.events)
