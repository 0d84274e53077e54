"""Asynchronous PipeDream: one continuous 1F1B, an optimizer step after every backward."""

from __future__ import annotations

from pipewave.service.schedules.one_f_one_b import order_1f1b
from pipewave.service.schedules.schedule import Schedule, place
from pipewave.workers.actions import Action, Kind


def generate(
    num_stages: int, num_microbatches: int, num_steps: int = 1, *, vertical_sync: bool = False
) -> Schedule:
    """Weight stashing: F(m) uses the stage's latest version, B(m) the version F(m) used.

    With ``vertical_sync`` every stage uses, for microbatch m, the version stage 0 used for it.
    """
    total = num_steps * num_microbatches
    orders: dict[int, list[Action]] = {}
    stage0: dict[int, int] = {}
    for s in range(num_stages):
        updates = 0
        version: dict[int, int] = {}
        order: list[Action] = []
        for kind, m in order_1f1b(range(total), min(num_stages - s, total)):
            if kind is Kind.F:
                version[m] = stage0[m] if vertical_sync and s > 0 else updates
            order.append(Action(s, kind, m, version[m], kind is Kind.B))
            updates += kind is Kind.B
        if s == 0:
            stage0 = version
        orders[s] = order
    return place(
        "pipedream", num_stages, num_microbatches, num_steps, orders, vertical_sync=vertical_sync
    )
