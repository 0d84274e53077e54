"""'pipewave train' end to end on an embedded Ray cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import pipewave

ROOT = Path(__file__).resolve().parents[2]




@pytest.mark.slow
def test_train_json_summary(tmp_path: Path) -> None:
    job = {
        "name": "cli-mlp", "model": {"kind": "mlp", "d_model": 32, "n_layers": 2, "seq_len": 16},
        "data": {"kind": "synthetic"}, "schedule": "pipedream", "stages": 2, "microbatches": 2,
        "batch_size": 8, "steps": 6, "optimizer": {"kind": "adam", "lr": 0.003},
        "checkpoint": {"every_steps": 3},
    }
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    r = pipewave("train", str(p), "--output", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["state"] == "SUCCEEDED" and s["steps"] == 6
    assert s["final_loss"] < 5.6 and s["samples_per_s"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step-000006" / "manifest.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5, 6]
    # --steps on an output that already reached them: nothing to do, a clear failure
    again = pipewave("train", str(p), "--output", str(tmp_path / "run"), "--json")
    assert again.returncode == 1 and "nothing to do" in json.loads(again.stdout)["reason"]
    # --no-resume starts over: the earlier run's checkpoints and metrics are gone
    fresh = pipewave("train", str(p), "--output", str(tmp_path / "run"), "--json", "--no-resume",
                     "--steps", "3")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout)["steps"] == 3
    assert sorted(d.name for d in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000003"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    """SIGINT during training: the job ends CANCELLED, the embedded cluster stops, exit 130."""
    import signal
    import time

    job = {
        "name": "cli-cancel", "model": {"kind": "mlp", "d_model": 32, "n_layers": 2, "seq_len": 16},
        "data": {"kind": "synthetic"}, "schedule": "1f1b", "stages": 2, "microbatches": 2,
        "batch_size": 8, "steps": 1_000_000, "checkpoint": {"every_steps": 50},
    }
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job))
    proc = subprocess.Popen([sys.executable, "-m", "pipewave.cli", "train", str(p), "--output",
                             str(tmp_path / "run"), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.5)
        assert (tmp_path / "run" / "metrics.jsonl").exists(), "training never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    summary = json.loads(out)
    assert summary["state"] == "CANCELLED" and "interrupted" in summary["reason"]
    assert summary["steps"] >= 4  # a planned job's first run: its 4 calibration steps
