"""The built-in models, two implementations of the model contract (``pipewave.workers.contract``).

Two byte-level language models, both taking int64 tokens (B, T) and returning logits (B, T, V),
trained with the mean cross-entropy of next-token prediction:

- ``gpt``: Embedding -> n_layers pre-LN transformer blocks -> Head (nanoGPT-style, no dropout,
  no weight tying, so stages own disjoint parameters and training is deterministic). Each block
  is two cuttable layers, its attention half and its MLP half (both residual), so the planner
  can cut inside a block: a finer grain balances the stages better around a heavy head.
- ``mlp``: Embedding -> n_layers residual MLP blocks -> Head; tiny and fast, for tests.

Config fields (the job spec's ``GPTSpec`` / ``MLPSpec``): vocab_size, d_model, n_layers, seq_len,
and n_heads (gpt only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipewave.workers.contract import ModelSettings, PipelineModel

# ----------------------------------------------------------------------------- layers


def _init_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class Embedding(nn.Module):
    """Token + learned position embeddings: int64 (B, T) -> (B, T, C)."""

    def __init__(self, vocab_size: int, d_model: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.pos_emb.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.size(1)  # idx: (B, T)
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len {self.seq_len}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        return self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C) + (T, C) -> (B, T, C)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, proj_std: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model)
        _init_linear(self.c_attn, 0.02)
        _init_linear(self.c_proj, proj_std)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        hs = C // self.n_heads
        q = q.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Linear d -> 4d, GELU, Linear 4d -> d: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, proj_std: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.c_proj = nn.Linear(4 * d_model, d_model)
        _init_linear(self.c_fc, 0.02)
        _init_linear(self.c_proj, proj_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # (B, T, 4C) -> (B, T, C)


class AttentionHalf(nn.Module):
    """First half of a pre-LN transformer block: (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, n_heads: int, proj_std: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, proj_std)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.ln_1(x))  # (B, T, C)


class MLPBlock(nn.Module):
    """Residual per-position MLP: the second half of a transformer block, and the whole block of
    the ``mlp`` model (no mixing across positions): (B, T, C) -> (B, T, C)."""

    def __init__(self, d_model: int, proj_std: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, proj_std)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.ln(x))  # (B, T, C)


class Head(nn.Module):
    """Final LayerNorm + linear to the vocabulary: (B, T, C) -> (B, T, V) logits."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        _init_linear(self.lm_head, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.lm_head(self.ln_f(x))  # (B, T, V)


# ----------------------------------------------------------------------------- the models


def cross_entropy(output: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over all positions: logits (B, T, V), targets int64 (B, T)."""
    V = output.size(-1)
    return F.cross_entropy(output.reshape(-1, V), targets.reshape(-1))  # scalar


def _positive(cfg: dict[str, Any], name: str) -> int:
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model config {name} must be a positive int, got {value!r}")
    return value


class _ByteLM(PipelineModel):
    """Embedding -> blocks -> Head; ``per_block`` cuttable layers per block."""

    per_block = 1

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        cfg = settings.options
        self.vocab, self.d_model = _positive(cfg, "vocab_size"), _positive(cfg, "d_model")
        self.n_layers, self.max_len = _positive(cfg, "n_layers"), _positive(cfg, "seq_len")
        if settings.seq_len > self.max_len:
            raise ValueError(f"sequence length {settings.seq_len} exceeds the model's seq_len "
                             f"{self.max_len}")
        self.proj_std = 0.02 / math.sqrt(2 * self.n_layers)  # scaled residual projections (GPT-2)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def max_seq_len(self) -> int:
        return self.max_len

    def num_layers(self) -> int:
        return self.per_block * self.n_layers + 2

    def make_layer(self, index: int) -> nn.Module:
        if index == 0:
            return Embedding(self.vocab, self.d_model, self.max_len)
        if index == self.num_layers() - 1:
            return Head(self.d_model, self.vocab)
        return self.make_block_layer(index)

    def make_block_layer(self, index: int) -> nn.Module:
        return MLPBlock(self.d_model, self.proj_std)

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(output, targets)


class GPTModel(_ByteLM):
    kind = architecture = "gpt"
    per_block = 2

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        n_heads = settings.options.get("n_heads")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 \
                or self.d_model % n_heads:
            raise ValueError(f"gpt n_heads must divide d_model={self.d_model}, got {n_heads!r}")
        self.n_heads = n_heads

    def layer_names(self) -> list[str]:
        """["embed", "block0.attn", "block0.mlp", ..., "head"]."""
        blocks = [f"block{i}.{half}" for i in range(self.n_layers) for half in ("attn", "mlp")]
        return ["embed", *blocks, "head"]

    def make_block_layer(self, index: int) -> nn.Module:
        if index % 2 == 1:  # layers 1, 3, 5, ...: attention halves
            return AttentionHalf(self.d_model, self.n_heads, self.proj_std)
        return MLPBlock(self.d_model, self.proj_std)


class MLPModel(_ByteLM):
    kind = architecture = "mlp"

    def layer_names(self) -> list[str]:
        """["embed", "block0", ..., "head"]."""
        return ["embed", *[f"block{i}" for i in range(self.n_layers)], "head"]
