"""Synchronous 1F1B over several chunks per stage: the frame interleaved-1f1b and hanayo share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipewave.service.schedules.schedule import Schedule, place
from pipewave.workers.actions import Action, Kind
from pipewave.workers.placement import Placement

Item = tuple[int, int]  # (chunk, microbatch within the step)


def order_1f1b_items(
    forwards: Sequence[Item], backwards: Sequence[Item], warmup: int
) -> list[tuple[Kind, Item]]:
    """``warmup`` forwards, then alternately one backward and one forward, then the backwards left."""
    warmup = max(1, min(warmup, len(forwards)))
    order: list[tuple[Kind, Item]] = [(Kind.F, x) for x in forwards[:warmup]]
    for i, x in enumerate(backwards):
        order.append((Kind.B, x))
        if warmup + i < len(forwards):
            order.append((Kind.F, forwards[warmup + i]))
    return order


def flushed_chunks(
    name: str,
    placement: Placement,
    num_microbatches: int,
    num_steps: int,
    forwards: Callable[[int], Sequence[Item]],
    backwards: Callable[[int], Sequence[Item]],
    warmup: Callable[[int], int],
) -> Schedule:
    """Steps back to back with a flush between them. Per step, stage s runs its (chunk, microbatch)
    forwards in the order ``forwards(s)`` and its backwards in the order ``backwards(s)``, 1F1B
    after ``warmup(s)`` forwards; step t computes with version t and the stage's last backward of
    the step carries its one optimizer update (gradients accumulated over all its chunks)."""
    M = num_microbatches
    orders: dict[int, list[Action]] = {}
    for s in range(placement.num_workers):
        steady = order_1f1b_items(forwards(s), backwards(s), warmup(s))
        last = steady[-1]
        order: list[Action] = []
        for t in range(num_steps):
            order += [
                Action(s, kind, t * M + m, t, (kind, (c, m)) == last, c) for kind, (c, m) in steady
            ]
        orders[s] = order
    return place(name, placement.num_workers, M, num_steps, orders, placement=placement)
