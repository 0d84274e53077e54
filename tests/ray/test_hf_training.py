"""Hugging Face causal LMs (a tiny Llama with grouped-query attention, a tiny untied GPT-2)
pipelined on the session's Ray cluster.

The synchronous schedules end where unpipelined training of the same ``transformers`` model
with ``torch.optim.Adam`` on the same batches ends (``hfkit.hf_reference_train``: the plain
``*ForCausalLM``, nothing of pipewave's engine or optimizers); the asynchronous ones (pipedream,
2bw) end where the reference executor (``reference.py``) says their semantics end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import reference as ref
from hfkit import global_state, hf_reference_train, model, tiny_gpt2_config, tiny_llama_config
from pipewave.service.control.checkpoint import load_model_state
from pipewave.workers.data import get_batch, load_corpus

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LLAMA = {"kind": "transformers", "config": tiny_llama_config()}
GPT2 = {"kind": "transformers", "config": tiny_gpt2_config()}
MODELS = {"llama": LLAMA, "gpt2": GPT2}


def hf_job(make_spec, name: str, **kw):
    """5 steps of 8 sequences of 16 bytes in 4 microbatches, Adam at lr 1e-3. (Adam turns
    rounding noise in a near-zero gradient into a step of up to lr: at lr 1e-2 one weight in
    ~8000 of the Llama's gated MLPs ends 1e-5..4e-5 off after 5 steps, microbatched or not.)"""
    return make_spec(model=MODELS[name], data={"kind": "synthetic", "seq_len": 16},
                     optimizer={"kind": "adam", "lr": 1e-3}, **kw)


def unpipelined(spec) -> dict:
    """The final weights (global names) of the plain transformers model trained on the job's
    batches with torch.optim.Adam."""
    corpus = load_corpus(spec.data)
    o = spec.optimizer
    assert o.kind == "adam" and o.weight_decay == 0 and o.betas == (0.9, 0.999) and o.eps == 1e-8
    hf = hf_reference_train(spec.model_settings, spec.seed,
                            lambda k: get_batch(corpus, spec.seed, k, spec.batch_size, spec.seq_len),
                            lr=o.lr, steps=spec.steps)
    return global_state(model(spec.model_settings), hf)


@pytest.mark.parametrize(("name", "schedule", "stages", "extra"), [
    ("llama", "1f1b", 2, {}),
    ("llama", "gpipe", 3, {}),
    ("llama", "hanayo", 2, {"waves": 1}),
    ("gpt2", "1f1b", 2, {}),
    ("gpt2", "gpipe", 3, {}),
    ("gpt2", "interleaved-1f1b", 2, {"chunks": 2}),
])
def test_sync_schedules_equal_unpipelined_transformers(name, schedule, stages, extra, make_spec,
                                                       run_job, tmp_path: Path) -> None:
    spec = hf_job(make_spec, name, schedule=schedule, stages=stages, **extra)
    ctl, summary = run_job(spec, tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    assert len(ctl.partition) == stages * ctl.spec.chunks_per_stage
    got = load_model_state(ctl.checkpoints[-1])
    ref.assert_state_close(got, unpipelined(spec), spec, updates=spec.steps)


@pytest.mark.parametrize(("schedule", "vertical_sync"), [("pipedream", False), ("pipedream", True),
                                                         ("2bw", False)])
def test_async_schedules_on_llama_match_the_reference_executor(schedule, vertical_sync, make_spec,
                                                                run_job, tmp_path: Path) -> None:
    spec = hf_job(make_spec, "llama", schedule=schedule, stages=2, vertical_sync=vertical_sync)
    ctl, summary = run_job(spec, tmp_path)
    assert summary.state == "SUCCEEDED", summary.reason
    expected = ref.train(spec)
    updates = spec.steps * (spec.microbatches if schedule == "pipedream" else 1)
    assert [m.loss for m in ctl.metrics] == pytest.approx(expected.step_losses, rel=1e-4, abs=1e-5)
    ref.assert_state_close(load_model_state(ctl.checkpoints[-1]), expected.state, spec, updates)
    for s, report in enumerate(ctl.last_run):
        assert sorted(ref.versions_by_microbatch(report).items()) == expected.runs[-1][s], s
