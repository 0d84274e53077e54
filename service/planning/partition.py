"""Partitioning: which contiguous layers each stage holds. Pure functions, no Ray, no torch.

``uniform`` cuts equal layer counts. ``plan`` finds the exact bottleneck-optimal contiguous split
of measured layers over heterogeneous slots (speed, memory budget) under a pipeline schedule.

Stage time per microbatch = compute / speed + what the stage sends, stage memory under the
schedule: the cost model of ``cost`` (shared with ``chunk_partition``). ``plan`` is a dynamic
program over (slots used per slot type, layers covered): slots of equal speed and budget are
interchangeable, so with V = prod(count_t + 1) type vectors, T types and L layers it costs
O(V * T * L^2) (V <= 2^8 for 8 slots), run three times: least bottleneck, least total time at
that bottleneck (tie-break), bottleneck without budgets (for ``reason``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from math import inf

from pipewave.service.planning.cost import (
    OPTIMIZER_STATE,
    CostModel,
    LayerCost,
    Link,
    Peak,
    fmt_bytes,
    stage_peaks,
)
from pipewave.service.schedules import Placement

__all__ = [
    "OPTIMIZER_STATE",
    "InfeasibleError",
    "LayerCost",
    "Link",
    "Partition",
    "Plan",
    "Slot",
    "StagePlan",
    "plan",
    "uniform",
    "worker_layout",
]

Partition = tuple[tuple[int, int], ...]  # per stage [start, end) layer indices


def uniform(num_layers: int, num_stages: int) -> Partition:
    """Split layers into contiguous stages of equal count (the first stages take the remainder)."""
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"cannot cut {num_layers} layers into {num_stages} stages")
    base, extra = divmod(num_layers, num_stages)
    bounds, start = [], 0
    for s in range(num_stages):
        end = start + base + (1 if s < extra else 0)
        bounds.append((start, end))
        start = end
    return tuple(bounds)


@dataclass(frozen=True)
class Slot:
    """A stage slot on a node: time = reference time / speed; memory budget None = unlimited."""

    node_id: str
    speed: float = 1.0
    memory_bytes: int | None = None


@dataclass(frozen=True)
class StagePlan:
    """``limited_by``: "memory" if the stage cannot take a neighbouring layer within its budget,
    else "send" or "compute", whichever dominates its time (``CostModel.limited_by``)."""

    stage: int
    layers: tuple[int, int]
    node_id: str
    compute_s: float
    send_s: float
    memory_bytes: int
    limited_by: str


@dataclass(frozen=True)
class Plan:
    """``stages``: one per stage, or with several chunks per stage worker (``placement``), one
    per virtual stage (chunk), in model order; ``partition`` is then the chunks' layer ranges."""

    stages: tuple[StagePlan, ...]
    bottleneck_s: float  # max over stages (chunks) of compute + send per microbatch
    reason: str
    placement: Placement | None = None

    @property
    def partition(self) -> Partition:
        return tuple(sp.layers for sp in self.stages)

    @property
    def num_workers(self) -> int:
        return len(self.stages) if self.placement is None else self.placement.num_workers

    def worker_of(self, i: int) -> int:
        """The stage worker holding entry ``i`` of ``stages``."""
        return i if self.placement is None else self.placement.locate(i)[0]

    @property
    def worker_nodes(self) -> list[str]:
        """The node of each stage worker."""
        if self.placement is None:
            return [sp.node_id for sp in self.stages]
        return [self.stages[chunks[0]].node_id for chunks in self.placement.workers]


def worker_layout(partition: Partition, placement: Placement | None) -> tuple[Partition, ...]:
    """Per stage worker, the layer ranges of its chunks: ``partition`` has one range per virtual
    stage (one per worker without a placement)."""
    if placement is None:
        return tuple((b,) for b in partition)
    if len(partition) != placement.num_virtual_stages:
        raise ValueError(f"{len(partition)} layer ranges for {placement.num_virtual_stages} chunks")
    return tuple(tuple(partition[v] for v in chunks) for chunks in placement.workers)


class InfeasibleError(ValueError):
    """No partition fits; the message says why."""


_Type = tuple[float, int | None, list[str]]  # speed, budget, node ids of interchangeable slots


def _search(
    model: CostModel, peaks: Sequence[Peak], types: list[_Type], num_stages: int, cap: float,
    minmax: bool, use_memory: bool,
) -> tuple[float, list[tuple[int, int, int]]]:
    """DP over (slots used per type, layers covered). ``minmax``: minimise the bottleneck, else the
    total time with every stage <= cap. Returns (value, [(start, end, type)]) or (inf, [])."""
    n, S = model.n, num_stages
    caps = [len(t[2]) for t in types]
    vecs = sorted((v for v in itertools.product(*(range(c + 1) for c in caps)) if sum(v) <= S), key=sum)
    best = {v: [inf] * (n + 1) for v in vecs}
    parent: dict[tuple[int, ...], list[tuple[int, int]]] = {v: [(-1, -1)] * (n + 1) for v in vecs}
    best[vecs[0]][0] = 0.0
    send = [[model.send(a, b) if a < b else 0.0 for b in range(n + 1)] for a in range(n + 1)]
    work = model.work
    for vec in vecs:
        s = sum(vec)
        if s == S:
            continue
        row, last = best[vec], n - (S - s - 1)  # leave a layer for each later stage
        for k, (speed, budget, _) in enumerate(types):
            if vec[k] == caps[k]:
                continue
            nvec = (*vec[:k], vec[k] + 1, *vec[k + 1 :])
            nrow, npar = best[nvec], parent[nvec]
            fits = model.fits(peaks[s], budget if use_memory else None)
            for a in range(s, last):
                g = row[a]
                if g == inf or (minmax and g > cap):
                    continue
                srow, start = send[a], work[a]
                for b in range(a + 1, min(last, fits[a]) + 1):
                    comp = (work[b] - start) / speed
                    if comp > cap:
                        break
                    c = comp + srow[b]
                    if c > cap:
                        continue
                    v = (g if g > c else c) if minmax else g + c
                    if v < nrow[b]:
                        nrow[b], npar[b] = v, (a, k)
    finals = [v for v in vecs if sum(v) == S and best[v][n] < inf]
    if not finals:
        return inf, []
    vec = min(finals, key=lambda v: best[v][n])
    value, b, stages = best[vec][n], n, []
    while b > 0:
        a, k = parent[vec][b]
        stages.append((a, b, k))
        vec, b = (*vec[:k], vec[k] - 1, *vec[k + 1 :]), a
    return value, stages[::-1]


