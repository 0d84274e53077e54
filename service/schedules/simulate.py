"""Event simulation of a schedule under per-stage costs: makespan, bubbles, memory peaks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipewave.service.schedules.schedule import Schedule, ScheduleError
from pipewave.workers.actions import Action, Key, Kind


@dataclass(frozen=True)
class Costs:
    """Durations (seconds or units); a float applies to every stage, a tuple gives one per stage.

    ``update`` is charged after a backward with ``update=True``; ``comm`` is the latency of one
    stage-to-stage transfer (activations forward, gradients backward).

    Stages holding several chunks (``V`` per stage): ``forward`` and ``backward`` are still a
    stage's whole share of the model, so a float or a per-stage tuple is split evenly over its
    chunks (one chunk's forward costs ``forward / V``) and a schedule does the same work per stage
    whatever its chunking; a tuple of ``P * V`` values gives one per virtual stage instead (a
    chunk's own cost). ``update`` stays per stage (one step covers all its chunks); ``comm`` is
    charged only between different stages (consecutive chunks on one stage need no transfer).
    """

    forward: float | tuple[float, ...] = 1.0
    backward: float | tuple[float, ...] = 1.0
    update: float | tuple[float, ...] = 0.0
    comm: float = 0.0


@dataclass(frozen=True)
class SimResult:
    """``spans``: per stage (action, start, end); a span's end includes its optimizer step.

    ``peak_activations``: the most (chunk, microbatch) forwards a stage holds for their backward
    at once. ``peak_activation_memory``: the same peak weighted by chunk size, in units of one
    microbatch's activations over the stage's whole share of the model (a chunk's are 1/V of it,
    chunks assumed equal): equal to ``peak_activations`` for one chunk per stage.
    """

    makespan: float
    busy: tuple[float, ...]
    bubble: tuple[float, ...]
    bubble_mean: float
    peak_activations: tuple[int, ...]
    peak_versions: tuple[int, ...]
    spans: dict[int, list[tuple[Action, float, float]]]
    peak_activation_memory: tuple[float, ...] = ()


def _per_stage(value: float | tuple[float, ...], num_stages: int) -> tuple[float, ...]:
    if not isinstance(value, tuple):
        return (float(value),) * num_stages
    if len(value) != num_stages:
        raise ValueError(f"per-stage costs need {num_stages} values, got {len(value)}")
    return value


def _per_chunk(
    value: float | tuple[float, ...], num_stages: int, chunks: int, virtual: list[list[int]]
) -> list[list[float]]:
    """[stage][chunk] cost: per-stage values split evenly, or per-virtual-stage values as given."""
    if chunks > 1 and isinstance(value, tuple) and len(value) == num_stages * chunks:
        return [[float(value[v]) for v in row] for row in virtual]
    try:
        per_stage = _per_stage(value, num_stages)
    except ValueError:
        if chunks == 1:
            raise
        raise ValueError(
            f"per-stage costs need {num_stages} values (or {num_stages * chunks}, one per virtual"
            f" stage), got {len(value) if isinstance(value, tuple) else 1}"
        ) from None
    return [[c / chunks] * chunks for c in per_stage]


def simulate(schedule: Schedule, costs: Costs = Costs()) -> SimResult:
    """Run each stage's actions in order; an action starts once its stage is free and its inputs
    have arrived (producer's end, plus ``comm`` from another stage). A gradient leaves when the
    backward ends, before the optimizer step."""
    n, chunks = schedule.num_stages, schedule.chunks_per_stage
    placement = schedule.placement
    virtual = [[s if placement is None else placement.virtual(s, c) for c in range(chunks)]
               for s in range(n)]
    fwd, bwd = _per_chunk(costs.forward, n, chunks, virtual), _per_chunk(costs.backward, n, chunks, virtual)
    upd = _per_stage(costs.update, n)
    orders = {s: schedule.stage_actions(s) for s in range(n)}
    spans: dict[int, list[tuple[Action, float, float]]] = {s: [] for s in range(n)}
    ready: dict[Key, float] = {}
    free = [0.0] * n
    remaining = sum(len(order) for order in orders.values())
    while remaining:
        progressed = False
        for s in range(n):
            order = orders[s]
            while len(spans[s]) < len(order):
                a = order[len(spans[s])]
                deps = a.dependencies(n, placement)
                if any(d not in ready for d in deps):
                    break
                start = max(
                    [free[s]] + [ready[d] + (costs.comm if d[0] != s else 0.0) for d in deps]
                )
                end = start + (fwd[s][a.chunk] if a.kind is Kind.F else bwd[s][a.chunk])
                ready[a.key] = end
                free[s] = end + (upd[s] if a.update else 0.0)
                spans[s].append((a, start, free[s]))
                remaining -= 1
                progressed = True
        if not progressed:
            waiting = ", ".join(
                schedule.label(orders[s][len(spans[s])])
                for s in range(n)
                if len(spans[s]) < len(orders[s])
            )
            raise ScheduleError(f"{schedule.name}: deadlock, stuck at {waiting}", schedule.render())
    makespan = max(free, default=0.0)
    busy = tuple(sum(end - start for _, start, end in spans[s]) for s in range(n))
    bubble = tuple(1.0 - b / makespan if makespan > 0 else 0.0 for b in busy)
    peaks = [_peaks(orders[s]) for s in range(n)]
    return SimResult(
        makespan=makespan,
        busy=busy,
        bubble=bubble,
        bubble_mean=sum(bubble) / n,
        peak_activations=tuple(p[0] for p in peaks),
        peak_versions=tuple(p[1] for p in peaks),
        spans=spans,
        peak_activation_memory=tuple(p[0] / chunks for p in peaks),
    )


def _peaks(actions: list[Action]) -> tuple[int, int]:
    """(max in-flight (chunk, microbatch) forwards, max distinct versions held) over one stage's
    order.

    Held after each action (and at the start): the latest version, the versions of in-flight
    microbatches, and older versions that later actions of the stage still use.
    """
    latest = 0
    inflight: dict[tuple[int, int], int] = {}  # (chunk, microbatch) -> version
    later = Counter(a.version for a in actions)

    def held() -> int:
        older = {v for v, c in later.items() if c and v < latest}
        return len({latest, *inflight.values(), *older})

    peak_act, peak_ver = 0, held()
    for a in actions:
        later[a.version] -= 1
        if a.kind is Kind.F:
            inflight[a.chunk, a.microbatch] = a.version
        else:
            inflight.pop((a.chunk, a.microbatch), None)
            latest += a.update
        peak_act = max(peak_act, len(inflight))
        peak_ver = max(peak_ver, held())
    return peak_act, peak_ver


def steady_state_bubble(schedule: Schedule, costs: Costs = Costs()) -> float:
    """Mean idle fraction over the window where every stage is in its steady state.

    The window runs from the latest start of any stage's first backward (every stage has left its
    warmup) to the earliest end of any stage's last forward (no stage has entered its cooldown).
    ValueError if that window is empty (e.g. a single GPipe step, whose backwards follow all
    forwards).
    """
    result = simulate(schedule, costs)
    spans = result.spans.values()
    lo = max(next(st for a, st, _ in row if a.kind is Kind.B) for row in spans)
    hi = min(max(en for a, _, en in row if a.kind is Kind.F) for row in spans)
    if hi <= lo:
        raise ValueError(f"{schedule.name}: no steady state (window [{lo}, {hi}] is empty)")
    busy = [sum(max(0.0, min(en, hi) - max(st, lo)) for _, st, en in row) for row in spans]
    return sum(1.0 - b / (hi - lo) for b in busy) / len(busy)
