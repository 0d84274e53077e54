"""A stage's exported state (payloads), independent of the stage's layout: every tensor is keyed
by its global parameter name, so a new layout (other cuts, other chunks) takes what it holds from
whichever payloads cover its layers. Also the process's heap policy (``keep_freed_memory``)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

Chunks = tuple[tuple[int, int], ...]  # [start, end) layer ranges, one per chunk, in chunk order


def payload_chunks(state: dict[str, Any]) -> Chunks:
    """The layer ranges a payload (or a checkpoint manifest's stage entry) holds; payloads from
    before chunks existed name one range, ``layers``."""
    ranges = state.get("chunks") or [state["layers"]]
    return tuple((int(a), int(b)) for a, b in ranges)


def overlaps(ours: Sequence[tuple[int, int]], theirs: Sequence[tuple[int, int]]) -> bool:
    """Whether any range of ``ours`` shares a layer with any of ``theirs``."""
    return any(a < d and b > c for a, b in ours for c, d in theirs)


def hull(chunks: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The smallest range covering all chunks (a display figure: chunks need not be adjacent)."""
    return min(a for a, _ in chunks), max(b for _, b in chunks)


def describe(chunks: Sequence[tuple[int, int]]) -> str:
    """``2-4`` for one chunk, ``0-1+6-7`` for several (inclusive layer indices)."""
    return "+".join(f"{a}-{b - 1}" for a, b in chunks)


def merge_payloads(payloads: list[dict[str, Any]], chunks: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """The union of the stage payloads that hold any layer of ``chunks``: model, older versions
    and optimizer state, each a dict keyed by parameter name. They must agree on the version
    (taken when every stage has applied the same updates: a drained pipeline)."""
    merged: dict[str, Any] = {"model": {}, "older_versions": {}, "optimizer": {}}
    latest: int | None = None
    for state in payloads:
        if not overlaps(chunks, payload_chunks(state)):
            continue
        if latest is not None and int(state["latest_version"]) != latest:
            raise ValueError(f"stage {state['stage']} is at weight version "
                             f"{state['latest_version']}, other stages at {latest}")
        latest = int(state["latest_version"])
        merged["model"].update(state["model"])
        for off, d in state["older_versions"].items():
            merged["older_versions"].setdefault(int(off), {}).update(d)
        for k, v in state["optimizer"].items():
            if isinstance(v, dict):
                merged["optimizer"].setdefault(k, {}).update(v)
            else:
                merged["optimizer"][k] = v
    if latest is None:
        raise ValueError(f"no stage state holds layers {describe(chunks)}")
    merged["latest_version"] = latest
    return merged


def save_stage_file(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def keep_freed_memory() -> None:
    """Keep freed heap memory in the process instead of returning it to the OS (glibc only).

    Every microbatch allocates and frees the same large tensors (activations, gradients, a new
    weight version); with glibc's defaults, blocks this large are mmap'ed and unmapped each time,
    so every reuse page-faults its memory back in. Measured here: a 5-layer GPT stage's
    forward + backward is about 3.5% faster with the heap kept.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: serve blocks up to 32 MiB from the heap
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: return heap memory only past 1 GiB free
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        logger.debug("mallopt unavailable", exc_info=True)
