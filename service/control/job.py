"""What a job controller is made of: its options and events, and ``JobBase``, the state every
part of the controller shares and the steps they all take.

The controller is built in layers, one module each, every one a class on top of the last:

- ``control.states``: ``JobState`` and the transition table (which state may follow which);
- ``control.context``: the controller's state as typed records (stage actors, planning,
  training, elastic state) and the frozen values handed between states;
- ``control.job`` (this): ``JobBase``, one of each record, and what every part uses: adopting
  a plan, entering RUNNING, the autoscaler request, the GPUs a stage takes, transitions (checked
  against the table) and events;
- ``control.stages``: the stage actors: start, connect, checkpoint, resume, stop;
- ``control.moves``: live moves, after calibration or a membership change (REBALANCING);
- ``control.recovery``: elastic jobs' replicated state, recovery from lost stages (RECOVERING)
  and waiting for nodes (WAITING);
- ``control.controller``: ``JobController``, the state machine: one handler per state,
  ``step()`` runs the current state's handler once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.context import ElasticState, Planning, StageActors, Training
from pipewave.service.control.metrics import RunFigures, StepMetrics
from pipewave.service.control.states import JobState, check_transition
from pipewave.service.planning.partition import Partition, worker_layout
from pipewave.service.planning.planner import JobPlan, Rebalance
from pipewave.service.spec import JobSpec
from pipewave.workers.stage import RunReport

__all__ = ["ControllerOptions", "Event", "JobBase", "JobError", "JobState", "stage_bundle",
           "stage_gpus"]

logger = logging.getLogger("pipewave.service.control.controller")  # one logger for the whole controller


def stage_bundle(cpus_per_stage: float, gpus_per_stage: float = 0.0) -> dict[str, float]:
    """The resources one stage takes: what a scale request asks per stage, so one worker group's
    pod must offer exactly this (deploy/)."""
    return {"CPU": cpus_per_stage, **({"GPU": gpus_per_stage} if gpus_per_stage > 0 else {})}


def stage_gpus(gpus_per_stage: float, cluster_gpus: float, num_stages: int) -> float:
    """The GPUs each stage actor takes: ``gpus_per_stage`` where given (a node may declare GPUs
    Ray then hands out), else one each when the cluster has a GPU for every stage, else none.
    Chosen when a job's stages start; its later actors (live moves) take the same."""
    if gpus_per_stage > 0:
        return gpus_per_stage
    return 1.0 if cluster_gpus >= num_stages else 0.0


class JobError(RuntimeError):
    """A job that cannot go on; the message is one readable line."""


STAGES_READY = "stages-ready"  # Event.topic of "N stages ready"; data["stages"]: where each runs


