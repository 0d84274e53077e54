"""Which queued job starts next: FIFO with conservative backfill. A pure function.

The head of the queue starts as soon as the free stage slots cover what it needs. While it
waits, a later job may pass it only if it cannot delay it: the running jobs' expected finish
times give the moment the head will fit (its "shadow" time) and how many slots it leaves spare
then; a later job may start now only within those spare slots (it may still be running then).
A job whose end time is unknown is assumed to run forever, so nothing passes a head that waits
for it except within slots the head will never need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    job_id: str
    need: int  # the fewest stage slots the job can run with


@dataclass(frozen=True)
class Holding:
    job_id: str
    slots: int
    eta_s: float | None  # expected seconds to finish (None: unknown)


@dataclass(frozen=True)
class Start:
    job_id: str
    max_slots: int  # it may use at most this many slots (its planner chooses within)
    reason: str


@dataclass(frozen=True)
class QueueDecision:
    start: Start | None  # at most one job starts at a time: decide again once it is placed
    waiting_reason: dict[str, str]  # queued job -> why it waits


def decide(queue: Sequence[Waiting], free: int, running: Sequence[Holding]) -> QueueDecision:
    if not queue:
        return QueueDecision(None, {})
    head, rest = queue[0], queue[1:]
    if head.need <= free:  # the head may take every free slot: the others wait for its plan
        return QueueDecision(Start(head.job_id, free, f"{free} free slot(s) cover its {head.need}"),
                             {j.job_id: f"behind {head.job_id}" for j in rest})
    spare, shadow = _shadow(head.need, free, running)
    when = "when a running job of unknown length ends" if math.isinf(shadow) else f"in about {shadow:.0f} s"
    if math.isinf(spare):
        when = "only on a bigger cluster"
    why = {head.job_id: f"first in line: needs {head.need} slot(s), {free} free; fits {when}"}
    start: Start | None = None
    for job in rest:
        if start is not None or job.need > free:
            why[job.job_id] = f"needs {job.need} slot(s), {free} free; behind {head.job_id}"
        elif job.need > spare:
            why[job.job_id] = (f"would delay {head.job_id}: {spare} slot(s) spare when it can start, "
                               f"this job needs {job.need}")
        else:
            limit = int(min(free, spare))
            start = Start(job.job_id, limit, f"passes {head.job_id} within {limit} spare slot(s)")
    return QueueDecision(start, why)


def _shadow(need: int, free: int, running: Sequence[Holding]) -> tuple[float, float]:
    """(slots spare when the head can start, seconds until then); spare is inf when the head
    cannot start even after every running job ends (only a bigger cluster helps it)."""
    avail = free
    for job in sorted(running, key=lambda h: math.inf if h.eta_s is None else h.eta_s):
        avail += job.slots
        if avail >= need:
            return avail - need, math.inf if job.eta_s is None else job.eta_s
    return math.inf, math.inf
