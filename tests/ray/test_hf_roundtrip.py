"""From raw text files to a Hugging Face model and back, through the commands a user runs:
``pipewave prepare`` (a BPE tokenizer trained here) -> ``pipewave train`` (a tiny Llama on the
token dataset, 2 stages) -> ``pipewave export`` -> ``AutoModelForCausalLM.from_pretrained``
gives pipewave's logits -> a job ``init_from`` the export continues from those weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from harness import pipewave
from hfkit import tiny_llama_config
from pipewave.service.control.checkpoint import latest, load_model_state
from pipewave.workers.data import get_batch, load_corpus
from pipewave.workers.models import model_for
from tokkit import texts, train_bpe

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def write_job(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def test_prepare_train_export_round_trip(ray_address: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from pipewave.service.spec import load_spec

    docs = texts(60)
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("\n".join(docs[i::3]))
    tok = train_bpe(tmp_path, docs, vocab_size=300)
    r = pipewave("prepare", *(str(tmp_path / f"part{i}.txt") for i in range(3)), "--tokenizer",
                 str(tok), "--output", str(tmp_path / "ds"), "--val-fraction", "0.1", "-q")
    assert r.returncode == 0, r.stderr
    config = tiny_llama_config(vocab_size=300)
    job = write_job(tmp_path / "llama.yaml", name="llama", steps=4, stages=2, microbatches=2,
                    batch_size=4, schedule="1f1b", partition="uniform",
                    model={"kind": "transformers", "config": config},
                    data={"kind": "tokens", "path": "ds", "seq_len": 32},
                    optimizer={"kind": "adam", "lr": 3e-3})
    r = pipewave("train", str(job), "--output", str(tmp_path / "run"), "--address", ray_address,
                 "--no-resume", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = pipewave("export", str(tmp_path / "run"), "--output", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert "from_pretrained" in r.stdout
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]

    # the exported folder loads in transformers and gives pipewave's logits
    spec = load_spec(job)
    pw = model_for(spec.model_settings)
    net = pw.build_model(0)
    record = latest(tmp_path / "run")
    assert record is not None and record.step == 4
    net.load_state_dict(load_model_state(record.path))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    x, _ = get_batch(load_corpus(spec.data), 7, 0, 4, 32)
    assert int(x.max()) < 300
    with torch.no_grad():
        ours, theirs = net(x), hf(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    # a job from the export continues from it: its first loss is the export's on that batch
    job2 = write_job(tmp_path / "more.yaml", **{**yaml.safe_load(job.read_text()), "steps": 1,
                                                   "seed": 3, "init_from": "hf"})
    r = pipewave("train", str(job2), "--output", str(tmp_path / "run2"), "--address", ray_address,
                 "--no-resume", "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    spec2 = load_spec(job2)
    x2, y2 = get_batch(load_corpus(spec2.data), 3, 0, 4, 32)
    with torch.no_grad():
        expected = pw.loss(hf(input_ids=x2).logits, y2).item()
    first = (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()[0]
    assert yaml.safe_load(first)["loss"] == pytest.approx(expected, rel=1e-5)
