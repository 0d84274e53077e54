"""Automatic planning: which schedule, how many stages, how many microbatches, which layers where.

``plan_job`` tries each candidate (stages S, schedule variant of ``schedule_variants``,
microbatches M), places the layers with the exact partitioner (``partition.plan``:
bottleneck-optimal contiguous split under the slots' memory budgets; ``chunk_partition`` for a
schedule with several chunks per stage), then simulates the schedule with the resulting
per-stage costs and keeps the candidate with the highest predicted throughput (ties, within
``TIE_TOLERANCE``: fewer stages, then the simpler schedule, then fewer microbatches).

Cost model, per stage (per chunk under a chunked schedule) and microbatch (slot speed divides
every compute time):

- forward / backward: the sum of the stage's measured layer times. Layers are measured at the
  spec's microbatch size and a smaller one; another M keeps each time's fixed part (what does
  not shrink with the microbatch: launches, Python and autograd overhead) and scales the rest,
  and the activation and output bytes, linearly with the microbatch size.
- update (one optimizer step of the stage worker, all its chunks):
  ``UPDATE_S_PER_PARAM_BYTE[optimizer] x param bytes``, measured for
  ``pipewave.workers.optim.OutOfPlaceOptimizer`` (clone + fused kernel) on one CPU thread: Adam
  about 3.0 ms for 0.8 M params (3.2 MB) and 11.3 ms for 3.2 M params (0.22-0.24 ns per param
  byte); SGD with momentum 0.14-0.24; plain SGD 0.10-0.14 ns per param byte.
- comm: one transfer between stage workers, latency + bytes / bandwidth of the largest activation
  sent across any cut between two workers (consecutive chunks on one worker hand over in memory;
  the simulator takes one value for all transfers).

Time per step: the synchronous schedules (gpipe, 1f1b, interleaved-1f1b, hanayo) flush every
step, so it is the simulated makespan of one step. The asynchronous ones (pipedream, 2bw) never
flush: the schedule is simulated for K and K + 2 steps, K large enough for every stage to be
past its warmup, and the time per step is the difference of the makespans over 2 (busy time per
stage likewise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from pipewave.service.planning.chunk_partition import plan_chunked
from pipewave.service.planning.partition import InfeasibleError, LayerCost, Link, Plan, Slot, plan
from pipewave.service.schedules import (
    SYNCHRONOUS_SCHEDULE_NAMES,
    Costs,
    make_schedule,
    schedule_traits,
    simulate,
)

if TYPE_CHECKING:
    from pipewave.service.spec import JobSpec

# seconds per parameter byte of one optimizer step (see the module docstring)
UPDATE_S_PER_PARAM_BYTE = {"adam": 0.23e-9, "adamw": 0.23e-9, "sgd_momentum": 0.2e-9, "sgd": 0.12e-9}
MAX_STAGES = 64
# schedule "auto" weighs these: the synchronous schedules, which all train exactly what
# unpipelined training does (the asynchronous ones change the numerics: never chosen for you),
# in the order of their traits' rank (ties go to the earlier)
AUTO_SCHEDULES = tuple(sorted(SYNCHRONOUS_SCHEDULE_NAMES, key=lambda n: schedule_traits(n).rank))
AUTO_CHUNKS = (2, 3, 4)  # interleaved-1f1b's chunks per stage under "auto"
AUTO_WAVES = (1, 2, 3, 4)  # hanayo's waves under "auto"
TIE_TOLERANCE = 0.01  # throughputs within 1% are a tie: fewer stages (then microbatches) win


@dataclass(frozen=True)
class JobPlan:
    """A chosen (stages, microbatches) with its placement and predicted figures.

    ``stage_budgets``: the memory budget (bytes, None = unlimited) of the slot each stage got.
    """

    stages: int
    microbatches: int
    plan: Plan
    predicted_step_s: float  # one step's makespan (sync) or steady-state time per step (async)
    predicted_samples_per_s: float
    predicted_bubble: float  # mean over stages
    predicted_stage_busy_s: tuple[float, ...]  # per stage, per step
    reason: str
    stage_budgets: tuple[int | None, ...] = ()
    schedule: str = ""  # the schedule planned for (the planner's choice under schedule "auto")
    chunks: int | None = None  # interleaved-1f1b's chunks per stage, as planned
    waves: int | None = None  # hanayo's waves, as planned

    @property
    def schedule_label(self) -> str:
        """``1f1b``, ``interleaved-1f1b (3 chunks)``, ``hanayo (2 waves)``."""
        if self.chunks is not None:
            return f"{self.schedule} ({self.chunks} chunks)"
        if self.waves is not None:
            return f"{self.schedule} ({self.waves} wave{'s' if self.waves > 1 else ''})"
        return self.schedule

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for i, sp in enumerate(self.plan.stages):
            row = asdict(sp)
            row["layers"] = list(sp.layers)
            w = self.plan.worker_of(i)  # (chunked schedules: the chunk's stage worker)
            row["worker"] = w
            row["busy_s"] = self.predicted_stage_busy_s[w]
            row["budget_bytes"] = self.stage_budgets[w] if w < len(self.stage_budgets) else None
            stages.append(row)
        return {
            "schedule": self.schedule,
            "chunks": self.chunks,
            "waves": self.waves,
            "stages": self.stages,
            "microbatches": self.microbatches,
            "partition": [list(b) for b in self.plan.partition],
            "bottleneck_s": self.plan.bottleneck_s,
            "predicted_step_s": self.predicted_step_s,
            "predicted_samples_per_s": self.predicted_samples_per_s,
            "predicted_bubble": self.predicted_bubble,
            "stage_plans": stages,
            "placement_reason": self.plan.reason,
            "reason": self.reason,
        }


def optimizer_name(spec: JobSpec) -> str:
    """The spec's optimizer as ``partition.OPTIMIZER_STATE`` names it."""
    kind = str(spec.optimizer.kind)
    return "sgd_momentum" if kind == "sgd" and spec.optimizer.momentum > 0 else kind


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def microbatch_candidates(batch_size: int, stages: int, schedule: str = "1f1b") -> list[int]:
    """Divisors of the batch in [1, 4 x stages], those >= stages where there are any
    (interleaved-1f1b: only multiples of the stages)."""
    ds = [d for d in _divisors(batch_size) if d <= 4 * stages]
    if schedule == "interleaved-1f1b":
        return [d for d in ds if d % stages == 0]
    return [d for d in ds if d >= stages] or ds


