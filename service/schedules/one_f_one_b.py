"""1F1B with a flush per step (PipeDream-Flush), and the 1F1B order the async schedules share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipewave.service.schedules.schedule import Schedule, place
from pipewave.workers.actions import Action, Kind


def order_1f1b(microbatches: Sequence[int], warmup: int) -> list[tuple[Kind, int]]:
    """``warmup`` forwards, then alternately one backward and one forward, then the rest."""
    order = [(Kind.F, m) for m in microbatches[:warmup]]
    for i, m in enumerate(microbatches):
        order.append((Kind.B, m))
        if warmup + i < len(microbatches):
            order.append((Kind.F, microbatches[warmup + i]))
    return order


def flushed(name: str, num_stages: int, num_microbatches: int, num_steps: int,
            warmup: Callable[[int], int]) -> Schedule:
    """Steps back to back with a flush between them; stage s warms up with ``warmup(s)``
    forwards per step; step t computes with version t and updates after its last backward."""
    M = num_microbatches
    orders: dict[int, list[Action]] = {}
    for s in range(num_stages):
        order: list[Action] = []
        for t in range(num_steps):
            mbs = range(t * M, (t + 1) * M)
            order += [
                Action(s, kind, m, t, kind is Kind.B and m == mbs[-1])
                for kind, m in order_1f1b(mbs, warmup(s))
            ]
        orders[s] = order
    return place(name, num_stages, num_microbatches, num_steps, orders)


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1) -> Schedule:
    """Stage s warms up with min(S - s, M) forwards per step; step t computes with version t."""
    return flushed("1f1b", num_stages, num_microbatches, num_steps,
                   lambda s: min(num_stages - s, num_microbatches))
