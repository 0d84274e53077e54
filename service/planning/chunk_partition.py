"""Partitioning for schedules with several chunks per stage worker (interleaved-1f1b, hanayo).

Pure, like ``partition.plan``. The model is cut into ``N = P x V`` contiguous chunks (virtual
stages); the schedule's placement fixes which worker runs each, so the only choice is the cuts.
``plan_chunked`` finds the cuts that minimise the bottleneck chunk time per microbatch (its
compute / its worker's speed + what it sends to a chunk on another worker: consecutive chunks on
one worker, at a wave's turn, hand over in memory), ties broken by least total time; a dynamic
program over (chunk, layers covered), O(N x L^2).

Costs are ``cost.CostModel``'s, as for ``partition.plan``. Memory: a worker holds its chunks'
parameters (x the weight versions, optimizer state and a gradient) and, at the schedule's
simulated peak, ``peak_activation_memory`` microbatches' worth of its chunks' activations. Each
chunk must fit ``1 / V`` of its worker's budget: sufficient for the worker's total to fit, and
exact when the chunks are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import inf

from pipewave.service.planning.cost import (
    CostModel,
    LayerCost,
    Link,
    Peak,
    check_optimizer,
    chunked_peaks,
    fmt_bytes,
)
from pipewave.service.planning.partition import InfeasibleError, Plan, Slot, StagePlan
from pipewave.service.schedules import Placement


class _Chunks:
    """The cost of each chunk v's range [a, b) on its worker's slot (``cost.CostModel``): sends
    only to a chunk on another worker; memory within ``1 / V`` of the worker's budget."""

    def __init__(self, model: CostModel, placement: Placement, slots: Sequence[Slot],
                 peaks: Sequence[Peak]) -> None:
        self.model, self.slots, self.peaks = model, slots, peaks
        self.count, self.share = placement.num_virtual_stages, placement.chunks_per_worker
        self.worker = [placement.locate(v)[0] for v in range(self.count)]

    def _apart(self, v: int, other: int) -> bool:
        return 0 <= other < self.count and self.worker[other] != self.worker[v]

    def cost(self, v: int, a: int, b: int) -> tuple[float, float]:
        """(compute, send) seconds per microbatch."""
        send = self.model.send(a, b, self._apart(v, v + 1), self._apart(v, v - 1))
        return self.model.compute(a, b, self.slots[self.worker[v]].speed), send

    def memory(self, v: int, a: int, b: int) -> float:
        return self.model.memory(a, b, self.peaks[self.worker[v]])

    def budget(self, v: int) -> float | None:
        budget = self.slots[self.worker[v]].memory_bytes
        return None if budget is None else budget / self.share

    def fits(self, v: int, a: int, b: int) -> bool:
        budget = self.budget(v)
        return budget is None or self.memory(v, a, b) <= budget

    def search(self, cap: float, minmax: bool) -> tuple[float, list[int]]:
        """DP over (chunk, layers covered). ``minmax``: minimise the bottleneck, else the total
        time with every chunk <= cap. Returns (value, cuts: N + 1 layer indices) or (inf, [])."""
        N, n = self.count, self.model.n
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
                    if not self.fits(v, a, b):
                        break
                    comp, send = self.cost(v, a, b)
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

    def stage(self, v: int, a: int, b: int) -> StagePlan:
        comp, send = self.cost(v, a, b)
        peak = self.peaks[self.worker[v]]
        limited_by = self.model.limited_by(a, b, peak, self.budget(v), comp, send)
        return StagePlan(v, (a, b), self.slots[self.worker[v]].node_id, comp, send,
                         round(self.memory(v, a, b)), limited_by)


def _rank(slot: Slot) -> tuple[float, float]:
    """Fastest first, then the largest budget (unlimited first)."""
    return -slot.speed, -inf if slot.memory_bytes is None else -slot.memory_bytes


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
    check_optimizer(optimizer)
    if len(slots) < P:
        raise InfeasibleError(f"{P} stages need {P} slots, only {len(slots)} given")
    if n < N:
        raise InfeasibleError(f"{schedule} on {P} stages needs {N} chunks ({V} per stage), the model "
                              f"has {n} layers")
    if any(slot.speed <= 0 for slot in slots) or link.bandwidth_bytes_s <= 0:
        raise ValueError("slot speeds and link bandwidth must be > 0")
    chosen = sorted(slots, key=_rank)[:P]
    peaks = chunked_peaks(schedule, P, microbatches, chunks, waves)
    model = _Chunks(CostModel(layers, optimizer, link), placement, chosen, peaks)
    bottleneck, _ = model.search(inf, minmax=True)
    if bottleneck == inf:
        budgets = ", ".join(fmt_bytes(sl.memory_bytes) for sl in chosen if sl.memory_bytes is not None)
        raise InfeasibleError(f"no cut of {n} layers into {N} chunks on {P} stages fits the memory "
                              f"budgets under {schedule} with {optimizer} (budgets: {budgets})")
    _, cuts = model.search(bottleneck * (1 + 1e-12), minmax=False)
    stages = [model.stage(v, cuts[v], cuts[v + 1]) for v in range(N)]
    worst = max(stages, key=lambda sp: sp.compute_s + sp.send_s)
    reason = (f"chunk {worst.stage} (stage {model.worker[worst.stage]}) on {worst.node_id} is the "
              f"bottleneck: {worst.compute_s:.4g} s compute + {worst.send_s:.4g} s send per "
              f"microbatch; {V} chunks per stage under {schedule}")
    return Plan(tuple(stages), bottleneck, reason, placement)