def _scaled(layers: Sequence[LayerCost], factor: float) -> list[LayerCost]:
    """The costs at ``factor`` x the profiled microbatch size: the fixed part of each time stays,
    the rest and the activation bytes scale."""
    if factor == 1.0:
        return list(layers)

    def t(total: float, fixed: float) -> float:
        fixed = min(max(fixed, 0.0), total)
        return fixed + (total - fixed) * factor

    return [replace(c, forward_s=t(c.forward_s, c.forward_fixed_s),
                    backward_s=t(c.backward_s, c.backward_fixed_s),
                    activation_bytes=round(c.activation_bytes * factor),
                    output_bytes=round(c.output_bytes * factor)) for c in layers]


def _simulate(spec: JobSpec, layers: Sequence[LayerCost], pl: Plan, slots: Sequence[Slot], m: int,
              link: Link, optimizer: str) -> tuple[float, tuple[float, ...]]:
    """(time per step, busy seconds per stage per step) of the placed job under its schedule."""
    speed = {s.node_id: s.speed for s in slots}  # equal node ids have equal speeds in practice
    n = pl.num_workers
    fwd, bwd, upd = [], [], [0.0] * n  # (chunked: forward and backward per chunk)
    for i, sp in enumerate(pl.stages):
        a, b = sp.layers
        v = speed.get(sp.node_id, 1.0)
        fwd.append(sum(c.forward_s for c in layers[a:b]) / v)
        bwd.append(sum(c.backward_s for c in layers[a:b]) / v)
        pbytes = sum(c.param_bytes for c in layers[a:b])
        upd[pl.worker_of(i)] += UPDATE_S_PER_PARAM_BYTE[optimizer] * pbytes / v
    cuts = [layers[b - 1].output_bytes for i, (_, b) in enumerate(pl.partition[:-1])
            if pl.worker_of(i) != pl.worker_of(i + 1)]  # (a wave's turn hands over in memory)
    comm = link.latency_s + max(cuts) / link.bandwidth_bytes_s if cuts else 0.0
    costs = Costs(tuple(fwd), tuple(bwd), tuple(upd), comm)
    args = spec.schedule_args

    def run(steps: int) -> tuple[float, tuple[float, ...]]:
        sched = make_schedule(spec.schedule, n, m, steps, **args)
        result = simulate(sched, costs)
        return result.makespan, result.busy

    if spec.traits.synchronous:
        return run(1)
    k = 2 + -(-(2 * n + 2) // m)  # every stage past its warmup
    (t1, b1), (t2, b2) = run(k), run(k + 2)
    return (t2 - t1) / 2, tuple((y - x) / 2 for x, y in zip(b1, b2, strict=True))


def _budgets(pl: Plan, slots: Sequence[Slot]) -> tuple[int | None, ...]:
    """The budget of the slot each stage worker got: among its node's slots, the smallest that
    fits (what its chunks need together)."""
    out: list[int | None] = []
    need = [0] * pl.num_workers
    for i, sp in enumerate(pl.stages):
        need[pl.worker_of(i)] += sp.memory_bytes
    for w, node in enumerate(pl.worker_nodes):
        own = [s.memory_bytes for s in slots if s.node_id == node]
        if None in own:
            out.append(None)
            continue
        fit = sorted(b for b in own if b is not None and b >= need[w])
        out.append(fit[0] if fit else None)
    return tuple(out)


def _place(spec: JobSpec, layers: Sequence[LayerCost], slots: Sequence[Slot], stages: int,
           microbatches: int, optimizer: str, link: Link) -> Plan:
    """The bottleneck-optimal placement of ``layers`` on ``stages`` stage workers: contiguous
    stages, or the chunks of a chunked schedule (``chunk_partition``)."""
    if not spec.traits.chunked:
        return plan(layers, slots, spec.schedule, microbatches, optimizer, link, num_stages=stages)
    if spec.schedule == "interleaved-1f1b" and microbatches % stages:
        raise InfeasibleError(f"interleaved-1f1b needs microbatches ({microbatches}) to be a "
                              f"multiple of stages ({stages})")
    args = spec.schedule_args
    return plan_chunked(layers, slots, spec.schedule, microbatches, spec.placement(stages), optimizer,
                        link, chunks=args.get("chunks"), waves=args.get("waves"))


def schedule_variants(spec: JobSpec) -> list[JobSpec]:
    """The concrete schedules the planner weighs for ``spec``: its own, or under schedule "auto"
    every synchronous one; chunks / waves "auto" (or unset under schedule "auto") try each of
    ``AUTO_CHUNKS`` / ``AUTO_WAVES``. Simplest first: ties go to the earlier."""
    auto = spec.schedule == "auto"
    out = []
    for name in AUTO_SCHEDULES if auto else (spec.schedule,):
        chunks: list[int | None] = [None if spec.chunks == "auto" else spec.chunks]
        waves: list[int | None] = [None if spec.waves == "auto" else spec.waves]
        if name == "interleaved-1f1b" and (auto or spec.chunks == "auto"):
            chunks = list(AUTO_CHUNKS)
        if name == "hanayo" and (auto or spec.waves == "auto"):
            waves = list(AUTO_WAVES)
        out += [spec.model_copy(update={"schedule": name, "chunks": c, "waves": w})
                for c in chunks for w in waves]
    return out


def _stages_word(n: int) -> str:
    return f"{n} stage{'s' if n != 1 else ''}"


def plan_job(spec: JobSpec, layers: Sequence[LayerCost], slots: Sequence[Slot], *,
             stages: int | None = None, microbatches: int | None = None,
             max_stages: int | None = None, link: Link = Link()) -> JobPlan:
    """The best (stages, microbatches) for ``spec`` on ``slots``; ``layers`` were measured at the
    spec's microbatch size. A given ``stages`` / ``microbatches`` is used as is, None chooses it.
    InfeasibleError when no candidate fits (the message of the smallest candidate)."""
    n = len(layers)
    if n < 1 or not slots:
        raise InfeasibleError("nothing to place: no layers" if n < 1 else "no slots to place stages on")
    if stages is not None:
        counts = [stages]
    else:
        top = min(len(slots), n, max_stages or MAX_STAGES, MAX_STAGES)
        counts = list(range(1, top + 1))
    optimizer = optimizer_name(spec)
    profiled = spec.microbatch_size
    variants = schedule_variants(spec)
    results: list[tuple[float, int, int, JobPlan]] = []  # (samples/s, S, M, plan)
    first_error: InfeasibleError | None = None
    for s in counts:
        for var in variants:
            ms = [microbatches] if microbatches is not None else \
                microbatch_candidates(spec.batch_size, s, var.schedule)
            for m in ms:
                if spec.batch_size % m:
                    raise ValueError(f"batch_size ({spec.batch_size}) must be divisible by "
                                     f"microbatches ({m})")
                scaled = _scaled(layers, (spec.batch_size // m) / profiled)
                try:
                    pl = _place(var, scaled, slots, s, m, optimizer, link)
                except InfeasibleError as err:
                    first_error = first_error or err
                    continue
                step_s, busy = _simulate(var, scaled, pl, slots, m, link, optimizer)
                bubbles = [1.0 - b / step_s if step_s > 0 else 0.0 for b in busy]
                args = var.schedule_args
                jp = JobPlan(s, m, pl, step_s, spec.batch_size / step_s if step_s > 0 else float("inf"),
                             sum(bubbles) / len(bubbles), busy, "", _budgets(pl, slots),
                             var.schedule, args.get("chunks"), args.get("waves"))
                results.append((jp.predicted_samples_per_s, s, m, jp))
    if not results:
        assert first_error is not None
        raise first_error
    best_rate = max(r[0] for r in results)
    # candidates come in (S, schedule, M) order: the first within the tolerance has the fewest
    # stages, then the simplest schedule
    rate, s, m, best = next(r for r in results if r[0] >= best_rate * (1 - TIE_TOLERANCE))
    chosen = f"{_stages_word(s)}, {m} microbatches"
    if len(variants) > 1:
        chosen = f"{best.schedule_label}, {chosen}"
    if stages is not None and microbatches is not None:
        why = f"{chosen} as given"
    else:
        per_s: dict[int, float] = {}
        for r, s2, _, _ in results:
            per_s[s2] = max(per_s.get(s2, 0.0), r)
        parts = [f"{chosen}: best of {len(results)} candidates"]
        fewer = [x for x in per_s if x < s]
        if fewer:
            x = max(fewer)
            parts.append(f"{rate / per_s[x]:.2f}x the throughput of {_stages_word(x)}")
        more = [x for x in per_s if x > s]
        if more:
            x = min(more)
            parts.append(f"{_stages_word(x)} would give {per_s[x] / rate:.2f}x")
        skipped = len(counts) - len(per_s)
        if skipped and stages is None:
            parts.append(f"{skipped} stage count(s) do not fit")
        why = "; ".join(parts)
    if len(variants) > 1:
        others = [r for r in results if r[3].schedule_label != best.schedule_label]
        if others:
            alt = max(others, key=lambda r: r[0])
            why += (f"; {best.schedule_label} predicts {rate / alt[0]:.2f}x the best other "
                    f"schedule ({alt[3].schedule_label}, {_stages_word(alt[1])})")
    tight = [str(sp.stage) for sp in best.plan.stages if sp.limited_by == "memory"]
    if tight:
        why += f"; stage{'s' if len(tight) > 1 else ''} {', '.join(tight)} limited by memory"
    return replace(best, reason=f"{why}; {best.plan.reason}")


@dataclass(frozen=True)
class Rebalance:
    """A calibration decision: move to ``plan`` (None: keep the partition), and why."""

    plan: JobPlan | None
    factors: tuple[float, ...]  # measured / predicted busy, per stage of the current partition
    current_s: float  # the current partition's bottleneck per microbatch, calibrated costs
    reason: str
    layers: tuple[LayerCost, ...] = ()  # the calibrated layer costs ``plan`` was made from


def calibrated(layers: Sequence[LayerCost], partition: Sequence[tuple[int, int]],
               factors: Sequence[float]) -> list[LayerCost]:
    """Layer costs corrected by what the stages measured: every layer of stage ``s`` has its
    forward and backward times scaled by ``factors[s]`` (measured / predicted busy time)."""
    if len(partition) != len(factors) or any(f <= 0 for f in factors):
        raise ValueError("one positive factor per stage is needed")
    out = list(layers)
    for (a, b), f in zip(partition, factors, strict=True):
        for i in range(a, b):
            out[i] = replace(out[i], forward_s=out[i].forward_s * f, backward_s=out[i].backward_s * f)
    return out


def decide_rebalance(spec: JobSpec, layers: Sequence[LayerCost], slots: Sequence[Slot],
                     current: JobPlan, measured_busy_s: Sequence[float], *,
                     min_gain: float = 0.03, link: Link = Link()) -> Rebalance:
    """Compare the stages' measured busy time per step with the plan's prediction; re-plan the
    same stage and microbatch counts on the corrected costs; move only when the calibrated
    bottleneck drops by more than ``min_gain`` (a move restarts the stages)."""
    predicted = current.predicted_stage_busy_s
    if len(measured_busy_s) != len(predicted) or min(measured_busy_s, default=0) <= 0:
        return Rebalance(None, (), 0.0, "no measurement for every stage")
    factors = tuple(m / p for m, p in zip(measured_busy_s, predicted, strict=True))
    per_range = [factors[current.plan.worker_of(i)] for i in range(len(current.plan.stages))]
    fixed = calibrated(layers, current.plan.partition, per_range)  # (a chunk: its worker's)
    scale = (spec.batch_size // current.microbatches) / spec.microbatch_size
    speed = {s.node_id: s.speed for s in slots}
    now = max(sum(c.forward_s + c.backward_s for c in fixed[a:b]) * scale / speed.get(sp.node_id, 1.0)
              for sp, (a, b) in zip(current.plan.stages, current.plan.partition, strict=True))
    try:
        new = plan_job(spec, fixed, slots, stages=current.stages,
                       microbatches=current.microbatches, link=link)
    except InfeasibleError as err:
        return Rebalance(None, factors, now, f"no other partition fits: {err}")
    new_s = max(sp.compute_s for sp in new.plan.stages)
    spread = ", ".join(f"{f:.2f}" for f in factors)
    if new.plan.partition == current.plan.partition or new_s > now * (1 - min_gain):
        return Rebalance(None, factors, now, f"measured/predicted busy per stage {spread}: keeping "
                                             f"the partition (best alternative {new_s / now:.3f}x)")
    return Rebalance(new, factors, now,
                     f"measured/predicted busy per stage {spread}: partition "
                     f"{[list(b) for b in new.plan.partition]} cuts the bottleneck to "
                     f"{new_s / now:.3f}x", tuple(fixed))


def _range_name(names: Sequence[str], a: int, b: int) -> str:
    if b - a == 1:
        return names[a]
    return f"{names[a]}..{names[b - 1]}"


def _mib(n: int | None) -> str:
    return "unlimited" if n is None else f"{n / 2**20:.1f} MiB"


def render_plan(jp: JobPlan, spec: JobSpec, layer_names: Sequence[str]) -> str:
    """A human-readable plan: one line per stage (per chunk, with its stage, for schedules with
    several chunks per stage), then the predicted figures and the reason."""
    lines = [f"plan for {spec.name}: {jp.schedule_label or spec.schedule}, {_stages_word(jp.stages)}, "
             f"{jp.microbatches} microbatches of {spec.batch_size // jp.microbatches}"]
    chunked = jp.plan.placement is not None
    rows = [("chunk/stage" if chunked else "stage", "layers", "node", "ms/microbatch",
             "memory / budget", "busy", "limited by")]
    for i, sp in enumerate(jp.plan.stages):
        a, b = sp.layers
        w = jp.plan.worker_of(i)
        budget = jp.stage_budgets[w] if w < len(jp.stage_budgets) else None
        busy = jp.predicted_stage_busy_s[w] / jp.predicted_step_s if jp.predicted_step_s > 0 else 0.0
        name = f"{sp.stage}/{w}" if chunked else str(sp.stage)
        rows.append((name, _range_name(layer_names, a, b), sp.node_id[:12],
                     f"{(sp.compute_s + sp.send_s) * 1e3:.2f}",
                     f"{_mib(sp.memory_bytes)} / {_mib(budget)}", f"{busy:.0%}", sp.limited_by))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    lines.append(f"predicted: {jp.predicted_step_s * 1e3:.1f} ms per step, "
                 f"{jp.predicted_samples_per_s:.1f} samples/s, bubble {jp.predicted_bubble:.1%}")
    lines.append(f"reason: {jp.reason}")
    return "\n".join(lines)
