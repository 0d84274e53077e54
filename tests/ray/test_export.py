"""``pipewave export`` and ``init_from`` for the built-in models, on the session's Ray cluster.

The export of a checkpoint holds exactly the checkpoint's weights (plain safetensors, keys are
global parameter names); a job started from it (``init_from``) trains on from those weights:
its first step's loss is the loss of the exported weights on that step's batch, computed here
with plain torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import pipewave
from pipewave.service.control.checkpoint import load_model_state
from pipewave.workers.data import get_batch, load_corpus
from pipewave.workers.models import build_model, model_for

pytestmark = pytest.mark.ray


def test_export_holds_the_checkpoint_and_a_job_continues_from_it(make_spec, run_job,
                                                                 tmp_path: Path) -> None:
    spec = make_spec(steps=3)
    ctl, summary = run_job(spec, tmp_path / "a")
    assert summary.state == "SUCCEEDED", summary.reason
    out = tmp_path / "export"
    r = pipewave("export", str(tmp_path / "a"), "--output", str(out))  # a job output: its newest
    assert r.returncode == 0, r.stderr
    assert "from step 3" in r.stdout and "init_from" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "pipewave.json"]
    exported, saved = load_file(out / "model.safetensors"), load_model_state(ctl.checkpoints[-1])
    assert exported.keys() == saved.keys()
    assert all(torch.equal(exported[k], saved[k]) for k in saved)
    meta = json.loads((out / "pipewave.json").read_text())
    assert meta["kind"] == "gpt" and meta["config"] == spec.model_settings.options

    # a new job from the export: step 0's loss is the exported weights' loss on its batch
    spec_b = make_spec(steps=1, seed=5, init_from=str(out))
    ctl_b, summary_b = run_job(spec_b, tmp_path / "b")
    assert summary_b.state == "SUCCEEDED", summary_b.reason
    model = build_model(spec_b.model_settings, 12345)  # other weights, replaced below
    model.load_state_dict(exported)
    x, y = get_batch(load_corpus(spec_b.data), spec_b.seed, 0, spec_b.batch_size, spec_b.seq_len)
    with torch.no_grad():
        expected = model_for(spec_b.model_settings).loss(model(x), y).item()
    assert ctl_b.metrics[0].loss == pytest.approx(expected, rel=1e-5)

    # ... and so does one started from the checkpoint itself
    spec_c = spec_b.model_copy(update={"init_from": str(ctl.checkpoints[-1])})
    ctl_c, summary_c = run_job(spec_c, tmp_path / "c")
    assert summary_c.state == "SUCCEEDED", summary_c.reason
    assert ctl_c.metrics[0].loss == pytest.approx(expected, rel=1e-5)


def test_export_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    for args, message in [
        ([str(tmp_path / "missing"), "--output", str(tmp_path / "o")], "no such checkpoint"),
        ([str(tmp_path / "empty"), "--output", str(tmp_path / "o")], "holds no checkpoint"),
        ([str(tmp_path / "empty"), "--output", str(tmp_path / "full")], "holds no checkpoint"),
    ]:
        r = pipewave("export", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
