"""The job controller: one per job, an explicit state machine driven by ``step()``.

The states and the transitions between them are data: ``control.states`` (its docstring draws
the diagram).

The controller plans the partition, places one stage actor per stage, runs the schedule in runs
that end at checkpoint boundaries (async schedules drain there, so a checkpoint is a consistent
state), collects metrics, checkpoints and shuts down. Activations and gradients never pass
through it: it starts each run and observes progress.

``JobController`` (here) is the state machine itself: ``handlers`` maps every non-terminal
state to its handler, ``step()`` runs the current state's handler once, and every transition is
checked against ``control.states.TRANSITIONS`` (an illegal one raises). An error in a handler
fails the job (FAILED, with one readable line); ``cancel()`` (from any thread) ends it CANCELLED
with the cancel's reason, at once between handlers and within a run at its next poll; Ctrl-C
(``KeyboardInterrupt``) ends it CANCELLED as "interrupted (Ctrl-C)".

The parts of the controller are in their own modules, each a class the next builds on:
``control.states`` (the states and the transition table), ``control.context`` (the state the
controller keeps, as typed records), ``control.job`` (options, events, the shared steps),
``control.stages`` (the stage actors), ``control.moves`` (calibration and live moves:
REBALANCING), ``control.recovery`` (elastic jobs' replicas, RECOVERING and WAITING).
``JobState``, ``JobError``, ``Event``, ``ControllerOptions`` and ``error_line`` are importable
from here as before.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any

import ray

from pipewave.service.cluster.nodes import cluster_nodes, slots_of
from pipewave.service.cluster.runtime import pipewave_home
from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.job import ControllerOptions, Event, JobError, _mean_per_stage
from pipewave.service.control.metrics import JobSummary, run_figures, step_metrics
from pipewave.service.control.moves import MovesMixin
from pipewave.service.control.recovery import RecoveryMixin
from pipewave.service.control.states import TRANSITIONS, IllegalTransitionError, JobState
from pipewave.service.planning.partition import InfeasibleError, Slot, uniform
from pipewave.service.planning.planner import plan_job
from pipewave.service.planning.profiler import ProfileCache, profile_cluster
from pipewave.service.schedules import make_schedule
from pipewave.service.schedules.transfers import transfer_orders
from pipewave.workers.models import num_layers
from pipewave.workers.stage import Progress, Run, RunReport

__all__ = ["TRANSITIONS", "ControllerOptions", "Event", "IllegalTransitionError", "JobController",
           "JobError", "JobState", "error_line"]

logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a run when the job was cancelled (``JobController.cancel``) meanwhile."""


