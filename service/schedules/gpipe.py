"""GPipe: per step, all forwards then all backwards, one optimizer step at the step's end."""

from __future__ import annotations

from service.schedules.action import Action, Kind
from service.schedules.schedule import Schedule, place


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1) -> Schedule:
    """Steps run back to back with a flush between them; step t computes with version t."""
    m_per_step = num_microbatches
    orders: dict[int, list[Action]] = {}
    for s in range(num_stages):
        order: list[Action] = []
        for t in range(num_steps):
            mbs = range(t * m_per_step, (t + 1) * m_per_step)
            order += [Action(s, Kind.F, m, t) for m in mbs]
            order += [Action(s, Kind.B, m, t, m == mbs[-1]) for m in mbs]
        orders[s] = order
    return place("gpipe", num_stages, num_microbatches, num_steps, orders)
