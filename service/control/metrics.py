"""Per-step metrics and the job summary, computed from the stages' run reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipewave.service.schedules import Kind
from pipewave.workers.stage import RunReport


@dataclass(frozen=True)
class StepMetrics:
    step: int  # 1-based: the number of steps finished
    loss: float
    samples_per_s: float
    time_s: float  # wall time of this step (from the previous step's end)
    stage_busy_s: tuple[float, ...]
    stage_idle_s: tuple[float, ...]
    stage_cpu_s: tuple[float, ...] = ()  # CPU seconds of the busy spans (one-thread CPU stages;
    # wall seconds otherwise): what a stage costs even when stages share cores
    predicted_stage_busy_s: tuple[float, ...] = ()  # the plan's figure (planned jobs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunFigures:
    """Figures of one schedule run over all stages (for bubbles and the benchmark)."""

    wall_s: float
    busy_s: tuple[float, ...]
    peak_versions: tuple[int, ...]
    peak_activations: tuple[int, ...]
    mean_forward_s: tuple[float, ...]
    mean_backward_s: tuple[float, ...]  # backward without the optimizer step
    mean_update_s: tuple[float, ...]

    @property
    def bubble(self) -> tuple[float, ...]:
        return tuple(1 - b / self.wall_s for b in self.busy_s) if self.wall_s > 0 else ()


@dataclass
class JobSummary:
    name: str
    schedule: str
    stages: int
    state: str
    steps: int
    final_loss: float | None
    samples_per_s: float
    train_s: float
    startup_s: float
    first_step: int = 0
    bubble: list[float] = field(default_factory=list)
    peak_versions: list[int] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    output: str = ""
    reason: str = ""
    predicted_stage_busy_s: list[float] = field(default_factory=list)  # per step, planner's figure
    # per step, mean over the current partition's steps after its first (warmup)
    measured_stage_busy_s: list[float] = field(default_factory=list)
    measured_stage_cpu_s: list[float] = field(default_factory=list)  # the same in CPU seconds
    # [start, end) layers per chunk (virtual stage), in model order: one per stage for the
    # single-chunk schedules, stages x chunks per stage for interleaved-1f1b and hanayo
    partition: list[list[int]] = field(default_factory=list)
    rebalances: int = 0  # partitions moved to after calibration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_metrics(reports: list[RunReport], first_step: int, num_steps: int, microbatches: int,
                 batch_size: int, t_start: float) -> list[StepMetrics]:
    """One StepMetrics per step of a run; a step ends when its last action on any stage ends."""
    S = len(reports)
    ends = [t_start] * num_steps
    busy = [[0.0] * S for _ in range(num_steps)]
    cpu = [[0.0] * S for _ in range(num_steps)]
    for r in reports:
        for i, (a, t0, t1) in enumerate(r.spans):
            k = a.microbatch // microbatches
            ends[k] = max(ends[k], t1)
            busy[k][r.stage] += t1 - t0
            cpu[k][r.stage] += r.cpu_s[i] if i < len(r.cpu_s) else 0.0
    losses: dict[int, list[float]] = {}
    for r in reports:  # (the stage holding the last chunk has them)
        for mb, loss in r.losses.items():
            losses.setdefault(mb // microbatches, []).append(loss)
    out, prev = [], t_start
    for k in range(num_steps):
        dt = max(ends[k] - prev, 1e-9)
        prev = max(prev, ends[k])
        ls = losses.get(k, [])
        out.append(StepMetrics(
            step=first_step + k + 1,
            loss=sum(ls) / len(ls) if ls else float("nan"),
            samples_per_s=batch_size / dt,
            time_s=dt,
            stage_busy_s=tuple(busy[k]),
            stage_idle_s=tuple(max(0.0, dt - b) for b in busy[k]),
            stage_cpu_s=tuple(cpu[k]),
        ))
    return out


def run_figures(reports: list[RunReport]) -> RunFigures:
    t0 = min(r.spans[0][1] for r in reports if r.spans)
    t1 = max(r.spans[-1][2] for r in reports if r.spans)
    fwd, bwd, upd = [], [], []
    for r in reports:
        f = [t1 - t0 for a, t0, t1 in r.spans if a.kind is Kind.F]
        bs = [t1 - t0 for a, t0, t1 in r.spans if a.kind is Kind.B]
        n_upd = sum(1 for a, _, _ in r.spans if a.update)
        fwd.append(sum(f) / max(1, len(f)))
        bwd.append((sum(bs) - r.update_s) / max(1, len(bs)))
        upd.append(r.update_s / max(1, n_upd))
    return RunFigures(
        wall_s=t1 - t0,
        busy_s=tuple(r.busy_s for r in reports),
        peak_versions=tuple(r.peak_versions for r in reports),
        peak_activations=tuple(r.peak_activations for r in reports),
        mean_forward_s=tuple(fwd), mean_backward_s=tuple(bwd), mean_update_s=tuple(upd),
    )
