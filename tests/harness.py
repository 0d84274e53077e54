"""Test helpers shared by the unit, Ray and end-to-end tests (import as ``harness``).

Fixtures live in conftest.py; plain functions and constants live here, so a test module never
imports conftest (which pytest imports once, itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the repository
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


def pipewave(*args: str, home: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m pipewave.cli ARGS`` from the repository root (``home``: its PIPEWAVE_HOME)."""
    env = {**os.environ, "PIPEWAVE_HOME": str(home)} if home is not None else None
    return subprocess.run([sys.executable, "-m", "pipewave.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


TINY_GPT: dict[str, Any] = {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2,
                            "n_heads": 2, "seq_len": 16}


def tiny_gpt(**overrides: Any):
    """A GPTSpec of ``TINY_GPT`` with ``overrides``."""
    from pipewave.service.spec import GPTSpec

    return GPTSpec.model_validate({**TINY_GPT, **overrides})


def plan_job_file(tmp_path: Path) -> Path:
    """A 2-stage tiny GPT job for ``pipewave plan``, written to ``tmp_path/job.yaml``."""
    spec = {"name": "p", "model": {"kind": "gpt", "vocab_size": 256, "d_model": 16, "n_layers": 2,
                                   "n_heads": 2, "seq_len": 8},
            "data": {"kind": "synthetic"}, "schedule": "1f1b", "stages": 2, "microbatches": 2,
            "batch_size": 4}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
