"""The job controller: one per job, an explicit state machine driven by ``step()``.

CREATED -> STARTING -> RUNNING <-> CHECKPOINTING -> STOPPING -> SUCCEEDED
                 ^          |
                 +- REBALANCING       (any non-terminal state) -> FAILED | CANCELLED

The controller plans the partition, places one stage actor per stage, runs the schedule in runs
that end at checkpoint boundaries (async schedules drain there, so a checkpoint is a consistent
state), collects metrics, checkpoints and shuts down. Activations and gradients never pass
through it: it starts each run and observes progress.

Calibration (planned jobs): the first ``calibrate_steps`` steps are one run; the stages'
measured busy time per step is then compared with the plan's prediction, the layer costs are
corrected by it and re-planned (``planner.decide_rebalance``). A partition that cuts the
bottleneck by more than ``min_gain`` is moved to at once: REBALANCING checkpoints the drained
pipeline, stops the stages and STARTING starts the new ones from that checkpoint. At most
``max_rebalances`` moves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from service import checkpoint as ckpt
from service.elastic import Watcher, decide, observe, usable_nodes
from service.metrics import JobSummary, RunFigures, StepMetrics, run_figures, step_metrics
from service.nodes import cluster_nodes, slots_of
from service.partition import InfeasibleError, LayerCost, Partition, Slot, uniform
from service.planner import JobPlan, Rebalance, decide_rebalance, plan_job
from service.profiler import ProfileCache, profile_cluster
from service.runtime import pipewave_home
from service.schedules import make_schedule
from service.spec import JobSpec
from workers.models import num_layers
from workers.stage import Progress, Run, RunReport, StageWorker

logger = logging.getLogger(__name__)


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
    node_slots: dict[str, int] | None = None  # plan within these free slots per node (a shared
    # cluster: the service passes what other jobs leave free); None: every node's slots


class JobController:
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
        self._restart_layout: list[tuple[int, int]] = []  # the old partition of those payloads
        self._waiting_since = 0.0
        self._excluded: set[str] = set()  # nodes a recovery saw die, before Ray marks them dead
        self._requested = 0  # stage slots asked of the autoscaler (0: none)
        self._prestarted: dict[int, Any] = {}  # stage of the decided move -> its new actor
        self._seen_step = 0  # the furthest step any stage reported (progress polls)
        self._cancel: str | None = None
        self._t_created = time.time()
        self._t_running = 0.0
        self._train_s = 0.0

    # -- driving ---------------------------------------------------------------------------
    def cancel(self, reason: str = "cancelled by user") -> None:
        self._cancel = reason

    def step(self) -> JobState:
        """Perform one transition; errors move the job to FAILED (never raise)."""
        if self.state.is_terminal:
            return self.state
        try:
            if self._cancel is not None:
                self._teardown()
                self._transition(JobState.CANCELLED, self._cancel)
            else:
                handler = getattr(self, f"_on_{self.state.value.lower()}")
                handler()
        except KeyboardInterrupt:
            self._teardown()
            self._transition(JobState.CANCELLED, "interrupted (Ctrl-C)")
        except Exception as err:  # a failed job reports why, and its actors are stopped
            logger.exception("job %s failed in %s", self.spec.name, self.state.value)
            self._teardown()
            self._transition(JobState.FAILED, error_line(err))
        return self.state

    def run(self) -> JobSummary:
        while not self.state.is_terminal:
            self.step()
        return self.summary()

    # -- transitions -----------------------------------------------------------------------
    def _on_created(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        prior: dict[str, Any] = {}
        self._record = ckpt.latest(self.output) if self.opts.resume else None
        if self._record is not None:
            prior = self._check_checkpoint(self._record)
        if self.request.partition == "auto":
            self._plan(prior)
        else:
            self.partition = uniform(num_layers(self.spec.model), self.spec.num_stages)
        n = num_layers(self.spec.model)
        cuts = [0, *(b for _, b in self.partition)]
        if [a for a, _ in self.partition] != cuts[:-1] or cuts[-1] != n or sorted(set(cuts)) != cuts \
                or len(self.partition) != self.spec.num_stages:
            raise JobError(f"internal: partition {list(self.partition)} does not cut the model's "
                           f"{n} layers into {self.spec.num_stages} stages")
        self._transition(JobState.STARTING, f"{self.spec.num_stages} stages, "
                                            f"{self.spec.num_microbatches} microbatches, "
                                            f"partition {list(self.partition)}")

    def _plan(self, prior: dict[str, Any]) -> None:
        """Profile the layers on the cluster (cached) and place them with the exact planner.
        Counts the request leaves "auto" are chosen; resuming, the checkpoint's counts are kept
        while the cluster still fits them (re-planned when it does not)."""
        req = self.request
        profile_dir = self.opts.profile_dir or pipewave_home() / "profiles"
        nodes = cluster_nodes()
        profile = profile_cluster(req, ProfileCache(profile_dir), nodes, self.opts.cpus_per_stage)
        slots = slots_of(nodes, profile.speeds, self.opts.cpus_per_stage, self.opts.memory_fraction)
        if self.opts.node_slots is not None:  # a shared cluster: only what is free for this job
            slots = _within(slots, self.opts.node_slots)
            if not slots:
                raise JobError("no free stage slot on the cluster for this job")
        stages = None if req.stages == "auto" else req.stages
        microbatches = None if req.microbatches == "auto" else req.microbatches
        bound = req.elastic.max_stages if req.elastic is not None else req.max_stages
        try:
            try:
                jp = plan_job(req, profile.layers, slots, max_stages=bound,
                              stages=stages or prior.get("stages"),
                              microbatches=microbatches or prior.get("microbatches"))
            except InfeasibleError as err:
                if not prior or (stages and microbatches):
                    raise
                self._emit("info", f"the checkpoint's {prior['stages']} stages x "
                                   f"{prior['microbatches']} microbatches no longer fit ({err}); "
                                   f"re-planning")
                jp = plan_job(req, profile.layers, slots, stages=stages,
                              microbatches=microbatches, max_stages=bound)
        except InfeasibleError as err:
            raise JobError(f"cannot place the job: {err}") from None
        self.spec = req.resolve(jp.stages, jp.microbatches)
        self._adopt(jp)
        self._layers, self._slots, self._speeds = profile.layers, slots, profile.speeds
        self._request_slots()
        self._emit("plan", f"planned {jp.stages} stages: {jp.reason}", plan=jp.to_dict())

    def _adopt(self, jp: JobPlan) -> None:
        self.job_plan, self.partition = jp, jp.plan.partition
        tmp = self.output / "plan.json.tmp"  # the plan in force, beside metrics.jsonl
        tmp.write_text(json.dumps({"spec": self.spec.model_dump(mode="json"), **jp.to_dict()}, indent=2))
        tmp.replace(self.output / "plan.json")
        self.stage_nodes = [sp.node_id for sp in jp.plan.stages]
        self._calibrate_at = None  # set when the stages start (after any resume)

    def _on_starting(self) -> None:
        self._start_actors()
        if self._record is not None:
            self._resume(self._record)
        else:
            self._start_fresh()
        if self.step_done >= self.spec.steps:
            raise JobError(f"the checkpoint in {self.output} is at step {self.step_done}, "
                           f"the job asks for {self.spec.steps} steps: nothing to do")
        self._t_running = self._t_running or time.time()
        self._enter_running()

    def _start_actors(self) -> None:
        """One stage actor per stage of ``self.partition``, placed as planned (or packed in a
        placement group for a uniform split), their stage-to-stage group connected."""
        S = self.spec.num_stages
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= S else 0
        bundle = {"CPU": self.opts.cpus_per_stage, **({"GPU": gpus} if gpus else {})}
        strategies: list[Any]
        if self.stage_nodes:  # planned: each stage on the node the planner chose for it
            strategies = [NodeAffinitySchedulingStrategy(n, soft=False) for n in self.stage_nodes]
        else:  # uniform: reserve all stages at once, packed
            self.pg = placement_group([bundle] * S, strategy="PACK", name=f"pipewave-{self.spec.name}")
            if not _wait(self.pg.ready(), self.opts.ready_timeout_s):
                raise JobError(f"the cluster cannot place {S} stages of {bundle} within "
                               f"{self.opts.ready_timeout_s:.0f}s (resources: {ray.cluster_resources()})")
            strategies = [PlacementGroupSchedulingStrategy(self.pg, s) for s in range(S)]
        self.actors = [self._new_actor(s, strategies[s], gpus) for s in range(S)]
        self._connect()

    def _new_actor(self, s: int, strategy: Any, gpus: int, spec: JobSpec | None = None,
                   partition: Partition | None = None) -> Any:
        """Stage ``s`` of the current partition (or of ``partition`` of the resolved ``spec``)
        in a new actor (fresh weights)."""
        spec, partition = spec or self.spec, partition or self.partition
        S = spec.num_stages
        cls = ray.remote(concurrency_groups={"control": 2})(StageWorker)  # type: ignore[call-overload]
        threads = self.opts.threads_per_stage or max(1, (os.cpu_count() or 1) // S)
        start, end = partition[s]
        return cls.options(num_cpus=self.opts.cpus_per_stage, num_gpus=gpus, max_restarts=0,
                           scheduling_strategy=strategy).remote(
            spec.model_dump_json(), s, S, start, end, threads)

    def _connect(self) -> None:
        """Form the stages' point-to-point group (after every start or move)."""
        S = self.spec.num_stages
        infos = ray.get([a.info.remote() for a in self.actors], timeout=self.opts.ready_timeout_s)
        port = ray.get(self.actors[0].rendezvous_port.remote())
        ray.get([a.init_comm.remote(infos[0]["ip"], port) for a in self.actors],
                timeout=self.opts.ready_timeout_s)
        where = ", ".join(f"{i['stage']}: layers {i['layers'][0]}-{i['layers'][1] - 1} on {i['device']}"
                          for i in infos)
        self._emit("info", f"{S} stages ready ({where})", stages=[
            {k: i[k] for k in ("stage", "layers", "node_id", "device", "params")} for i in infos])

    def _enter_running(self) -> None:
        self.partition_since = self.step_done
        n = self.opts.calibrate_steps
        if self.job_plan is not None and n > 0 and len(self.rebalances) < self.opts.max_rebalances \
                and self.step_done + 2 * n <= self.spec.steps:  # worth it: steps remain after
            self._calibrate_at = self.step_done + n
        self._transition(JobState.RUNNING, f"running steps {self.step_done + 1}..{self.spec.steps}")

    def _on_running(self) -> None:
        every = self.spec.checkpoint.every_steps
        end = self.spec.steps
        if every:
            end = min(end, (self.step_done // every + 1) * every)
        if self._calibrate_at is not None:
            end = min(end, self._calibrate_at)
        run_steps = self.opts.max_run_steps or (
            self.opts.elastic_run_steps if self.spec.elastic is not None else None)
        if run_steps:
            end = min(end, self.step_done + run_steps)
        try:
            self._run_steps(self.step_done, end - self.step_done)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            # a stage's peers see its death first, as a closed connection: recover only when a
            # stage or its node is really gone (any other error is the job's own)
            if self.spec.elastic is None or not self._stage_lost():
                raise
            self._transition(JobState.RECOVERING, f"a stage died: {error_line(err)}")
            return
        if self.spec.elastic is not None and self.step_done < self.spec.steps:
            self._replicate()
        if self.step_done == self._calibrate_at:
            self._calibrate_at = None
            if self._calibrate():
                self._transition(JobState.REBALANCING, self.rebalances[-1].reason)
                return
        if (self._change is not None or self._move is not None) and self.step_done < self.spec.steps \
                and self._react():
            assert self._move is not None
            self._transition(JobState.REBALANCING, self._move[2])
            return
        if (every and self.step_done % every == 0) or self.step_done >= self.spec.steps:
            self._transition(JobState.CHECKPOINTING, f"step {self.step_done}")

    def _calibrate(self) -> bool:
        """Decide whether the measured stage times call for another partition (and adopt it)."""
        assert self.job_plan is not None
        steps = self.metrics[self.partition_since + 1 - self.first_step:]  # first step: warmup
        measured = _mean_per_stage([m.stage_cpu_s for m in steps], self.spec.num_stages)
        decision = decide_rebalance(self.spec, self._layers, self._slots, self.job_plan, measured,
                                    min_gain=self.opts.min_gain)
        logger.info("job %s calibration: %s", self.spec.name, decision.reason)
        self._emit("calibration", decision.reason, factors=list(decision.factors),
                   moves=decision.plan is not None)
        if decision.plan is None:
            return False
        self.rebalances.append(decision)
        self._move = (decision.plan, decision.layers, decision.reason)
        return True

    # -- failures --------------------------------------------------------------------------
    def _replicate(self) -> None:
        """At a drained run boundary: every stage exports its state (kept in its node's object
        store) and the next stage on another node pulls a copy into its own memory, in the
        background. A node that dies loses at most the steps since."""
        ready, _ = ray.wait(self._replicating, num_returns=len(self._replicating), timeout=0)
        if len(ready) < len(self._replicating):
            return  # the previous copy is still on its way: skip this one
        if self._pending is not None and _all_ok(self._replicating):
            self._snapshot = self._pending  # every copy of that round arrived
        refs = [a.export_state.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=self.opts.ready_timeout_s, fetch_local=False)
        S, nodes = len(self.actors), list(self.stage_nodes) or [""] * len(self.actors)
        holders = []
        for s in range(S):
            others = [(s + k) % S for k in range(1, S) if nodes[(s + k) % S] != nodes[s]]
            holders.append(others[0] if others else (s + 1) % S)
        self._replicating = [self.actors[h].hold_replica.remote(s, self.step_done, [refs[s]])
                             for s, h in enumerate(holders)]
        self._pending = (self.step_done, refs, nodes, holders)

    def _stage_lost(self, within_s: float = 10.0) -> bool:
        """Whether a stage's actor or node is dead (polled for ``within_s``: Ray needs a moment
        to notice a lost node)."""
        deadline = time.time() + within_s
        while True:
            alive = {n for n, st in observe().items() if st.alive}
            if not set(self.stage_nodes) <= alive:
                return True
            for a in self.actors:
                try:
                    ray.get(a.get_progress.options(concurrency_group="control").remote(), timeout=5)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    return True
            if time.time() > deadline:
                return False
            time.sleep(0.5)

    def _on_recovering(self) -> None:
        """Stages died (their node is gone): find each old stage's latest state that survived,
        its own export if its node lives, else the copy its holder keeps; stop the old stages;
        restart on the nodes left (or wait for nodes). Without a full set of copies, the latest
        checkpoint."""
        # a node is gone if Ray says so, or if one of our stages on it died (Ray's node health
        # check may take many seconds to notice a lost node; the stage's death shows at once)
        alive = {n for n, st in observe().items() if st.alive}
        pings = [a.get_progress.options(concurrency_group="control").remote() for a in self.actors]
        for node, ping in zip(self.stage_nodes, pings, strict=True):
            try:
                ray.get(ping, timeout=5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                alive.discard(node)
        self._excluded = set(self.stage_nodes) - alive
        # the newest round every stage can be restored from: its own export where its node
        # lives, else the copy its holder keeps (a round need not have finished everywhere)
        found: list[Any] = []
        step, missing = 0, "no copy of the state was made yet"
        for snap in (self._pending, self._snapshot):
            if snap is None:
                continue
            step, refs, nodes, holders = snap
            found, missing = [], ""
            for s in range(len(refs)):
                h = holders[s]
                if nodes[s] in alive:
                    found.append(refs[s])  # (the primary copy: still in that node's store)
                    continue
                try:
                    held = nodes[h] in alive and ray.get(self.actors[h].has_replica.options(
                        concurrency_group="control").remote(s, step), timeout=10)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    held = False
                if not held:
                    missing = (f"stage {s}'s node is gone and its holder (stage {h}) "
                               f"{'is gone too' if nodes[h] not in alive else f'lacks step {step}'}")
                    break
                found.append(self.actors[h].replica.options(
                    concurrency_group="control").remote(s, step))
            if len(found) == len(refs):
                break
        sources: list[Any] | None = found if found and not missing else None
        if sources is not None:
            ready, _ = ray.wait(sources, num_returns=len(sources), timeout=60, fetch_local=False)
            if len(ready) < len(sources):
                missing, sources = "the surviving copies did not arrive within 60 s", None
        lost = max(self._seen_step, self.step_done) - step
        self._move, self._change = None, None  # (a move decided before the failure is moot)
        self._teardown()
        if sources is not None:
            self._restart_from, self._restart_layout = (step, sources), list(self.partition)
            where = f"the state of step {step} (kept on surviving nodes)"
        else:
            self._record = ckpt.latest(self.output)
            if self._record is None:
                raise JobError(f"stages died and no copy of their state survived ({missing})")
            self._restart_from = None
            where = f"the checkpoint of step {self._record.step} (no full copy survived)"
            lost = max(self._seen_step, self.step_done) - self._record.step
        self._emit("recovery", f"recovering from {where}; {lost} step(s) to redo",
                   step=step if sources is not None else self._record.step if self._record else 0,
                   steps_lost=lost, from_replicas=sources is not None)
        self._waiting_since = time.time()
        self._on_waiting()

    def _on_waiting(self) -> None:
        """Start again once the usable nodes offer ``elastic.min_stages`` slots (or time out)."""
        assert self.spec.elastic is not None
        nodes = cluster_nodes(exclude=self._excluded)
        slots = slots_of(nodes, self._speeds, self.opts.cpus_per_stage, self.opts.memory_fraction)
        e = self.spec.elastic
        try:
            jp = plan_job(self.spec, self._layers, slots, microbatches=self.spec.num_microbatches,
                          max_stages=min(e.max_stages, len(slots))) if len(slots) >= e.min_stages \
                else None
            if jp is not None and jp.stages < e.min_stages:
                jp = plan_job(self.spec, self._layers, slots, stages=e.min_stages,
                              microbatches=self.spec.num_microbatches)
        except InfeasibleError:
            jp = None
        if jp is None:
            self._slots = slots
            self._request_slots()
            waited = time.time() - self._waiting_since
            if waited > e.wait_timeout_s:
                raise JobError(f"waited {waited:.0f} s for {e.min_stages} stage slots; "
                               f"the cluster offers {len(slots)}")
            if self.state is not JobState.WAITING:
                self._transition(JobState.WAITING, f"{len(slots)} slot(s) usable, the job needs "
                                                   f"{e.min_stages}")
            time.sleep(self.opts.watch_every_s)
            return
        self.spec = self.spec.resolve(jp.stages, jp.microbatches, keep_bounds=True)
        self._slots = slots
        self._adopt(jp)
        self._start_actors()
        if self._restart_from is not None:
            step, sources = self._restart_from
            ray.get([a.import_state.remote([ref for (a0, b0), ref in
                                            zip(self._restart_layout, sources, strict=True)
                                            if a0 < end and b0 > start])
                     for a, (start, end) in zip(self.actors, self.partition, strict=True)],
                    timeout=self.opts.ready_timeout_s)
            self.step_done = step
        else:
            assert self._record is not None
            self._resume(self._record)
        self._restart_from, self._snapshot, self._pending, self._replicating = None, None, None, []
        self._seen_step = self.step_done
        # the steps after the restart point are redone: their first measurements go
        self.metrics = [m for m in self.metrics if m.step <= self.step_done]
        self._rewrite_metrics()
        self._figures_since = len(self.figures)
        self.moves += 1
        if self._watcher is not None:
            self._watcher.accept(usable_nodes(observe(), self.opts.cpus_per_stage))
        self._request_slots()
        self._enter_running()
        self._transition(JobState.RUNNING, f"restarted at step {self.step_done} on "
                                           f"{self.spec.num_stages} stages {list(self.partition)}")

    def _rewrite_metrics(self) -> None:
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step_done]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)

    # -- elasticity ------------------------------------------------------------------------
    def _watch(self) -> None:
        """Read the node table (at most every ``watch_every_s``); note a confirmed change."""
        if self.spec.elastic is None or self.job_plan is None:
            return
        now = time.time()
        if now - self._last_watch < self.opts.watch_every_s:
            return
        self._last_watch = now
        usable = usable_nodes(observe(), self.opts.cpus_per_stage)
        if self._watcher is None:
            self._watcher = Watcher(usable, self.opts.confirm)
            return
        change = self._watcher.feed(usable)
        if change is not None:
            self._change = change
            self._emit("membership", f"{len(change)} usable node(s) now", nodes=sorted(change))
            if self._move is None and not self._prestarted:
                self._decide_move()

    def _react(self) -> bool:
        """Decide what the confirmed membership change means for the job; True: move."""
        if self._move is None:
            self._decide_move()
        return self._move is not None

    def _decide_move(self) -> None:
        """At once when a change is confirmed (during a run): decide, and start the actors a
        move needs on nodes the job does not use yet, so they are ready when the run ends."""
        assert self.spec.elastic is not None and self.job_plan is not None
        change, self._change = self._change, None
        assert change is not None
        nodes = [n for n in cluster_nodes() if n.node_id in change]
        slots = slots_of(nodes, self._speeds, self.opts.cpus_per_stage, self.opts.memory_fraction)
        d = decide(self.spec, self._layers, slots, self.job_plan,
                   min_stages=self.spec.elastic.min_stages, max_stages=self.spec.elastic.max_stages,
                   min_gain=self.opts.elastic_min_gain)
        logger.info("job %s membership change: %s (%s)", self.spec.name, d.action, d.reason)
        self._emit("elastic", f"{d.action}: {d.reason}", action=d.action)
        if d.action != "move" or d.plan is None:
            return
        self._slots = slots
        self._move = (d.plan, self._layers, d.reason)
        spec = self.spec.resolve(d.plan.stages, d.plan.microbatches, keep_bounds=True)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= spec.num_stages else 0
        used = set(self.stage_nodes)
        for s, sp in enumerate(d.plan.plan.stages):
            if sp.node_id not in used:  # (nodes we use keep their actors: reconfigured in place)
                self._prestarted[s] = self._new_actor(
                    s, NodeAffinitySchedulingStrategy(sp.node_id, soft=False), gpus, spec,
                    d.plan.plan.partition)

    def _on_rebalancing(self) -> None:
        """Move the drained pipeline to the new partition, live: every stage exports its state
        into its node's object store, the new stages pull the layers they hold directly from
        there (never through the driver or disk), and training goes on at the same step. With
        ``verify_moves``, a digest of every tensor of the state before and after must agree."""
        assert self._move is not None
        new_plan, costs, why = self._move
        self._move = None
        t0 = time.time()
        old_actors, before = self.actors, list(self.partition)
        digest = self._digest() if self.opts.verify_moves else None
        old_nodes = list(self.stage_nodes)
        self._orphans = list(old_actors)  # stopped by _teardown if the move fails half-way
        exports = [a.export_state.remote() for a in old_actors]
        # wait for the exports without fetching them here: they stay in the stages' object stores
        ready, _ = ray.wait(exports, num_returns=len(exports), timeout=self.opts.ready_timeout_s,
                            fetch_local=False)
        if len(ready) < len(exports):
            raise JobError(f"stages did not export their state within {self.opts.ready_timeout_s:.0f}s")
        ray.get([a.shutdown.remote() for a in old_actors], timeout=self.opts.ready_timeout_s)
        self._layers = costs  # later calibrations correct these
        self.spec = self.spec.resolve(new_plan.stages, new_plan.microbatches, keep_bounds=True)
        self._adopt(new_plan)
        # a stage on a node that already has one of ours takes that actor over (no new process);
        # the others start on their (new) nodes
        spare: dict[str, list[Any]] = {}
        for node, actor in zip(old_nodes, old_actors, strict=True):
            spare.setdefault(node, []).append(actor)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= self.spec.num_stages else 0
        spec_json = self.spec.model_dump_json()
        self.actors, calls = [], []
        for s, (start, end) in enumerate(self.partition):
            refs = [ref for (a0, b0), ref in zip(before, exports, strict=True) if a0 < end and b0 > start]
            node = self.stage_nodes[s]
            if spare.get(node):
                actor = spare[node].pop()
                calls.append(actor.reconfigure.remote(spec_json, s, self.spec.num_stages, start, end,
                                                      refs))
            else:
                actor = self._prestarted.pop(s, None) or self._new_actor(
                    s, NodeAffinitySchedulingStrategy(node, soft=False), gpus)
                calls.append(actor.import_state.remote(refs))
            self.actors.append(actor)
        moved = ray.get(calls, timeout=self.opts.ready_timeout_s)
        for left in [*spare.values(), list(self._prestarted.values())]:
            for actor in left:  # nodes the job leaves (their state has been taken), spares
                ray.kill(actor)
        self._orphans, self._prestarted = [], {}
        self._connect()
        if digest is not None and self._digest() != digest:
            raise JobError(f"the state changed while moving from {before} to {list(self.partition)}")
        pause = time.time() - t0
        self._emit("rebalance", f"moved from {before} to {[list(b) for b in self.partition]} in "
                                f"{pause:.2f} s at step {self.step_done}: {why}",
                   before=[list(b) for b in before], after=[list(b) for b in self.partition],
                   pause_s=pause, bytes_moved=sum(moved), step=self.step_done, reason=why,
                   verified=digest is not None)
        self._emit("plan", f"re-planned {new_plan.stages} stages: {new_plan.reason}",
                   plan=new_plan.to_dict())
        self.moves += 1
        self._figures_since = len(self.figures)
        if self._watcher is not None:
            self._watcher.accept(usable_nodes(observe(), self.opts.cpus_per_stage))
        self._request_slots()
        self._enter_running()
        self._transition(JobState.RUNNING, f"partition {list(self.partition)}")

    def _digest(self) -> dict[str, str]:
        """Per-tensor digests of the whole job's state (all stages' weights, older versions,
        optimizer state), keyed by global parameter name."""
        merged: dict[str, str] = {}
        for d in ray.get([a.state_digest.remote() for a in self.actors],
                         timeout=self.opts.ready_timeout_s):
            merged.update(d)
        return merged

    def _on_checkpointing(self) -> None:
        self._save_checkpoint()
        if self.step_done >= self.spec.steps:
            self._transition(JobState.STOPPING, "all steps done")
        else:
            self._transition(JobState.RUNNING, f"resuming at step {self.step_done + 1}")

    def _on_stopping(self) -> None:
        self._teardown()
        self._transition(JobState.SUCCEEDED, f"{self.step_done} steps")

    # -- actions ---------------------------------------------------------------------------
    def _run_steps(self, first: int, count: int) -> None:
        M = self.spec.num_microbatches
        sched = make_schedule(self.spec.schedule, self.spec.num_stages, M, count,
                              vertical_sync=self.spec.vertical_sync)
        scale = 1.0 if self.spec.schedule == "pipedream" else 1.0 / M
        t0 = time.time()
        refs = [a.run.remote(Run(sched.stage_actions(s), first, scale, sched.carry_versions))
                for s, a in enumerate(self.actors)]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=self.opts.poll_s)
            for ref in done:
                ray.get(ref)  # raises at once if a stage failed
            if self._cancel is not None:
                raise KeyboardInterrupt
            self._poll_progress()
            self._watch()
        reports: list[RunReport] = ray.get(refs)
        self._train_s += time.time() - t0
        self.last_run = reports
        new = step_metrics(reports, first, count, M, self.spec.batch_size, t0)
        if self.job_plan is not None:  # the plan's figure beside each measured one
            new = [replace(m, predicted_stage_busy_s=self.job_plan.predicted_stage_busy_s) for m in new]
        self.metrics.extend(new)
        self.figures.append(run_figures(reports))
        self.step_done = first + count
        with (self.output / "metrics.jsonl").open("a") as f:
            for m in new:
                f.write(json.dumps(m.to_dict()) + "\n")
        if self.on_run:
            self.on_run(new, reports, first)
        if self.on_progress:
            self.on_progress(self.step_done, new[-1].loss)

    def _poll_progress(self) -> None:
        if not self.on_progress and self.spec.elastic is None:
            return
        p: Progress = ray.get(self.actors[-1].get_progress.options(
            concurrency_group="control").remote())
        self._seen_step = max(self._seen_step, p.step)
        if p.step > self.step_done and self.on_progress:
            self.on_progress(p.step, p.loss)

    def _save_checkpoint(self) -> None:
        d = ckpt.step_dir(self.output, self.step_done)
        d.mkdir(parents=True, exist_ok=True)
        files = ray.get([a.save.remote(str(d / f"stage-{s}.pt")) for s, a in enumerate(self.actors)])
        stages = [{"stage": s, "layers": list(self.partition[s]), "file": f["file"],
                   "bytes": f["bytes"]} for s, f in enumerate(files)]
        ckpt.write_manifest(d, self.step_done, self.spec.model_dump(mode="json"), stages)
        self.checkpoints.append(str(d))
        self._emit("checkpoint", f"checkpoint at step {self.step_done}", path=str(d))

    def _check_checkpoint(self, record: ckpt.CheckpointRecord) -> dict[str, Any]:
        """Refuse another job's checkpoint; return its spec (resolved stages, microbatches)."""
        manifest = ckpt.read_manifest(record.path)
        mine = _flat(self.request.model_dump(mode="json"))
        theirs = _flat(dict(manifest["spec"]))
        free = ("steps", "checkpoint.", "partition", "max_stages", "stages", "microbatches")
        differ = sorted(k for k in mine.keys() | theirs.keys()
                        if not k.startswith(free) and mine.get(k) != theirs.get(k))
        if differ:
            raise JobError(f"{record.path} belongs to a different job (fields differ: "
                           f"{', '.join(differ)}); use another --output or --no-resume")
        return dict(manifest["spec"])

    def _resume(self, record: ckpt.CheckpointRecord) -> None:
        """Load the checkpoint into the stages; every stage reads the files that hold its layers,
        so the checkpoint's partition (and stage count) need not be this run's."""
        manifest = ckpt.read_manifest(record.path)
        files = [(tuple(e["layers"]), str(record.path / e["file"])) for e in manifest["stages"]]
        ray.get([a.load.remote([f for (a0, b0), f in files if a0 < end and b0 > start])
                 for a, (start, end) in zip(self.actors, self.partition, strict=True)])
        self.step_done = record.step
        if not self.metrics:  # (not when this job re-partitions itself)
            self.first_step = record.step
        before = [list(layers) for layers, _ in files]
        moved = f" (re-partitioned from {before})" if before != [list(b) for b in self.partition] else ""
        self._emit("info", f"resumed from checkpoint at step {record.step}{moved}",
                   path=str(record.path))

    def _start_fresh(self) -> None:
        """Training from step 0: earlier checkpoints and metrics in the output are another run's."""
        old = ckpt.latest(self.output)
        if old is not None:
            ckpt.prune(self.output, keep=0)
            self._emit("info", f"starting from step 0: removed the earlier run's checkpoints "
                               f"(up to step {old.step}) from {self.output}")
        (self.output / "metrics.jsonl").unlink(missing_ok=True)

    def _teardown(self) -> None:
        for a in [*self.actors, *self._orphans, *self._prestarted.values()]:
            try:
                ray.kill(a)
            except Exception:  # already dead
                logger.debug("actor already gone", exc_info=True)
        self.actors, self._orphans, self._prestarted = [], [], {}
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:
                logger.debug("placement group already removed", exc_info=True)
            self.pg = None

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
        from ray.autoscaler.sdk import request_resources

        bundle: dict[str, float] = {"CPU": self.opts.cpus_per_stage}
        request_resources(bundles=[bundle] * want)
        self._requested = want
        self._emit("info", f"asked the autoscaler for room for {want} stages" if want
                   else "withdrew the autoscaler request", bundles=want)

    def _transition(self, new: JobState, reason: str) -> None:
        logger.info("job %s: %s -> %s (%s)", self.spec.name, self.state.value, new.value, reason)
        self.state, self.reason = new, reason
        if new.is_terminal and self._requested:
            try:
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])
                self._requested = 0
            except Exception:  # the cluster is gone: nothing to withdraw
                logger.debug("cannot withdraw the autoscaler request", exc_info=True)
        self._emit("state", f"{new.value}: {reason}", state=new.value)

    def _emit(self, kind: str, message: str, **data: Any) -> None:
        ev = Event(time.time(), kind, message, data)
        self.events.append(ev)
        if self.on_event:
            self.on_event(ev)

    def summary(self) -> JobSummary:
        done = self.metrics
        samples = self.spec.batch_size * len(done)
        figs = self.figures[self._figures_since:]
        # the current partition's steps, its first one (warmup) left out where there are more
        mine = done[self.partition_since - self.first_step:]
        current = mine[1:] or mine
        S = self.spec.stages if isinstance(self.spec.stages, int) else 0  # 0: never planned
        bubble = [sum(f.bubble[s] * f.wall_s for f in figs) / sum(f.wall_s for f in figs)
                  for s in range(S)] if figs else []
        return JobSummary(
            name=self.spec.name, schedule=self.spec.schedule, stages=S,
            state=self.state.value, steps=self.step_done,
            final_loss=done[-1].loss if done else None,
            samples_per_s=samples / self._train_s if self._train_s > 0 else 0.0,
            train_s=self._train_s,
            startup_s=(self._t_running - self._t_created) if self._t_running else 0.0,
            first_step=self.first_step, bubble=bubble,
            peak_versions=[max(f.peak_versions[s] for f in figs) for s in range(S)] if figs else [],
            checkpoints=self.checkpoints, output=str(self.output), reason=self.reason,
            predicted_stage_busy_s=list(self.job_plan.predicted_stage_busy_s) if self.job_plan else [],
            measured_stage_busy_s=_mean_per_stage([m.stage_busy_s for m in current], S),
            measured_stage_cpu_s=_mean_per_stage([m.stage_cpu_s for m in current], S),
            partition=[list(b) for b in self.partition],
            rebalances=self.moves,
        )


