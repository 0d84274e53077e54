"""A transformers job's state is a pipewave state like any other: its checkpoint resumes on
another stage count, and a live re-partitioning moves it stage to stage, digest-verified."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hfkit import tiny_llama_config
from pipewave.service.control.checkpoint import load_model_state
from pipewave.service.control.controller import ControllerOptions, JobController
from pipewave.service.planning.profiler import Profile, ProfileCache, profile_cluster, profile_key

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def llama_job(make_spec, **kw):
    return make_spec(model={"kind": "transformers", "config": tiny_llama_config()},
                     data={"kind": "synthetic", "seq_len": 16}, optimizer={"kind": "adam", "lr": 1e-3},
                     **kw)


def test_checkpoint_resumes_on_another_stage_count_bitwise(make_spec, run_job, tmp_path: Path) -> None:
    """2 stages write step 2 and step 4; 3 stages resume from step 2: their step 4 is bitwise
    the 2-stage run's (a synchronous schedule's updates do not depend on the cuts)."""
    spec = llama_job(make_spec, steps=4, checkpoint={"every_steps": 2})
    ctl, summary = run_job(spec, tmp_path / "straight")
    assert summary.state == "SUCCEEDED", summary.reason
    out = tmp_path / "resumed"
    shutil.copytree(ctl.checkpoints[0], out / "checkpoints" / Path(ctl.checkpoints[0]).name)
    ctl3, summary3 = run_job(spec.model_copy(update={"stages": 3}), out, resume=True)
    assert summary3.state == "SUCCEEDED", summary3.reason
    assert summary3.first_step == 2 and len(ctl3.partition) == 3
    a, b = load_model_state(ctl3.checkpoints[-1]), load_model_state(ctl.checkpoints[-1])
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# A large vocabulary makes the head the heaviest layer by far (embed, 4 decoder layers, head)
HEAVY_HEAD = tiny_llama_config(vocab_size=8192, hidden_size=32, intermediate_size=64)


def test_a_live_move_of_a_transformers_job_is_digest_verified(make_spec, ray_cluster,
                                                              tmp_path: Path) -> None:
    """A wrong cached profile (the head as cheap as a decoder layer) misplaces the cuts; the
    measured busy times show it, the controller re-plans and moves the drained pipeline live,
    every tensor's digest equal before and after, and training goes on to the end."""
    spec = make_spec(model={"kind": "transformers", "config": HEAVY_HEAD},
                     data={"kind": "synthetic", "seq_len": 32}, stages=3, partition="auto", steps=6)
    cache = ProfileCache(tmp_path / "profiles")
    true = profile_cluster(spec, cache).reference
    layer = true.layers[1]
    wrong = (*true.layers[:-1], replace(true.layers[-1], forward_s=layer.forward_s,
                                         backward_s=layer.backward_s))
    cache.put(Profile(profile_key(spec.model_settings, spec.microbatch_size, true.device_kind),
                      true.device_kind, wrong, true.measured_at))
    ctl = JobController(spec, tmp_path / "out", ControllerOptions(
        threads_per_stage=1, resume=False, profile_dir=tmp_path / "profiles", calibrate_steps=2))
    summary = ctl.run()
    assert summary.state == "SUCCEEDED", summary.reason
    moves = [e.data for e in ctl.events if e.kind == "rebalance"]
    assert moves and all(m["verified"] and m["bytes_moved"] > 0 for m in moves)
    assert ctl.partition[-1] == (5, 6)  # the head alone, as measured
    assert [m.step for m in ctl.metrics] == list(range(1, 7))
