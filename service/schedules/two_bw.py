"""PipeDream-2BW: continuous 1F1B, one optimizer step per step, double-buffered weights."""

from __future__ import annotations

from pipewave.service.schedules.one_f_one_b import order_1f1b
from pipewave.service.schedules.schedule import Schedule, place
from pipewave.workers.actions import Action, Kind


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1) -> Schedule:
    """Step t computes with version t - 1, so W(t+1) = W(t) - lr * grad(W(t-1)).

    Version -1 is the version before the schedule's start. The warmup is capped at M + 1 so that
    step t+1's first forward comes after the update (ending step t-1) that produced version t.
    """
    m_per_step = num_microbatches
    total = num_steps * m_per_step
    orders: dict[int, list[Action]] = {}
    for s in range(num_stages):
        warmup = min(num_stages - s, m_per_step + 1, total)
        orders[s] = []
        for kind, m in order_1f1b(range(total), warmup):
            step_end = kind is Kind.B and m % m_per_step == m_per_step - 1
            orders[s].append(Action(s, kind, m, m // m_per_step - 1, step_end))
    return place("2bw", num_stages, num_microbatches, num_steps, orders, carry_versions=2)
