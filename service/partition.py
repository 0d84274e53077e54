"""Partitioning: which contiguous layers each stage holds. Pure functions, no Ray, no torch."""

from __future__ import annotations

Partition = tuple[tuple[int, int], ...]  # per stage [start, end) layer indices


def uniform(num_layers: int, num_stages: int) -> Partition:
    """Split layers into contiguous stages of equal count (the first stages take the remainder)."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"cannot cut {num_layers} layers into {num_stages} stages")
    base, extra = divmod(num_layers, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        end = start + base + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return tuple(bounds)
