"""An example pipewave model plugin: an MLP-Mixer that classifies token windows.

Not a language model: it reads a window of ``seq_len`` tokens and predicts one class per window,
the class of the token that follows the window, ``label = targets[:, -1] % num_classes`` (pipewave's
targets are the inputs shifted by one token, so ``targets[:, -1]`` is the next token; with
``num_classes = vocab_size`` the task is next-token prediction at the window's end, with fewer
classes it predicts the token's bucket). The loss is label-smoothed cross-entropy.

Layers (each one cuttable):

- ``embed``: token + learned position embeddings, int64 (b, T) -> ``{"h": (b, T, C), "summary":
  (b, C)}``, the summary starting as the mean of ``h`` over the window;
- ``mixer{i}``: a Mixer block: a token-mixing MLP across the T positions, then a channel-mixing
  MLP across the C features (both residual, pre-LayerNorm), then the summary takes in the pooled
  new ``h``: ``summary += W(LN(mean_T(h)))``;
- ``head``: LayerNorm + linear of the summary to ``num_classes`` logits (b, K).

Every stage boundary is therefore a tree of two tensors of different shapes. The token-mixing MLP
has weights over the positions, so the model fixes the sequence length (``seq_len``). No dropout;
every weight is drawn from the global torch RNG inside ``make_layer`` (pipewave seeds it per
layer), so the model is deterministic and any subset of layers equals the whole model's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from pipewave.workers.contract import ModelSettings, PipelineModel

__all__ = ["MixerConfig", "MixerModel"]

Boundary = dict[str, Tensor]  # {"h": (b, T, C), "summary": (b, C)}


class MixerConfig(BaseModel):
    """The job spec's ``model.config`` of ``name: mixer``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    vocab_size: int = Field(256, ge=2, le=1_048_576, description="token ids the embedding reads")
    seq_len: int = Field(32, ge=2, le=4096, description="tokens per window (fixed: token mixing)")
    d_model: int = Field(64, ge=4, le=4096, description="channels C")
    depth: int = Field(4, ge=1, le=64, description="Mixer blocks")
    num_classes: int = Field(16, ge=2, le=1_048_576,
                             description="classes: the next token modulo num_classes")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="of the cross-entropy")


def _linear(d_in: int, d_out: int, std: float = 0.02, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class Embed(nn.Module):
    """int64 (b, T) -> {"h": (b, T, C), "summary": (b, C)}."""

    def __init__(self, vocab_size: int, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        nn.init.normal_(self.tok.weight, mean=0.0, std=0.02)
        nn.init.normal_(self.pos.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor) -> Boundary:
        if idx.size(1) != self.seq_len:
            raise ValueError(f"the mixer reads windows of exactly {self.seq_len} tokens, got {idx.size(1)}")
        h = self.tok(idx) + self.pos(torch.arange(self.seq_len, device=idx.device))  # (b, T, C)
        return {"h": h, "summary": h.mean(dim=1)}  # (b, T, C), (b, C)


class MixerBlock(nn.Module):
    """Token mixing across T, channel mixing across C, then the summary update; tree -> tree."""

    def __init__(self, seq_len: int, d_model: int, proj_std: float) -> None:
        super().__init__()
        self.ln_tokens = nn.LayerNorm(d_model)
        self.token_fc = _linear(seq_len, 2 * seq_len)  # across positions: T -> 2T -> T
        # no bias: it would shift all channels of a position alike, which every LayerNorm after it
        # takes out again; its gradient would be rounding noise (that Adam blows up to full steps)
        self.token_proj = _linear(2 * seq_len, seq_len, proj_std, bias=False)
        self.ln_channels = nn.LayerNorm(d_model)
        self.channel_fc = _linear(d_model, 4 * d_model)  # across features: C -> 4C -> C
        self.channel_proj = _linear(4 * d_model, d_model, proj_std)
        self.ln_pool = nn.LayerNorm(d_model)
        self.pool = _linear(d_model, d_model, proj_std)

    def forward(self, x: Boundary) -> Boundary:
        h, summary = x["h"], x["summary"]  # (b, T, C), (b, C)
        t = self.ln_tokens(h).transpose(1, 2)  # (b, C, T)
        h = h + self.token_proj(F.gelu(self.token_fc(t))).transpose(1, 2)  # (b, T, C)
        h = h + self.channel_proj(F.gelu(self.channel_fc(self.ln_channels(h))))  # (b, T, C)
        summary = summary + self.pool(self.ln_pool(h.mean(dim=1)))  # (b, C)
        return {"h": h, "summary": summary}


class Head(nn.Module):
    """The summary's class logits: tree -> (b, K)."""

    def __init__(self, d_model: int, num_classes: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.out = _linear(d_model, num_classes)

    def forward(self, x: Boundary) -> Tensor:
        return self.out(self.ln(x["summary"]))  # (b, K)


class MixerModel(PipelineModel):
    """An MLP-Mixer classifier of token windows (the class of the token after each window)."""

    config_model = MixerConfig

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        options: dict[str, Any] = settings.options
        self.config = MixerConfig.model_validate(options.get("config") or {})
        if settings.seq_len != self.config.seq_len:
            raise ValueError(f"the mixer fixes the sequence length at model.config.seq_len = "
                             f"{self.config.seq_len}; the job trains at {settings.seq_len}")
        self.proj_std = 0.02 / math.sqrt(2 * self.config.depth)  # residual projections

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.config.seq_len

    def layer_names(self) -> list[str]:
        """["embed", "mixer0", ..., "head"]."""
        return ["embed", *[f"mixer{i}" for i in range(self.config.depth)], "head"]

    def make_layer(self, index: int) -> nn.Module:
        c = self.config
        if index == 0:
            return Embed(c.vocab_size, c.seq_len, c.d_model)
        if index == c.depth + 1:
            return Head(c.d_model, c.num_classes)
        return MixerBlock(c.seq_len, c.d_model, self.proj_std)

    def labels(self, targets: Tensor) -> Tensor:
        """Each window's class: the token after it (the last target) modulo num_classes, (b,)."""
        return targets[:, -1] % self.config.num_classes

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(output, self.labels(targets), label_smoothing=self.config.label_smoothing)