def plan(
    layers: Sequence[LayerCost],
    slots: Sequence[Slot],
    schedule: str,
    microbatches: int,
    optimizer: str = "adam",
    link: Link = Link(),
    num_stages: int | None = None,
) -> Plan:
    """Exact contiguous partition into ``num_stages`` (default: one per slot) and slot assignment
    minimising the bottleneck stage time per microbatch (compute / speed + what the stage sends),
    with every stage's memory under the schedule within its slot's budget. Ties: least total time.
    """
    count, n = len(slots) if num_stages is None else num_stages, len(layers)
    if count < 1:
        raise ValueError(f"num_stages must be >= 1, got {count}")
    if count > len(slots):
        raise InfeasibleError(f"{count} stages need {count} slots, only {len(slots)} given")
    if count > n:
        raise InfeasibleError(f"cannot cut {n} layers into {count} stages: each stage needs a layer")
    if any(slot.speed <= 0 for slot in slots) or link.bandwidth_bytes_s <= 0:
        raise ValueError("slot speeds and link bandwidth must be > 0")
    model = CostModel(layers, optimizer, link)
    peaks = stage_peaks(schedule, count, microbatches)
    groups: dict[tuple[float, int | None], list[str]] = {}
    for slot in slots:
        groups.setdefault((slot.speed, slot.memory_bytes), []).append(slot.node_id)
    order = sorted(groups, key=lambda t: (-t[0], -inf if t[1] is None else -t[1]))
    types: list[_Type] = [(speed, budget, groups[speed, budget]) for speed, budget in order]
    budgets = [t[1] for t in types]
    largest = inf if None in budgets else max(b for b in budgets if b is not None)
    for i in range(n):  # a layer too big for every budget, wherever it sits
        need = min(model.memory(i, i + 1, peaks[s])
                   for s in range(max(0, i - n + count), min(i, count - 1) + 1))
        if need > largest:
            raise InfeasibleError(
                f"layer {i} needs {fmt_bytes(need)} under {schedule} with "
                f"{optimizer}, the largest budget is {fmt_bytes(largest)}"
            )
    bottleneck, _ = _search(model, peaks, types, count, inf, minmax=True, use_memory=True)
    if bottleneck == inf:
        raise InfeasibleError(
            f"no split of {n} layers into {count} stages fits the memory budgets under {schedule} with "
            f"{optimizer} (budgets: {', '.join(fmt_bytes(b) for b in budgets if b is not None)})"
        )
    _, chosen = _search(model, peaks, types, count, bottleneck, minmax=False, use_memory=True)
    unlimited = all(b is None for b in budgets)
    free = bottleneck if unlimited else _search(model, peaks, types, count, bottleneck, True, False)[0]
    nodes = [iter(t[2]) for t in types]  # equal slots take stages in the callers' order
    stages = [_stage(model, peaks[s], s, a, b, types[k], next(nodes[k]))
              for s, (a, b, k) in enumerate(chosen)]
    return Plan(tuple(stages), bottleneck, _reason(stages, bottleneck, free, budgets))


def _stage(model: CostModel, peak: Peak, s: int, a: int, b: int, kind: _Type, node_id: str) -> StagePlan:
    speed, budget, _ = kind
    compute, send = model.compute(a, b, speed), model.send(a, b)
    limited_by = model.limited_by(a, b, peak, budget, compute, send)
    return StagePlan(s, (a, b), node_id, compute, send, round(model.memory(a, b, peak)), limited_by)


def _reason(stages: list[StagePlan], bottleneck: float, free: float, budgets: list[int | None]) -> str:
    worst = max(stages, key=lambda sp: sp.compute_s + sp.send_s)
    text = f"stage {worst.stage} on {worst.node_id} is the bottleneck: {worst.compute_s:.4g} s compute"
    text += f" + {worst.send_s:.4g} s send per microbatch"
    tight = ", ".join(f"stage {sp.stage}" for sp in stages if sp.limited_by == "memory")
    if bottleneck > free:
        text += f"; memory budgets forced a worse split than the unconstrained optimum ({free:.4g} s)"
        text += f": {tight} limited by memory" if tight else ""
    elif any(b is not None for b in budgets):
        text += "; memory budgets do not bind"
    return text
