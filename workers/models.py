"""Model zoo: every model is an ordered list of layers that can be cut into pipeline stages.

Each layer is an ``nn.Module`` mapping one tensor to one tensor, so a pipeline stage is just a
contiguous slice of the list and a stage boundary carries exactly one activation. The loss is
computed outside the layers, from the last layer's output (see ``loss_fn``).

Two byte-level language models, both taking int64 tokens (B, T) and returning logits (B, T, V):

- ``gpt``: Embedding -> n_layers pre-LN transformer blocks -> Head (nanoGPT-style, no dropout,
  no weight tying, so stages own disjoint parameters and training is deterministic). Each block
  is two cuttable layers, its attention half and its MLP half (both residual), so the planner
  can cut inside a block: a finer grain balances the stages better around a heavy head.
- ``mlp``: Embedding -> n_layers residual MLP blocks -> Head; tiny and fast, for tests.

Layer ``i`` is initialised from ``(seed, i)`` alone, so a stage that builds only its own layers
gets bit-identical parameters to the same layers of the whole model.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

KINDS = ("gpt", "mlp")


class ModelConfig(Protocol):
    """Any object with these attributes (e.g. the job spec's pydantic model config).

    ``gpt`` also needs ``n_heads``; ``mlp`` ignores it.
    """

    @property
    def kind(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def n_layers(self) -> int: ...
    @property
    def seq_len(self) -> int: ...


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


# ----------------------------------------------------------------------------- public API


def _validate(cfg: ModelConfig) -> None:
    kind = getattr(cfg, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    for name in ("vocab_size", "d_model", "n_layers", "seq_len"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"model config {name} must be a positive int, got {value!r}")
    if kind == "gpt":
        n_heads = getattr(cfg, "n_heads", None)
        if not isinstance(n_heads, int) or n_heads < 1 or cfg.d_model % n_heads:
            raise ValueError(f"gpt n_heads must divide d_model={cfg.d_model}, got {n_heads!r}")


def _per_block(cfg: ModelConfig) -> int:
    return 2 if cfg.kind == "gpt" else 1


def num_layers(cfg: ModelConfig) -> int:
    """Number of cuttable layers: embedding + blocks (two layers each for gpt) + head."""
    _validate(cfg)
    return _per_block(cfg) * cfg.n_layers + 2


def layer_names(cfg: ModelConfig) -> list[str]:
    """Human-readable layer names: ["embed", "block0.attn", "block0.mlp", ..., "head"] for gpt,
    ["embed", "block0", ..., "head"] for mlp."""
    _validate(cfg)
    if cfg.kind == "gpt":
        blocks = [f"block{i}.{half}" for i in range(cfg.n_layers) for half in ("attn", "mlp")]
    else:
        blocks = [f"block{i}" for i in range(cfg.n_layers)]
    return ["embed", *blocks, "head"]


def _layer_seed(seed: int, index: int) -> int:
    """A 63-bit seed derived from (seed, layer index) alone."""
    digest = hashlib.blake2b(f"pipewave/layer/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _make_layer(cfg: ModelConfig, index: int) -> nn.Module:
    n = num_layers(cfg)
    if index == 0:
        return Embedding(cfg.vocab_size, cfg.d_model, cfg.seq_len)
    if index == n - 1:
        return Head(cfg.d_model, cfg.vocab_size)
    proj_std = 0.02 / math.sqrt(2 * cfg.n_layers)  # scaled residual projections (GPT-2)
    if cfg.kind == "gpt" and index % 2 == 1:  # layers 1, 3, 5, ...: attention halves
        return AttentionHalf(cfg.d_model, cfg.n_heads, proj_std)  # type: ignore[attr-defined]
    return MLPBlock(cfg.d_model, proj_std)


def build_layers(
    cfg: ModelConfig, seed: int, indices: Sequence[int] | None = None
) -> list[nn.Module]:
    """Build the layers at ``indices`` (all layers if None), in the order given.

    Layer ``i`` is initialised from ``(seed, i)`` only, inside a forked RNG, so any subset is
    bit-identical to the same layers of a full build and the global torch RNG is left untouched.
    """
    n = num_layers(cfg)
    if indices is None:
        indices = range(n)
    indices = list(indices)
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"layer index must be an int, got {i!r}")
        if not 0 <= i < n:
            raise IndexError(f"layer index {i} out of range for a {cfg.kind} with {n} layers")
    if len(set(indices)) != len(indices):
        raise ValueError(f"duplicate layer indices in {indices}")

    layers = []
    for i in indices:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_layer_seed(seed, i))
            layers.append(_make_layer(cfg, i))
    n_params = sum(p.numel() for layer in layers for p in layer.parameters())
    logger.debug("built %s layers %s: %d parameters", cfg.kind, indices, n_params)
    return layers


def build_model(cfg: ModelConfig, seed: int) -> nn.Sequential:
    """The whole model; state_dict keys are "<layer index>.<param name>"."""
    return nn.Sequential(*build_layers(cfg, seed))


def loss_fn(output: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over all positions: logits (B, T, V), targets int64 (B, T)."""
    V = output.size(-1)
    return F.cross_entropy(output.reshape(-1, V), targets.reshape(-1))  # scalar
