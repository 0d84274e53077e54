"""Test helpers shared by the unit, Ray and end-to-end tests (import as ``harness``).

Fixtures live in conftest.py; plain functions and constants live here, so a test module never
imports conftest (which pytest imports once, itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RAY_CPUS = 4  # logical CPUs of the embedded cluster: enough for one 4-stage job at a time


def ensure_local_ray() -> None:
    import ray

    from pipewave.service.cluster.runtime import connect

    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) == RAY_CPUS \
            and len(ray.nodes()) == 1:
        return
    if ray.is_initialized():
        ray.shutdown()
    connect(None, RAY_CPUS)


def new_spec(**overrides: Any):
    """A tiny job (gpt, 4 cuttable layers) on synthetic data; ``overrides`` replace fields."""
    from pipewave.service.spec import JobSpec

    data: dict[str, Any] = {
        "name": "t",
        "model": {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2,
                  "seq_len": 16},
        "data": {"kind": "synthetic"},
        "schedule": "1f1b",
        "partition": "uniform",  # the engine's numerics: a fixed, known split
        "stages": 2,
        "microbatches": 4,
        "batch_size": 8,
        "steps": 5,
        "optimizer": {"kind": "adam", "lr": 1e-2},
        "seed": 0,
    }
    data.update(overrides)
    return JobSpec.model_validate(data)


def run_spec(spec, output: Path, resume: bool = False):
    """Run one job to the end in this process; returns (controller, summary)."""
    from pipewave.service.control.controller import ControllerOptions, JobController

    ensure_local_ray()
    ctl = JobController(spec, output, ControllerOptions(cpus_per_stage=1, threads_per_stage=1,
                                                        resume=resume, ready_timeout_s=60.0))
    return ctl, ctl.run()


def autoscaler_request() -> list[dict[str, float]] | None:
    """What the cluster's autoscaler is asked to make room for (Ray's own KV entry)."""
    import json

    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else None
