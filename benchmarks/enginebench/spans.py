"""Figures from a pipewave run's measured spans (per stage, (Action, start, end)) and from a
simulation's: bubbles over the measured window, per virtual stage costs, the time profile per
worker, idle-when-ready gaps and the worker-to-worker latency."""

from __future__ import annotations

import os
import statistics
from typing import Any


def window_edges(spans: list[list[Any]], M: int, first_step: int) -> tuple[float, float]:
    """(start, end) of the steps from ``first_step`` on: from the end of step ``first_step - 1``
    (the first action's start for step 0) to the end of the last step; a step ends when its last
    action (on any stage) ends. ``spans[s]`` is stage s's list of (Action, start, end)."""
    ends: dict[int, float] = {}
    for stage in spans:
        for a, _, t1 in stage:
            k = a.microbatch // M
            ends[k] = max(ends.get(k, t1), t1)
    last = max(ends)
    if first_step > last:
        raise ValueError("no steps after the warm-up")
    start = ends[first_step - 1] if first_step > 0 else min(t0 for st in spans for _, t0, _ in st)
    return start, ends[last]


def window_bubble(spans: list[list[Any]], M: int, first_step: int) -> list[float]:
    """Per stage, idle / wall over the steps from ``first_step`` on (see ``window_edges``); each
    action's busy time counts to its microbatch's step. The same definition serves measured and
    simulated spans."""
    start, end = window_edges(spans, M, first_step)
    wall = end - start
    out = []
    for stage in spans:
        busy = sum(t1 - t0 for a, t0, t1 in stage if a.microbatch // M >= first_step)
        out.append(max(0.0, 1 - busy / wall))
    return out


def virtual_costs(reports: list[Any], placement: Any, M: int, first_step: int,
                   update_s: tuple[float, ...]) -> dict[str, list[float]]:
    """Per virtual stage (model chunk; the stage itself with one chunk per stage), the mean forward
    and backward over the measured steps: wall seconds (``forward``, ``backward``: the backward
    without the optimizer step, whose mean is ``update_s``) and work seconds (``forward_cpu``,
    ``backward_cpu``: the stage's CPU time, the backwards carrying an update left out)."""
    from pipewave.service.schedules import Kind

    n = placement.num_virtual_stages
    acc: dict[str, list[list[float]]] = {
        k: [[] for _ in range(n)] for k in ("forward", "backward", "forward_cpu", "backward_cpu")}
    for r in reports:
        for i, (a, t0, t1) in enumerate(r.spans):
            if a.microbatch // M < first_step:
                continue
            v = placement.virtual(r.stage, a.chunk)
            cpu = r.cpu_s[i] if i < len(r.cpu_s) else None
            if a.kind is Kind.F:
                acc["forward"][v].append(t1 - t0)
                if cpu is not None:
                    acc["forward_cpu"][v].append(cpu)
            else:
                acc["backward"][v].append(t1 - t0 - (update_s[r.stage] if a.update else 0.0))
                if cpu is not None and not a.update:
                    acc["backward_cpu"][v].append(cpu)
    return {k: [sum(x) / len(x) if x else 0.0 for x in rows] for k, rows in acc.items()}


def worker_profile(reports: list[Any], placement: Any, sched_placement: Any, M: int, first_step: int,
             steps: int, update_s: tuple[float, ...], vc: dict[str, list[float]]) -> dict[str, Any]:
    """Where each worker's wall time goes over the measured steps, per step (ms): busy (its
    spans: compute, posting sends, the optimizer step), of which the optimizer step, and idle,
    split into idle when ready (the inputs of its next action had been produced on the other
    worker: transfer latency plus the engine's per-action overhead between spans) and waiting (for
    inputs not produced yet: the schedule's bubble, imbalance, the drain). Plus per chunk costs,
    each worker's work per microbatch over its chunks, the transfers the placement implies, and
    how busy the machine's cores were (CPU seconds of all workers' spans / (window x cores))."""
    spans = [r.spans for r in reports]
    start, end = window_edges(spans, M, first_step)
    wall = end - start
    P = len(reports)
    made: dict[Any, float] = {}  # when each action's output left its worker
    for r in reports:
        for a, _, t1 in r.spans:
            made[a.key] = t1 - (update_s[r.stage] if a.update else 0.0)  # gradients leave first
    busy, cpu, ready_idle, upd = [0.0] * P, [0.0] * P, [0.0] * P, [0.0] * P
    for r in reports:
        w, prev = r.stage, start
        for i, (a, t0, t1) in enumerate(r.spans):
            if a.microbatch // M < first_step:
                prev = max(prev, t1)
                continue
            ready = max([prev] + [made[d] for d in a.dependencies(P, sched_placement) if d[0] != w])
            ready_idle[w] += max(0.0, t0 - ready)
            busy[w] += t1 - t0
            cpu[w] += r.cpu_s[i] if i < len(r.cpu_s) else 0.0
            upd[w] += update_s[w] if a.update else 0.0
            prev = t1
    n = placement.num_virtual_stages
    cross = sum(1 for v in range(1, n) if placement.locate(v - 1)[0] != placement.locate(v)[0])
    work = [sum(vc["forward"][v] + vc["backward"][v] for v in placement.workers[w]) for w in range(P)]
    work_cpu = [sum(vc["forward_cpu"][v] + vc["backward_cpu"][v] for v in placement.workers[w])
                for w in range(P)]
    ms = 1e3 / steps
    return {
        "placement": [list(ws) for ws in placement.workers],
        "window_ms_per_step": wall * ms,
        "virtual_ms": {k: [1e3 * x for x in xs] for k, xs in vc.items()},
        "work_ms_per_mb": [1e3 * x for x in work],
        "work_cpu_ms_per_mb": [1e3 * x for x in work_cpu],
        "busy_ms_per_step": [x * ms for x in busy],
        "cpu_ms_per_step": [x * ms for x in cpu],
        "update_ms_per_step": [x * ms for x in upd],
        "idle_ready_ms_per_step": [x * ms for x in ready_idle],
        "idle_wait_ms_per_step": [max(0.0, wall - b - g) * ms for b, g in zip(busy, ready_idle, strict=True)],
        "transfers_per_step": 2 * cross * M,  # activations and gradients between different workers
        "local_handovers_per_step": 2 * (n - 1 - cross) * M,  # between chunks on one worker
        "cores_busy": sum(cpu) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0,
    }


def ready_gaps(reports: list[Any], update_s: tuple[float, ...], sched_placement: Any = None
                ) -> list[float]:
    """Per stage, the fraction of the run's wall time the stage sat idle although its next action's
    inputs had already been produced (transfer latency plus the engine's own per-action overhead:
    the part of the measured bubble a cost-only simulation cannot see). ``sched_placement``: the
    schedule's chunk placement (None: one chunk per stage)."""
    made: dict[Any, float] = {}  # when each action's output left its stage
    for r in reports:
        for a, _, t1 in r.spans:
            made[a.key] = t1 - (update_s[r.stage] if a.update else 0.0)  # gradients leave first
    begin = min(r.spans[0][1] for r in reports if r.spans)
    end = max(r.spans[-1][2] for r in reports if r.spans)
    S = len(reports)
    out = []
    for r in reports:
        prev, gap = begin, 0.0
        for a, t0, t1 in r.spans:
            ready = max([prev] + [made[d] for d in a.dependencies(S, sched_placement)
                                  if d[0] != r.stage])
            gap += max(0.0, t0 - ready)
            prev = t1
        out.append(gap / (end - begin) if end > begin else 0.0)
    return out


def estimate_comm(reports: list[Any], placement: Any) -> float:
    """Median worker-to-worker activation latency: from the end of the forward of virtual stage
    v-1 on one worker to the start of virtual stage v's on another, over the forwards the
    receiving worker was idle waiting for (a wave's turn, two chunks on one worker, is no hop)."""
    from pipewave.service.schedules import Kind

    ends: dict[tuple[int, int], float] = {}  # (virtual stage, microbatch) -> end of its forward
    for r in reports:
        for a, _, t1 in r.spans:
            if a.kind is Kind.F:
                ends[(placement.virtual(r.stage, a.chunk), a.microbatch)] = t1
    samples = []
    for r in reports:
        prev_end = float("-inf")
        for a, t0, t1 in r.spans:
            if a.kind is Kind.F:
                v = placement.virtual(r.stage, a.chunk)
                if v > 0 and placement.locate(v - 1)[0] != r.stage:
                    sent = ends[(v - 1, a.microbatch)]
                    if prev_end <= sent:  # the worker was free before the activation left: it waited
                        samples.append(t0 - sent)
            prev_end = t1
    return max(0.0, statistics.median(samples)) if samples else 0.0
