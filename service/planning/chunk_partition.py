"""Partitioning for schedules with several chunks per stage worker (interleaved-1f1b, hanayo).

Pure, like ``partition.plan``. The model is cut into ``N = P x V`` contiguous chunks (virtual
stages); the schedule's placement fixes which worker runs each, so the only choice is the cuts.
``plan_chunked`` finds the cuts that minimise the bottleneck chunk time per microbatch (its
compute / its worker's speed + what it sends to a chunk on another worker: consecutive chunks on
one worker, at a wave's turn, hand over in memory), ties broken by least total time; a dynamic
program over (chunk, layers covered), O(N x L^2).

Memory: a worker holds its chunks' parameters (x the weight versions, optimizer state and a
gradient) and, at the schedule's simulated peak, ``peak_activation_memory`` microbatches' worth
of its chunks' activations. Each chunk must fit ``1 / V`` of its worker's budget: sufficient
for the worker's total to fit, and exact when the chunks are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from math import inf

from pipewave.service.planning.partition import (
    OPTIMIZER_STATE,
    InfeasibleError,
    LayerCost,
    Link,
    Plan,
    Slot,
    StagePlan,
    _fmt_bytes,
)
from pipewave.service.schedules import Placement, make_schedule, simulate


@lru_cache(maxsize=256)
def chunked_peaks(schedule: str, num_stages: int, microbatches: int, chunks: int | None,
                  waves: int | None) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(peak activation memory in microbatches of the worker's share, weight versions) per
    worker, simulated for one step (these schedules flush every step)."""
    sched = make_schedule(schedule, num_stages, microbatches, 1, chunks=chunks, waves=waves)
    result = simulate(sched)
    return result.peak_activation_memory, result.peak_versions


def plan_chunked(
    layers: Sequence[LayerCost],
    slots: Sequence[Slot],
    schedule: str,
    microbatches: int,
    placement: Placement,
    optimizer: str = "adam",
    link: Link = Link(),
    *,
    chunks: int | None = None,
    waves: int | None = None,
) -> Plan:
    """The bottleneck-optimal cuts of ``layers`` into the placement's chunks; worker w runs on
    ``slots[w]`` after sorting the slots fastest (then largest budget) first."""
    P, V, N, n = placement.num_workers, placement.chunks_per_worker, placement.num_virtual_stages, len(layers)
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATE)}")
    if len(slots) < P:
        raise InfeasibleError(f"{P} stages need {P} slots, only {len(slots)} given")
    if n < N:
        raise InfeasibleError(f"{schedule} on {P} stages needs {N} chunks ({V} per stage), the model "
                              f"has {n} layers")
    if any(slot.speed <= 0 for slot in slots) or link.bandwidth_bytes_s <= 0:
        raise ValueError("slot speeds and link bandwidth must be > 0")
    def rank(sl: Slot) -> tuple[float, float]:
        return -sl.speed, -inf if sl.memory_bytes is None else -sl.memory_bytes

    chosen = sorted(slots, key=rank)[:P]
    acts, versions = chunked_peaks(schedule, P, microbatches, chunks, waves)
    worker = [placement.locate(v)[0] for v in range(N)]
    work, params, actb = [0.0], [0], [0]
    for c in layers:
        work.append(work[-1] + c.forward_s + c.backward_s)
        params.append(params[-1] + c.param_bytes)
        actb.append(actb[-1] + c.activation_bytes)

    def memory(v: int, a: int, b: int) -> float:
        w = worker[v]
        per_param = versions[w] + OPTIMIZER_STATE[optimizer] + 1
        return (params[b] - params[a]) * per_param + (actb[b] - actb[a]) * acts[w]

    def hop(v: int, other: int, out_bytes: int) -> float:
        if not 0 <= other < N or worker[other] == worker[v]:
            return 0.0
        return link.latency_s + out_bytes / link.bandwidth_bytes_s

    def cost(v: int, a: int, b: int) -> tuple[float, float]:
        w = worker[v]
        send = hop(v, v + 1, layers[b - 1].output_bytes) + (hop(v, v - 1, layers[a - 1].output_bytes)
                                                               if a > 0 else 0.0)
        return (work[b] - work[a]) / chosen[w].speed, send

    def fits(v: int, a: int, b: int) -> bool:
        budget = chosen[worker[v]].memory_bytes
        return budget is None or memory(v, a, b) <= budget / V

    def search(cap: float, minmax: bool) -> tuple[float, list[int]]:
        best = [[inf] * (n + 1) for _ in range(N + 1)]
        parent = [[-1] * (n + 1) for _ in range(N + 1)]
        best[0][0] = 0.0
        for v in range(N):
            for a in range(v, n - (N - v) + 1):
                g = best[v][a]
                if g == inf:
                    continue
                top = n if v == N - 1 else n - (N - v - 1)
                for b in range(a + 1 if v < N - 1 else n, top + 1):
                    if not fits(v, a, b):
                        break
                    comp, send = cost(v, a, b)
                    c = comp + send
                    if c > cap:
                        continue
                    val = max(g, c) if minmax else g + c
                    if val < best[v + 1][b]:
                        best[v + 1][b], parent[v + 1][b] = val, a
        if best[N][n] == inf:
            return inf, []
        cuts, b = [n], n
        for v in range(N, 0, -1):
            b = parent[v][b]
            cuts.append(b)
        return best[N][n], cuts[::-1]

    bottleneck, _ = search(inf, minmax=True)
    if bottleneck == inf:
        budgets = ", ".join(_fmt_bytes(sl.memory_bytes) for sl in chosen if sl.memory_bytes is not None)
        raise InfeasibleError(f"no cut of {n} layers into {N} chunks on {P} stages fits the memory "
                              f"budgets under {schedule} with {optimizer} (budgets: {budgets})")
    _, cuts = search(bottleneck * (1 + 1e-12), minmax=False)
    stages = []
    for v in range(N):
        a, b = cuts[v], cuts[v + 1]
        comp, send = cost(v, a, b)
        w = worker[v]
        budget = chosen[w].memory_bytes
        grown = [(a - 1, b)] * (a > 0) + [(a, b + 1)] * (b < n)
        tight = budget is not None and bool(grown) and all(memory(v, x, y) > budget / V for x, y in grown)
        stages.append(StagePlan(v, (a, b), chosen[w].node_id, comp, send, round(memory(v, a, b)),
                                "memory" if tight else "send" if send > comp else "compute"))
    worst = max(stages, key=lambda sp: sp.compute_s + sp.send_s)
    w = worker[worst.stage]
    reason = (f"chunk {worst.stage} (stage {w}) on {worst.node_id} is the bottleneck: "
              f"{worst.compute_s:.4g} s compute + {worst.send_s:.4g} s send per microbatch; "
              f"{V} chunks per stage under {schedule}")
    return Plan(tuple(stages), bottleneck, reason, placement)
