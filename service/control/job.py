"""What a job controller is made of: its states, options and events, and ``JobBase``, the state
every part of the controller shares.

The controller is built in layers, one module each, every one a class on top of the last:

- ``control.job`` (this): ``JobBase``, the controller's attributes and what every part uses:
  adopting a plan, entering RUNNING, the autoscaler request, transitions and events;
- ``control.stages``: the stage actors: start, connect, checkpoint, resume, stop;
- ``control.moves``: live moves, after calibration or a membership change (REBALANCING);
- ``control.recovery``: elastic jobs' replicated state, recovery from lost stages (RECOVERING)
  and waiting for nodes (WAITING);
- ``control.controller``: ``JobController``, the state machine: ``step()`` does one transition.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.elastic import Watcher
from pipewave.service.control.metrics import RunFigures, StepMetrics
from pipewave.service.planning.partition import LayerCost, Partition, Slot, worker_layout
from pipewave.service.planning.planner import JobPlan, Rebalance
from pipewave.service.spec import JobSpec
from pipewave.workers.stage import RunReport

logger = logging.getLogger("pipewave.service.control.controller")  # one logger for the whole controller


def stage_bundle(cpus_per_stage: float, gpus_per_stage: float = 0.0) -> dict[str, float]:
    """The resources one stage takes: what a scale request asks per stage, so one worker group's
    pod must offer exactly this (deploy/)."""
    return {"CPU": cpus_per_stage, **({"GPU": gpus_per_stage} if gpus_per_stage > 0 else {})}


class JobState(StrEnum):
    CREATED = "CREATED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    REBALANCING = "REBALANCING"
    RECOVERING = "RECOVERING"  # a stage's node died: rebuild from the latest surviving state
    WAITING = "WAITING"  # too few nodes for min_stages: wait for more
    CHECKPOINTING = "CHECKPOINTING"
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobError(RuntimeError):
    """A job that cannot go on; the message is one readable line."""


@dataclass(frozen=True)
class Event:
    time: float
    kind: str  # state | checkpoint | error | info
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ControllerOptions:
    cpus_per_stage: float = 1.0
    threads_per_stage: int | None = None  # None: this machine's cores shared by the stages
    poll_s: float = 0.25
    ready_timeout_s: float = 120.0
    resume: bool = True
    memory_fraction: float = 0.8  # share of a node's Ray memory its stages may plan for
    profile_dir: Path | None = None  # layer profiles cache (default: $PIPEWAVE_HOME/profiles)
    calibrate_steps: int = 4  # planned jobs: measure this many steps, then re-plan (0: never)
    min_gain: float = 0.03  # move to a calibrated partition only if it cuts the bottleneck more
    max_rebalances: int = 3
    verify_moves: bool = True  # digest the whole state before and after a live move
    elastic_run_steps: int = 4  # elastic jobs: runs this long, so a move waits at most one run
    max_run_steps: int | None = None  # any job: at most this many steps per run (None: to the
    # next checkpoint). Async schedules drain at every run's end: it is part of their numerics.
    watch_every_s: float = 1.0  # elastic jobs: how often the node table is read
    confirm: int = 3  # ... and how many identical observations make a change
    elastic_min_gain: float = 0.05  # grow only for more than this predicted gain
    gpus_per_stage: float = 0.0  # >0: every stage takes this many GPUs (and asks for them)
    match_in_send_order: bool = False  # receives match in the senders' order (as NCCL needs;
    # always so when the stages hold GPUs) rather than by tag
    autoscaler: Callable[[int], None] | None = None  # elastic jobs' scale requests (stage slots
    # wanted, 0: none) go here instead of straight to Ray (a service sums its jobs' requests)
    node_slots: dict[str, int] | None = None  # plan within these free slots per node (a shared
    # cluster: the service passes what other jobs leave free); None: every node's slots


class JobBase:
    """The controller's state, and the steps every part of it takes."""

    def __init__(self, spec: JobSpec, output: Path, options: ControllerOptions | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 on_progress: Callable[[int, float | None], None] | None = None,
                 on_run: Callable[[list[StepMetrics], list[RunReport], int], None] | None = None
                 ) -> None:
        # ``request`` is the spec as submitted; ``spec`` is it with the planner's choices (stages,
        # microbatches) filled in once planned
        self.request = self.spec = spec
        self.output = Path(output)
        self.opts = options or ControllerOptions()
        self.on_event, self.on_progress, self.on_run = on_event, on_progress, on_run
        self.state = JobState.CREATED
        self.reason = ""
        self.partition: Partition = ()
        self.stage_nodes: list[str] = []  # planned node per stage (partition "auto")
        self.job_plan: JobPlan | None = None
        self.actors: list[Any] = []
        self._orphans: list[Any] = []  # actors of a move in progress, not yet stages again
        self.pg: Any = None
        self._on_gpus = False  # the stages hold GPUs (their transfers go over NCCL)
        self.step_done = 0  # global steps finished (and applied on every stage)
        self.first_step = 0  # where this process started (after a resume)
        self.metrics: list[StepMetrics] = []
        self.figures: list[RunFigures] = []
        self.events: list[Event] = []
        self.checkpoints: list[str] = []
        self.last_run: list[RunReport] = []
        self._record: ckpt.CheckpointRecord | None = None  # the checkpoint to resume from
        self._layers: tuple[LayerCost, ...] = ()  # the profile the plan was made from
        self._slots: list[Slot] = []
        self._speeds: dict[str, float] = {}
        self._calibrate_at: int | None = None  # the step after which to calibrate
        self.partition_since = 0  # the step the current partition started at
        self.rebalances: list[Rebalance] = []
        self.moves = 0  # live moves done (calibration and elasticity)
        self._move: tuple[JobPlan, tuple[LayerCost, ...], str] | None = None  # (plan, costs, why)
        self._watcher: Watcher | None = None
        self._last_watch = 0.0
        self._change: frozenset[str] | None = None  # a confirmed membership change to act on
        self._figures_since = 0  # index into figures where the current partition starts
        # elastic jobs: the latest replicated state (step, export refs, their nodes, holders)
        self._snapshot: tuple[int, list[Any], list[str], list[int]] | None = None
        self._pending: tuple[int, list[Any], list[str], list[int]] | None = None  # copying
        self._replicating: list[Any] = []  # its hold_replica calls
        self._restart_from: tuple[int, list[Any]] | None = None  # (step, per old stage payload)
        self._restart_layout: list[Partition] = []  # the old layout (chunks per stage) of those
        self._waiting_since = 0.0
        self._excluded: set[str] = set()  # nodes a recovery saw die, before Ray marks them dead
        self._requested = 0  # stage slots asked of the autoscaler (0: none)
        self._prestarted: dict[int, Any] = {}  # stage of the decided move -> its new actor
        self._seen_step = 0  # the furthest step any stage reported (progress polls)
        self._cancel: str | None = None
        self._t_created = time.time()
        self._t_running = 0.0
        self._train_s = 0.0

    # -- shared steps ----------------------------------------------------------------------
    def _adopt(self, jp: JobPlan) -> None:
        self.job_plan, self.partition = jp, jp.plan.partition
        tmp = self.output / "plan.json.tmp"  # the plan in force, beside metrics.jsonl
        tmp.write_text(json.dumps({"spec": self.spec.model_dump(mode="json"), **jp.to_dict()}, indent=2))
        tmp.replace(self.output / "plan.json")
        self.stage_nodes = jp.plan.worker_nodes
        self._calibrate_at = None  # set when the stages start (after any resume)

    def _enter_running(self) -> None:
        self.partition_since = self.step_done
        n = self.opts.calibrate_steps
        if self.job_plan is not None and n > 0 and len(self.rebalances) < self.opts.max_rebalances \
                and self.step_done + 2 * n <= self.spec.steps:  # worth it: steps remain after
            self._calibrate_at = self.step_done + n
        self._transition(JobState.RUNNING, f"running steps {self.step_done + 1}..{self.spec.steps}")

    def _layout(self, spec: JobSpec | None = None,
                partition: Partition | None = None) -> tuple[Partition, ...]:
        """Per stage worker, the layer ranges of its chunks (one range per worker unless the
        schedule holds several chunks per worker): of the current partition, or of ``partition``
        of the resolved ``spec``."""
        spec, partition = spec or self.spec, partition or self.partition
        return worker_layout(partition, spec.placement())

    # -- reporting -------------------------------------------------------------------------
    def _request_slots(self) -> None:
        """Elastic jobs: when the cluster offers fewer slots than ``elastic.max_stages``, ask
        Ray's autoscaler for room for the whole job (a KubeRay cluster scales up; the joining
        nodes are then picked up by the watcher). Withdrawn when the job ends. Ray keeps one
        request per cluster: the latest caller's."""
        e = self.spec.elastic
        if e is None:
            return
        want = e.max_stages if len(self._slots) < e.max_stages else 0
        if want == self._requested:
            return
        self._ask(want)
        self._requested = want
        self._emit("info", f"asked the autoscaler for room for {want} stages" if want
                   else "withdrew the autoscaler request", bundles=want)

    def _ask(self, want: int) -> None:
        """Ask for room for ``want`` stages (0: withdraw): Ray keeps one request per cluster."""
        if self.opts.autoscaler is not None:
            self.opts.autoscaler(want)
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[stage_bundle(self.opts.cpus_per_stage, self.opts.gpus_per_stage)] * want)

    def _transition(self, new: JobState, reason: str) -> None:
        logger.info("job %s: %s -> %s (%s)", self.spec.name, self.state.value, new.value, reason)
        self.state, self.reason = new, reason
        if new.is_terminal and self._requested:
            try:
                self._ask(0)
                self._requested = 0
            except Exception:  # the cluster is gone: nothing to withdraw
                logger.debug("cannot withdraw the autoscaler request", exc_info=True)
        self._emit("state", f"{new.value}: {reason}", state=new.value)

    def _emit(self, kind: str, message: str, **data: Any) -> None:
        ev = Event(time.time(), kind, message, data)
        self.events.append(ev)
        if self.on_event:
            self.on_event(ev)


def _mean_per_stage(rows: list[tuple[float, ...]], num_stages: int) -> list[float]:
    """Per stage, the mean over steps (rows: one tuple per step)."""
    if not rows or any(len(r) < num_stages for r in rows):
        return []
    return [sum(r[s] for r in rows) / len(rows) for s in range(num_stages)]
