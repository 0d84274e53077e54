"""1F1B with a flush per step (PipeDream-Flush), and the 1F1B order the async schedules share."""

from __future__ import annotations

from collections.abc import Sequence

from service.schedules.action import Action, Kind
from service.schedules.schedule import Schedule, place


def order_1f1b(microbatches: Sequence[int], warmup: int) -> list[tuple[Kind, int]]:
    """``warmup`` forwards, then alternately one backward and one forward, then the rest."""
    order = [(Kind.F, m) for m in microbatches[:warmup]]
    for i, m in enumerate(microbatches):
        order.append((Kind.B, m))
        if warmup + i < len(microbatches):
            order.append((Kind.F, microbatches[warmup + i]))
    return order


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1) -> Schedule:
    """Stage s warms up with min(S - s, M) forwards per step; step t computes with version t."""
    m_per_step = num_microbatches
    orders: dict[int, list[Action]] = {}
    for s in range(num_stages):
        order: list[Action] = []
        for t in range(num_steps):
            mbs = range(t * m_per_step, (t + 1) * m_per_step)
            warmup = min(num_stages - s, m_per_step)
            order += [
                Action(s, kind, m, t, kind is Kind.B and m == mbs[-1])
                for kind, m in order_1f1b(mbs, warmup)
            ]
        orders[s] = order
    return place("1f1b", num_stages, num_microbatches, num_steps, orders)
