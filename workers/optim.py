"""Out-of-place optimizers over immutable weight versions.

A weight version is a tuple of tensors that is never modified after it is made: an in-flight
microbatch keeps the version its forward used alive by reference (weight stashing without copies).
An update clones the latest version and runs torch's (fused where available) kernel on the clone.
Updating in place would be wrong: fused CPU Adam does not bump autograd's version counter, so a
backward still in flight would silently use the new weights (see shared/notes/measurements.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam
from torch.optim.adamw import adamw
from torch.optim.sgd import sgd

logger = logging.getLogger(__name__)

Version = tuple[torch.Tensor, ...]


def _fused_ok(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


class OutOfPlaceOptimizer:
    """Adam, AdamW or SGD whose ``step`` returns a new version instead of mutating the old one."""

    def __init__(self, kind: str, params: Sequence[torch.Tensor], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0) -> None:
        if kind not in ("adam", "adamw", "sgd"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind = kind
        self.lr, self.betas, self.eps = lr, betas, eps
        self.weight_decay, self.momentum = weight_decay, momentum
        self.fused = bool(params) and _fused_ok(params[0].device)
        self.exp_avgs = [torch.zeros_like(p) for p in params] if kind != "sgd" else []
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params] if kind != "sgd" else []
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in params] if kind != "sgd" else []
        if kind == "sgd" and momentum > 0:
            self.momentum_buffers: list[torch.Tensor | None] = [None for _ in params]
        else:
            self.momentum_buffers = []

    def step(self, version: Version, grads: Sequence[torch.Tensor], in_place: bool = False) -> Version:
        """Return version - lr * update(grads); ``version`` itself is left untouched unless
        ``in_place``, which the caller may ask for only when nothing else references it (no
        microbatch in flight used it, no later action will): it saves a copy of the weights."""
        new = [p.detach() if in_place else p.detach().clone() for p in version]
        grads = list(grads)
        with torch.no_grad():
            if self.kind in ("adam", "adamw"):
                fn = adam if self.kind == "adam" else adamw
                fn(new, grads, self.exp_avgs, self.exp_avg_sqs, [], self.steps,
                   fused=self.fused, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1],
                   lr=self.lr, weight_decay=self.weight_decay, eps=self.eps, maximize=False)
            else:
                bufs: list[torch.Tensor | None] = (
                    self.momentum_buffers if self.momentum > 0 else [None] * len(new))
                sgd(new, grads, bufs, fused=self.fused, weight_decay=self.weight_decay,
                    momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False,
                    maximize=False)
                if self.momentum > 0:
                    self.momentum_buffers = bufs
        return version if in_place else tuple(p.requires_grad_() for p in new)

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self, names: Sequence[str]) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": self.kind}
        if self.kind != "sgd":
            state["exp_avg"] = dict(zip(names, self.exp_avgs, strict=True))
            state["exp_avg_sq"] = dict(zip(names, self.exp_avg_sqs, strict=True))
            state["step"] = dict(zip(names, self.steps, strict=True))
        elif self.momentum > 0:
            state["momentum_buffer"] = dict(zip(names, self.momentum_buffers, strict=True))
        return state

    def load_state_dict(self, state: dict[str, Any], names: Sequence[str],
                        device: torch.device) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint optimizer is {state.get('kind')!r}, job uses {self.kind!r}")
        if self.kind != "sgd":
            self.exp_avgs = [state["exp_avg"][n].to(device) for n in names]
            self.exp_avg_sqs = [state["exp_avg_sq"][n].to(device) for n in names]
            self.steps = [state["step"][n].clone() for n in names]
        elif self.momentum > 0:
            self.momentum_buffers = [
                None if state["momentum_buffer"][n] is None else state["momentum_buffer"][n].to(device)
                for n in names
            ]