def _within(slots: list[Slot], node_slots: dict[str, int]) -> list[Slot]:
    """At most ``node_slots[node]`` of each node's slots (none of a node not named)."""
    taken: dict[str, int] = {}
    out = []
    for sl in slots:
        if taken.get(sl.node_id, 0) < node_slots.get(sl.node_id, 0):
            taken[sl.node_id] = taken.get(sl.node_id, 0) + 1
            out.append(sl)
    return out


def _mean_per_stage(rows: list[tuple[float, ...]], num_stages: int) -> list[float]:
    """Per stage, the mean over steps (rows: one tuple per step)."""
    if not rows or any(len(r) < num_stages for r in rows):
        return []
    return [sum(r[s] for r in rows) / len(rows) for s in range(num_stages)]


def _all_ok(refs: list[Any], timeout: float = 0.0) -> bool:
    """Whether every call finished without an error (within ``timeout``)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if len(ready) < len(refs):
        return False
    try:
        ray.get(refs)
    except Exception:
        return False
    return True


def _wait(ref: Any, timeout: float) -> bool:
    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    if isinstance(err, ray.exceptions.RayTaskError):
        text = str(err.cause) if err.cause is not None else text.splitlines()[-1]
    elif isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed:
        # the creation task's traceback is in the message; its last line names the cause
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = f"a stage failed to start: {lines[-1]}" if lines else text
    first = text.splitlines()[0] if text else type(err).__name__
    return f"{type(err).__name__}: {first}" if not isinstance(err, JobError) else first


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