@dataclass(frozen=True)
class Event:
    time: float
    kind: str  # what users see it as: state | plan | checkpoint | error | info | ...
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    topic: str | None = None  # what it reports, for code that acts on it (STAGES_READY)


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
    """The controller's state (one record of each kind, see ``control.context``), and the steps
    every part of it takes. The public attributes others read (``actors``, ``partition``,
    ``step_done``, ``metrics``, ...) are read-only views of those records."""

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
        self.events: list[Event] = []
        self.stages = StageActors()
        self.planning = Planning()
        self.training = Training()
        self.elastic = ElasticState()
        self._record: ckpt.CheckpointRecord | None = None  # the checkpoint to resume from
        self._cancel: str | None = None  # a cancel's reason (set from another thread)

    # -- what others read ------------------------------------------------------------------
    @property
    def actors(self) -> list[Any]:
        return self.stages.actors

    @property
    def pg(self) -> Any:
        return self.stages.pg

    @property
    def partition(self) -> Partition:
        return self.planning.partition

    @property
    def stage_nodes(self) -> list[str]:
        return self.planning.stage_nodes

    @property
    def job_plan(self) -> JobPlan | None:
        return self.planning.job_plan

    @property
    def rebalances(self) -> list[Rebalance]:
        return self.planning.rebalances

    @property
    def step_done(self) -> int:
        return self.training.step_done

    @property
    def first_step(self) -> int:
        return self.training.first_step

    @property
    def partition_since(self) -> int:
        return self.training.partition_since

    @property
    def moves(self) -> int:
        return self.training.moves

    @property
    def metrics(self) -> list[StepMetrics]:
        return self.training.metrics

    @property
    def figures(self) -> list[RunFigures]:
        return self.training.figures

    @property
    def last_run(self) -> list[RunReport]:
        return self.training.last_run

    @property
    def checkpoints(self) -> list[str]:
        return self.training.checkpoints

    # -- shared steps ----------------------------------------------------------------------
    def _adopt(self, jp: JobPlan) -> None:
        tmp = self.output / "plan.json.tmp"  # the plan in force, beside metrics.jsonl
        tmp.write_text(json.dumps({"spec": self.spec.model_dump(mode="json"), **jp.to_dict()}, indent=2))
        tmp.replace(self.output / "plan.json")
        p = self.planning
        p.job_plan, p.partition, p.stage_nodes = jp, jp.plan.partition, jp.plan.worker_nodes
        p.calibrate_at = None  # set when the stages start (after any resume)

    def _enter_running(self, reason: str | None = None) -> None:
        """RUNNING on the current partition (after starting, a move or a restart): calibration
        is due after ``calibrate_steps`` more steps where a planned job has room for it."""
        t, n = self.training, self.opts.calibrate_steps
        t.partition_since = t.step_done
        if self.job_plan is not None and n > 0 and len(self.rebalances) < self.opts.max_rebalances \
                and t.step_done + 2 * n <= self.spec.steps:  # worth it: steps remain after
            self.planning.calibrate_at = t.step_done + n
        self._transition(JobState.RUNNING,
                         reason or f"running steps {t.step_done + 1}..{self.spec.steps}")

    def _layout(self, spec: JobSpec | None = None,
                partition: Partition | None = None) -> tuple[Partition, ...]:
        """Per stage worker, the layer ranges of its chunks (one range per worker unless the
        schedule holds several chunks per worker): of the current partition, or of ``partition``
        of the resolved ``spec``."""
        spec, partition = spec or self.spec, partition or self.partition
        return worker_layout(partition, spec.placement())

    def _cluster_gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0))

    def _choose_gpus(self) -> float:
        """Choose (when the stages start) the GPUs every stage actor of this job takes."""
        self.stages.gpus_per_stage = stage_gpus(self.opts.gpus_per_stage, self._cluster_gpus(),
                                                self.spec.num_stages)
        return self.stages.gpus_per_stage

    # -- reporting -------------------------------------------------------------------------
    def _request_slots(self) -> None:
        """Elastic jobs: when the cluster offers fewer slots than ``elastic.max_stages``, ask
        Ray's autoscaler for room for the whole job (a KubeRay cluster scales up; the joining
        nodes are then picked up by the watcher). Withdrawn when the job ends. Ray keeps one
        request per cluster: the latest caller's."""
        e = self.spec.elastic
        if e is None:
            return
        want = e.max_stages if len(self.planning.slots) < e.max_stages else 0
        if want == self.elastic.requested:
            return
        self._ask(want)
        self.elastic.requested = want
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
        """Move to ``new`` (``IllegalTransitionError`` if the table does not allow it)."""
        check_transition(self.state, new)
        logger.info("job %s: %s -> %s (%s)", self.spec.name, self.state.value, new.value, reason)
        self.state, self.reason = new, reason
        if new.is_terminal and self.elastic.requested:
            try:
                self._ask(0)
                self.elastic.requested = 0
            except Exception:  # the cluster is gone: nothing to withdraw
                logger.debug("cannot withdraw the autoscaler request", exc_info=True)
        self._emit("state", f"{new.value}: {reason}", state=new.value)

    def _emit(self, kind: str, message: str, topic: str | None = None, **data: Any) -> None:
        ev = Event(time.time(), kind, message, data, topic)
        self.events.append(ev)
        if self.on_event:
            self.on_event(ev)


def _mean_per_stage(rows: list[tuple[float, ...]], num_stages: int) -> list[float]:
    """Per stage, the mean over steps (rows: one tuple per step)."""
    if not rows or any(len(r) < num_stages for r in rows):
        return []
    return [sum(r[s] for r in rows) / len(rows) for s in range(num_stages)]
