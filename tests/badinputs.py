"""Job specs that name a model or data that cannot work, and what the refusal must say: the
same cases for ``pipewave train`` (exit 2) and ``POST /jobs`` (422). ``make_inputs(root)``
writes the files they name into ``root`` (a data root) once."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hfkit import tiny_llama_config
from tokkit import texts, train_bpe

SYNTHETIC = {"kind": "synthetic", "seq_len": 16}


def make_inputs(root: Path) -> None:
    """A tiny Llama folder, the same with a tensor missing, a 300-id token dataset, and a
    folder that is no dataset, under ``root``."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from pipewave.service.datasets import prepare

    if (root / "llama" / "config.json").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    cfg = dict(tiny_llama_config())
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "llama")
    (root / "broken").mkdir()
    shutil.copy(root / "llama" / "config.json", root / "broken" / "config.json")
    state = load_file(root / "llama" / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, root / "broken" / "model.safetensors", metadata={"format": "pt"})
    docs = texts(20)
    (root / "corpus.txt").write_text("\n".join(docs))
    tok = train_bpe(root, docs, vocab_size=300)
    prepare([root / "corpus.txt"], str(tok), root / "ds300", val_fraction=0.1)
    (root / "nometa").mkdir()
    (root / "nometa" / "train.bin").write_bytes(b"\0\0")


def llama(**kw: Any) -> dict[str, Any]:
    return {"kind": "transformers", **kw}


# (case, the spec's fields beyond name, what the one-line refusal says)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-architecture", {"model": llama(config={"model_type": "bert"}), "data": SYNTHETIC},
     "unsupported transformers model_type 'bert'"),
    ("config-does-not-build", {"model": llama(config=tiny_llama_config(num_attention_heads=3)),
                               "data": SYNTHETIC}, "not a multiple of the number of attention heads"),
    ("pretrained-missing", {"model": llama(pretrained="no-such-model"), "data": SYNTHETIC},
     "model.pretrained: no such file or folder"),
    ("pretrained-not-a-model", {"model": llama(pretrained="nometa"), "data": SYNTHETIC},
     "model.pretrained: nometa is not a model folder with config.json"),
    ("safetensors-missing-a-tensor", {"model": llama(pretrained="broken"), "data": SYNTHETIC},
     "model.layers.1.mlp.up_proj.weight"),
    ("safetensors-wrong-shape", {"model": llama(pretrained="llama", config={"intermediate_size": 96}),
                                 "data": SYNTHETIC}, "shape"),
    ("vocabulary-mismatch", {"model": {"kind": "gpt", "seq_len": 16},
                             "data": {"kind": "tokens", "path": "ds300"}},
     "the model's vocabulary (256 ids) does not cover the data's (300 ids"),
    ("plugin-not-installed", {"model": {"kind": "plugin", "name": "nope"}},
     "model plugin 'nope' is not installed"),
    ("plugin-config-rejected", {"model": {"kind": "plugin", "name": "mixer", "config": {"depth": 0}}},
     "model.config.depth: Input should be greater than or equal to 1"),
    ("dataset-without-meta", {"model": {"kind": "gpt"}, "data": {"kind": "tokens", "path": "nometa"}},
     "data.path: nometa is not a dataset folder with meta.json"),
]
