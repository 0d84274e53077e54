"""The planner on the shared local Ray cluster and through 'pipewave plan' (an embedded cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import pipewave, plan_job_file
from pipewave.service.cluster.nodes import cluster_nodes, slots_of
from pipewave.service.planning.planner import plan_job, render_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
def test_cluster_slots_on_the_test_cluster(ray_cluster):
    from harness import RAY_CPUS

    found = slots_of(cluster_nodes())
    assert len(found) == RAY_CPUS
    assert all(s.speed == 1.0 and s.memory_bytes is not None and s.memory_bytes > 0 for s in found)
    assert len(slots_of(cluster_nodes(), cpus_per_stage=2)) == RAY_CPUS // 2
    assert slots_of(cluster_nodes(), memory_fraction=0.4)[0].memory_bytes == pytest.approx(
        found[0].memory_bytes / 2, rel=1e-6)  # type: ignore[operator]


@pytest.mark.ray
def test_plan_a_profiled_tiny_gpt(ray_cluster, make_spec, tmp_path):
    from pipewave.service.planning.profiler import ProfileCache, profile_cluster
    from pipewave.workers.models import layer_names

    spec = make_spec(schedule="pipedream")
    profile = profile_cluster(spec, ProfileCache(tmp_path)).reference
    jp = plan_job(spec, profile.layers, slots_of(cluster_nodes()))
    assert 1 <= jp.stages <= 4 and spec.batch_size % jp.microbatches == 0
    assert jp.plan.partition[-1][1] == len(profile.layers)
    assert jp.predicted_samples_per_s > 0
    assert "head" in render_plan(jp, spec, layer_names(spec.model))


# ----------------------------------------------------------------------------- CLI






@pytest.mark.slow
def test_cli_plan_json(tmp_path):
    proc = pipewave("plan", str(plan_job_file(tmp_path)), "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["stages"] == 2 and data["microbatches"] == 2
    assert data["partition"][0][0] == 0 and data["partition"][-1][1] == 6  # 2 blocks: 6 layers
    assert list((tmp_path / "profiles").glob("*.json"))  # the profile was cached


@pytest.mark.slow
def test_cli_plan_unfittable(tmp_path):
    proc = pipewave("plan", str(plan_job_file(tmp_path)), "--auto", "--memory-fraction", "1e-9",
                    home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "cannot place the job" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