class JobController(MovesMixin, RecoveryMixin):
    """One job's controller: ``step()`` runs the current state's handler, ``run()`` steps to
    the end."""

    # -- driving ---------------------------------------------------------------------------
    def cancel(self, reason: str = "cancelled by user") -> None:
        """End the job CANCELLED with ``reason`` (safe from another thread): at the next
        ``step()``, or within a run at its next poll."""
        self._cancel = reason

    @cached_property
    def handlers(self) -> Mapping[JobState, Callable[[], None]]:
        """The handler of every non-terminal state: it does that state's work and moves on
        (or stays, to be called again)."""
        return {JobState.CREATED: self._on_created, JobState.STARTING: self._on_starting,
                JobState.RUNNING: self._on_running, JobState.CHECKPOINTING: self._on_checkpointing,
                JobState.REBALANCING: self._on_rebalancing,
                JobState.RECOVERING: self._on_recovering, JobState.WAITING: self._on_waiting,
                JobState.STOPPING: self._on_stopping}

    def step(self) -> JobState:
        """Run the current state's handler once; errors move the job to FAILED, a cancel to
        CANCELLED (never raises)."""
        if self.state.is_terminal:
            return self.state
        try:
            if self._cancel is not None:
                raise Cancelled
            self.handlers[self.state]()
        except Cancelled:
            self._end(JobState.CANCELLED, self._cancel or "cancelled")
        except KeyboardInterrupt:
            self._end(JobState.CANCELLED, "interrupted (Ctrl-C)")
        except Exception as err:  # a failed job reports why, and its actors are stopped
            logger.exception("job %s failed in %s", self.spec.name, self.state.value)
            self._end(JobState.FAILED, error_line(err))
        return self.state

    def _end(self, state: JobState, reason: str) -> None:
        """Stop the stages and end the job in ``state`` (unless a handler already ended it)."""
        self._teardown()
        if not self.state.is_terminal:
            self._transition(state, reason)

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
            self.planning.partition = uniform(num_layers(self.spec.model_settings),
                                              self.spec.num_stages * self.spec.chunks_per_stage)
        n, chunks = num_layers(self.spec.model_settings), self.spec.num_stages * self.spec.chunks_per_stage
        cuts = [0, *(b for _, b in self.partition)]
        if [a for a, _ in self.partition] != cuts[:-1] or cuts[-1] != n or sorted(set(cuts)) != cuts \
                or len(self.partition) != chunks:
            raise JobError(f"internal: partition {list(self.partition)} does not cut the model's "
                           f"{n} layers into {chunks} chunks")
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
        auto = req.schedule == "auto"  # (what the request gave stays as given: None too)
        self.spec = req.resolve(jp.stages, jp.microbatches, schedule=jp.schedule,
                                chunks=jp.chunks if auto or req.chunks == "auto" else req.chunks,
                                waves=jp.waves if auto or req.waves == "auto" else req.waves)
        self._adopt(jp)
        p = self.planning
        p.layers, p.slots, p.speeds = profile.layers, slots, profile.speeds
        self._request_slots()
        self._emit("plan", f"planned {jp.stages} stages: {jp.reason}", plan=jp.to_dict())

    def _on_starting(self) -> None:
        self._start_actors()
        if self._record is not None:
            self._resume(self._record)
        else:
            self._start_fresh()
        if self.step_done >= self.spec.steps:
            raise JobError(f"the checkpoint in {self.output} is at step {self.step_done}, "
                           f"the job asks for {self.spec.steps} steps: nothing to do")
        self.training.t_running = self.training.t_running or time.time()
        self._enter_running()

    def _on_running(self) -> None:
        every = self.spec.checkpoint.every_steps
        end = self.spec.steps
        if every:
            end = min(end, (self.step_done // every + 1) * every)
        p = self.planning
        if p.calibrate_at is not None:
            end = min(end, p.calibrate_at)
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
        if self.step_done == p.calibrate_at:
            p.calibrate_at = None
            if self._calibrate():
                self._transition(JobState.REBALANCING, self.rebalances[-1].reason)
                return
        if (self.elastic.change is not None or p.move is not None) \
                and self.step_done < self.spec.steps and self._react():
            assert p.move is not None
            self._transition(JobState.REBALANCING, p.move.reason)
            return
        if (every and self.step_done % every == 0) or self.step_done >= self.spec.steps:
            self._transition(JobState.CHECKPOINTING, f"step {self.step_done}")

    def _on_checkpointing(self) -> None:
        self._save_checkpoint()
        if self.step_done >= self.spec.steps:
            self._transition(JobState.STOPPING, "all steps done")
        else:
            self._transition(JobState.RUNNING, f"running steps {self.step_done + 1}.."
                                               f"{self.spec.steps} (checkpoint at step "
                                               f"{self.step_done} saved)")

    def _on_stopping(self) -> None:
        self._teardown()
        self._transition(JobState.SUCCEEDED, f"{self.step_done} steps")

    # -- actions ---------------------------------------------------------------------------
    def _run_steps(self, first: int, count: int) -> None:
        M = self.spec.num_microbatches
        sched = make_schedule(self.spec.schedule, self.spec.num_stages, M, count,
                              **self.spec.schedule_args)
        scale = self.spec.traits.grad_scale(M)
        inbound: list[dict[int, list[tuple[str, int, int]]] | None] = [None] * len(self.actors)
        if self.opts.match_in_send_order or self.stages.on_gpus:  # (NCCL matches messages in order)
            sends, _ = transfer_orders(sched)
            inbound = [{src: msgs for (src, dst), msgs in sends.items() if dst == s}
                       for s in range(len(self.actors))]
        t0 = time.time()
        refs = [a.run.remote(Run(sched.stage_actions(s), first, scale, sched.carry_versions,
                                 inbound[s]))
                for s, a in enumerate(self.actors)]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=self.opts.poll_s)
            for ref in done:
                ray.get(ref)  # raises at once if a stage failed
            if self._cancel is not None:
                raise Cancelled  # (step() stops the stages and records the cancel's reason)
            self._poll_progress()
            self._watch()
        reports: list[RunReport] = ray.get(refs)
        t = self.training
        t.train_s += time.time() - t0
        t.last_run = reports
        new = step_metrics(reports, first, count, M, self.spec.batch_size, t0)
        if self.job_plan is not None:  # the plan's figure beside each measured one
            new = [replace(m, predicted_stage_busy_s=self.job_plan.predicted_stage_busy_s) for m in new]
        self.metrics.extend(new)
        self.figures.append(run_figures(reports))
        t.step_done = first + count
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
        placement = self.spec.placement()  # (the loss is on the worker of the last chunk)
        last = self.actors[placement.locate(placement.num_virtual_stages - 1)[0]]
        p: Progress = ray.get(last.get_progress.options(
            concurrency_group="control").remote())
        self.training.seen_step = max(self.training.seen_step, p.step)
        if p.step > self.step_done and self.on_progress:
            self.on_progress(p.step, p.loss)

    # -- reporting -------------------------------------------------------------------------
    def summary(self) -> JobSummary:
        done = self.metrics
        samples = self.spec.batch_size * len(done)
        t = self.training
        figs = self.figures[t.figures_since:]
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
            samples_per_s=samples / t.train_s if t.train_s > 0 else 0.0,
            train_s=t.train_s,
            startup_s=(t.t_running - t.t_created) if t.t_running else 0.0,
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
