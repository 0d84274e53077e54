"""Tiny Hugging Face causal LMs for tests, and a plain transformers trainer to check against.

``hf_reference_train`` trains the unpipelined ``transformers`` model (``AutoModelForCausalLM``)
with ``torch.optim.Adam`` from pipewave's initial weights: nothing of the stage engine
(``pipewave.workers.stage``), the schedules or pipewave's optimizers runs in it; pipewave gives
only the initial weights and the name mapping (``pipewave.workers.hf``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipewave.workers.contract import ModelSettings
from pipewave.workers.hf import TransformersModel

SEQ_LEN = 16
_COMMON = {"vocab_size": 256, "max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2,
           "tie_word_embeddings": False}


def tiny_llama_config(**fields: Any) -> dict[str, Any]:
    """4 decoder layers, hidden 64, grouped-query attention (4 heads, 2 key/value heads)."""
    return {"model_type": "llama", **_COMMON, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, **fields}


def tiny_gpt2_config(**fields: Any) -> dict[str, Any]:
    """4 blocks, hidden 64, untied, no dropout."""
    return {"model_type": "gpt2", "vocab_size": 256, "n_positions": 64, "bos_token_id": 1,
            "eos_token_id": 2, "tie_word_embeddings": False, "n_embd": 64, "n_layer": 4, "n_head": 4,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, **fields}


def tiny_qwen2_config(**fields: Any) -> dict[str, Any]:
    """3 decoder layers, the last one with sliding-window attention (window 8), GQA."""
    return {"model_type": "qwen2", **_COMMON, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
            "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2, **fields}


def tiny_mistral_config(**fields: Any) -> dict[str, Any]:
    """2 decoder layers, sliding-window attention (window 8), GQA."""
    return {"model_type": "mistral", **_COMMON, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "sliding_window": 8, **fields}


def options(config: dict[str, Any] | None = None, pretrained: str | None = None) -> dict[str, Any]:
    """The model spec's options (what ``ModelSettings.options`` holds for a transformers model)."""
    return {"kind": "transformers", "config": config, "pretrained": pretrained}


def settings(opts: dict[str, Any] | ModelSettings, seq_len: int = SEQ_LEN) -> ModelSettings:
    if isinstance(opts, ModelSettings):
        return opts
    if "kind" not in opts:  # a bare config dict
        opts = options(opts)
    return ModelSettings.of("transformers", opts, seq_len)


def model(opts: dict[str, Any] | ModelSettings, seq_len: int = SEQ_LEN) -> TransformersModel:
    return TransformersModel(settings(opts, seq_len))


def hf_model(pw: TransformersModel, state: Mapping[str, Tensor]) -> Any:
    """The plain transformers ``*ForCausalLM`` of ``pw``'s config holding ``state`` (global names)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(pw.config, dtype=torch.float32)  # as pipewave trains
    hf.load_state_dict({pw.naming.hf_name(k): v for k, v in state.items()}, strict=True)
    return hf


def global_state(pw: TransformersModel, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers state dict under pipewave's global names."""
    ours = {pw.naming.hf_name(n): n for n in pw.build_model(0).state_dict()}
    return {ours[k]: v for k, v in hf_state.items()}


Batches = Sequence[tuple[Tensor, Tensor]] | Callable[[int], tuple[Tensor, Tensor]]


def hf_reference_train(opts: dict[str, Any] | ModelSettings, seed: int, batches: Batches,
                       lr: float, steps: int) -> dict[str, Tensor]:
    """Train the unpipelined transformers model ``steps`` Adam steps (lr ``lr``, torch defaults
    otherwise) from pipewave's initial weights for ``seed``, step k on ``batches[k]`` (or
    ``batches(k)``): (x, y) int64 (B, T), y the targets (already shifted); the loss is the mean
    cross-entropy of the logits. Returns the final transformers state dict (HF names; see
    ``global_state``)."""
    seq_len = SEQ_LEN
    if not isinstance(opts, ModelSettings):
        first = batches(0) if callable(batches) else batches[0]
        seq_len = first[0].shape[1]
    pw = model(opts, seq_len)
    hf = hf_model(pw, pw.build_model(seed).state_dict())
    hf.train()
    opt = torch.optim.Adam(hf.parameters(), lr=lr)
    for step in range(steps):
        x, y = batches(step) if callable(batches) else batches[step]
        opt.zero_grad(set_to_none=True)
        logits = hf(input_ids=x, use_cache=False).logits  # (B, T, V)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}
