"""The state a job controller keeps, as a few typed records (every part of the controller reads
and writes them; ``control.job`` holds one of each):

- ``StageActors``: the stage actors now running (and those of a move in progress), their
  placement group, their GPUs;
- ``Planning``: the plan in force (partition, nodes), what it was made from (layer costs, slots,
  node speeds), calibration and the move decided next;
- ``Training``: steps done, measurements, checkpoints, timings;
- ``ElasticState``: elastic jobs' membership watch, autoscaler request, replicated state and the
  point a recovery restarts from.

The values that are decided once and then handed on whole are frozen: ``PendingMove`` (a move
decided, not yet made), ``ReplicaRound`` (one round of replicated state) and ``RestartPoint``
(where a recovery restarts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipewave.service.control.elastic import Watcher
from pipewave.service.control.metrics import RunFigures, StepMetrics
from pipewave.service.planning.partition import LayerCost, Partition, Slot
from pipewave.service.planning.planner import JobPlan, Rebalance
from pipewave.workers.stage import RunReport


@dataclass(frozen=True)
class PendingMove:
    """A live move decided (after calibration or a membership change), made at the run's end."""

    plan: JobPlan
    layers: tuple[LayerCost, ...]  # the layer costs the plan was made from
    reason: str


@dataclass(frozen=True)
class ReplicaRound:
    """One round of an elastic job's replicated state, taken at a drained run boundary: every
    stage's export (in its node's object store), that node, and the stage holding its copy."""

    step: int
    refs: tuple[Any, ...]  # per stage: its export_state ref
    nodes: tuple[str, ...]  # per stage: the node it ran on
    holders: tuple[int, ...]  # per stage: the stage that holds its copy


@dataclass(frozen=True)
class RestartPoint:
    """Where a recovery restarts from the surviving copies: the step, one state ref per old
    stage, and the old layout (layer ranges of each old stage's chunks) they hold."""

    step: int
    sources: tuple[Any, ...]
    layout: tuple[Partition, ...]


@dataclass
class StageActors:
    """The job's stage actors (Ray actor handles) and what they hold."""

    actors: list[Any] = field(default_factory=list)  # one per stage, in stage order
    orphans: list[Any] = field(default_factory=list)  # a move's old actors, not yet stages again
    prestarted: dict[int, Any] = field(default_factory=dict)  # stage of a decided move -> actor
    pg: Any = None  # the placement group of a uniform split
    gpus_per_stage: float = 0.0  # chosen when the stages start; every later actor takes as many
    on_gpus: bool = False  # the stages hold GPUs (their transfers go over NCCL)


@dataclass
class Planning:
    """The plan in force and what it was made from."""

    partition: Partition = ()  # layer ranges per chunk
    stage_nodes: list[str] = field(default_factory=list)  # planned node per stage ("auto")
    job_plan: JobPlan | None = None
    layers: tuple[LayerCost, ...] = ()  # the profile the plan was made from
    slots: list[Slot] = field(default_factory=list)
    speeds: dict[str, float] = field(default_factory=dict)
    calibrate_at: int | None = None  # the step after which to calibrate
    rebalances: list[Rebalance] = field(default_factory=list)  # calibrations that moved
    move: PendingMove | None = None  # decided, made at the next drained run boundary


@dataclass
class Training:
    """How far the job got, what was measured, and when."""

    step_done: int = 0  # global steps finished (and applied on every stage)
    first_step: int = 0  # where this process started (after a resume)
    seen_step: int = 0  # the furthest step any stage reported (progress polls)
    partition_since: int = 0  # the step the current partition started at
    figures_since: int = 0  # index into figures where the current partition starts
    moves: int = 0  # live moves and recoveries done
    metrics: list[StepMetrics] = field(default_factory=list)
    figures: list[RunFigures] = field(default_factory=list)
    last_run: list[RunReport] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    t_created: float = field(default_factory=time.time)
    t_running: float = 0.0
    train_s: float = 0.0


@dataclass
class ElasticState:
    """Elastic jobs: the membership watch, the autoscaler request, the replicated state."""

    watcher: Watcher | None = None
    last_watch: float = 0.0
    change: frozenset[str] | None = None  # a confirmed membership change to act on
    requested: int = 0  # stage slots asked of the autoscaler (0: none)
    excluded: set[str] = field(default_factory=set)  # nodes seen dying, before Ray marks them
    waiting_since: float = 0.0
    latest: ReplicaRound | None = None  # the newest round whose copies all arrived
    copying: ReplicaRound | None = None  # the round whose copies are on their way
    replicating: list[Any] = field(default_factory=list)  # its hold_replica calls
    restart: RestartPoint | None = None  # a recovery's restart point (None: the checkpoint)
