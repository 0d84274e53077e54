"""Stage boundaries as trees of tensors, and how one crosses the wire.

A layer's output is a tree (a tensor, or tuple / list / dict of trees; ``torch.utils._pytree``).
Its *layout* (structure, and each leaf's shape and dtype) is learned once from the layers
(``PipelineModel.boundaries``). An activation message carries every leaf; a gradient message
carries the gradients of the floating-point leaves only (integer leaves have none). A message of
one leaf is that tensor itself (no copy); several leaves travel as one byte buffer, each leaf at
an 8-byte-aligned offset, so one send and one receive move them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

Tree = Any
ALIGN = 8


def leaves(tree: Tree) -> list[Tensor]:
    flat = pytree.tree_leaves(tree)
    bad = [type(x).__name__ for x in flat if not isinstance(x, Tensor)]
    if bad:
        raise TypeError(f"a stage boundary must be a tree of tensors, found a {bad[0]}")
    return flat


def differentiable(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


@dataclass(frozen=True)
class Layout:
    """The wire form of one boundary: its tree structure and every leaf's shape and dtype."""

    spec: pytree.TreeSpec
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, tree: Tree) -> Layout:
        flat, spec = pytree.tree_flatten(tree)
        leaves(tree)
        return cls(spec, tuple(tuple(t.shape) for t in flat), tuple(t.dtype for t in flat))

    def grads(self) -> Layout:
        """The layout of a gradient message: the floating-point leaves (structure: a list)."""
        keep = [i for i, d in enumerate(self.dtypes) if d.is_floating_point or d.is_complex]
        shapes, dtypes = tuple(self.shapes[i] for i in keep), tuple(self.dtypes[i] for i in keep)
        return Layout(pytree.tree_flatten([0] * len(keep))[1], shapes, dtypes)

    @property
    def nbytes(self) -> int:
        return sum(math.prod(s) * d.itemsize for s, d in zip(self.shapes, self.dtypes, strict=True))

    # -- the buffer a message travels in -------------------------------------------------------
    @property
    def single(self) -> bool:
        return len(self.shapes) == 1

    def buffer(self, device: torch.device) -> Tensor:
        """An empty receive buffer for one message."""
        if self.single:
            return torch.empty(self.shapes[0], dtype=self.dtypes[0], device=device)
        return torch.empty(self._offsets[-1], dtype=torch.uint8, device=device)

    @functools.cached_property
    def _offsets(self) -> list[int]:
        """Each leaf's byte offset in a packed message (8-byte aligned), then the total; once
        per layout, not per message."""
        out, at = [], 0
        for s, d in zip(self.shapes, self.dtypes, strict=True):
            out.append(at)
            at += -(-(math.prod(s) * d.itemsize) // ALIGN) * ALIGN
        return [*out, at]

    def pack(self, flat: list[Tensor]) -> Tensor:
        """The message of ``flat`` (this layout's leaves, in order)."""
        self._check(flat)
        if self.single:
            return flat[0].contiguous()
        offsets = self._offsets
        buf = torch.empty(offsets[-1], dtype=torch.uint8, device=flat[0].device)
        for t, at in zip(flat, offsets, strict=False):
            raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
            buf[at:at + raw.numel()].copy_(raw)
        return buf

    def unpack(self, buf: Tensor) -> list[Tensor]:
        """The leaves of a received message (views into ``buf``)."""
        if self.single:
            return [buf]
        offsets = self._offsets
        out = []
        for s, d, at in zip(self.shapes, self.dtypes, offsets, strict=False):
            n = math.prod(s) * d.itemsize
            out.append(buf[at:at + n].view(d).view(s))
        return out

    def tree(self, flat: list[Tensor]) -> Tree:
        return pytree.tree_unflatten(flat, self.spec)

    def _check(self, flat: list[Tensor]) -> None:
        got = tuple((tuple(t.shape), t.dtype) for t in flat)
        want = tuple(zip(self.shapes, self.dtypes, strict=True))
        if got != want:
            raise RuntimeError(f"stage boundary mismatch: the layer gave {_show(got)}, the "
                               f"boundary expects {_show(want)}")


def _show(items: tuple[tuple[tuple[int, ...], torch.dtype], ...]) -> str:
    return ", ".join(f"{str(d).removeprefix('torch.')}{list(s)}" for s, d in items)
