"""Live moves: the controller moving a running job to another partition (state REBALANCING).

Calibration (planned jobs): the first ``calibrate_steps`` steps are one run; the stages'
measured busy time per step is then compared with the plan's prediction, the layer costs are
corrected by it and re-planned (``planner.decide_rebalance``). A partition that cuts the
bottleneck by more than ``min_gain`` is moved to at once, live (below). At most
``max_rebalances`` moves.

Elastic jobs: while a run goes on the node table is watched (every ``watch_every_s``); a
membership change seen ``confirm`` times in a row is decided at once (``elastic.decide``) and
the actors a move needs on nodes the job does not use yet are started then, so they are ready
when the run ends. The move itself waits for the run's end (the pipeline drained).

A move is live: every stage exports its state into its node's object store, the new stages pull
the layers they hold directly from there (never through the driver or disk), and training goes
on at the same step. With ``verify_moves``, a digest of every tensor of the state before and
after must agree.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipewave.service.cluster.nodes import cluster_nodes, slots_of
from pipewave.service.control.context import PendingMove
from pipewave.service.control.elastic import Watcher, decide, observe, usable_nodes
from pipewave.service.control.job import JobError, _mean_per_stage
from pipewave.service.control.stages import StagesMixin
from pipewave.service.planning.planner import decide_rebalance
from pipewave.workers.state import overlaps

logger = logging.getLogger("pipewave.service.control.controller")  # one logger for the whole controller


class MovesMixin(StagesMixin):
    """Deciding live moves (calibration, membership changes) and making them."""

    # -- calibration -----------------------------------------------------------------------
    def _calibrate(self) -> bool:
        """Decide whether the measured stage times call for another partition (and adopt it)."""
        assert self.job_plan is not None
        steps = self.metrics[self.partition_since + 1 - self.first_step:]  # first step: warmup
        measured = _mean_per_stage([m.stage_cpu_s for m in steps], self.spec.num_stages)
        p = self.planning
        decision = decide_rebalance(self.spec, p.layers, p.slots, self.job_plan, measured,
                                    min_gain=self.opts.min_gain)
        logger.info("job %s calibration: %s", self.spec.name, decision.reason)
        self._emit("calibration", decision.reason, factors=list(decision.factors),
                   moves=decision.plan is not None)
        if decision.plan is None:
            return False
        p.rebalances.append(decision)
        p.move = PendingMove(decision.plan, decision.layers, decision.reason)
        return True

    # -- elasticity ------------------------------------------------------------------------
    def _watch(self) -> None:
        """Read the node table (at most every ``watch_every_s``); note a confirmed change."""
        if self.spec.elastic is None or self.job_plan is None:
            return
        e, now = self.elastic, time.time()
        if now - e.last_watch < self.opts.watch_every_s:
            return
        e.last_watch = now
        usable = usable_nodes(observe(), self.opts.cpus_per_stage)
        if e.watcher is None:
            e.watcher = Watcher(usable, self.opts.confirm)
            return
        change = e.watcher.feed(usable)
        if change is not None:
            e.change = change
            self._emit("membership", f"{len(change)} usable node(s) now", nodes=sorted(change))
            if self.planning.move is None and not self.stages.prestarted:
                self._decide_move()

    def _react(self) -> bool:
        """Decide what the confirmed membership change means for the job; True: move."""
        if self.planning.move is None:
            self._decide_move()
        return self.planning.move is not None

    def _decide_move(self) -> None:
        """At once when a change is confirmed (during a run): decide, and start the actors a
        move needs on nodes the job does not use yet, so they are ready when the run ends."""
        assert self.spec.elastic is not None and self.job_plan is not None
        p, change, self.elastic.change = self.planning, self.elastic.change, None
        assert change is not None
        nodes = [n for n in cluster_nodes() if n.node_id in change]
        slots = slots_of(nodes, p.speeds, self.opts.cpus_per_stage, self.opts.memory_fraction)
        d = decide(self.spec, p.layers, slots, self.job_plan,
                   min_stages=self.spec.elastic.min_stages, max_stages=self.spec.elastic.max_stages,
                   min_gain=self.opts.elastic_min_gain)
        logger.info("job %s membership change: %s (%s)", self.spec.name, d.action, d.reason)
        self._emit("elastic", f"{d.action}: {d.reason}", action=d.action)
        if d.action != "move" or d.plan is None:
            return
        p.slots = slots
        p.move = PendingMove(d.plan, p.layers, d.reason)
        spec = self.spec.resolve(d.plan.stages, d.plan.microbatches, keep_bounds=True)
        used = set(self.stage_nodes)
        for s, node in enumerate(d.plan.plan.worker_nodes):
            if node not in used:  # (nodes we use keep their actors: reconfigured in place)
                self.stages.prestarted[s] = self._new_actor(
                    s, NodeAffinitySchedulingStrategy(node, soft=False), spec,
                    d.plan.plan.partition)

    def _on_rebalancing(self) -> None:
        """Move the drained pipeline to the new partition, live: every stage exports its state
        into its node's object store, the new stages pull the layers they hold directly from
        there (never through the driver or disk), and training goes on at the same step. With
        ``verify_moves``, a digest of every tensor of the state before and after must agree."""
        move, st = self.planning.move, self.stages
        assert move is not None
        self.planning.move = None
        new_plan, why = move.plan, move.reason
        t0 = time.time()
        old_actors, before, old_layout = self.actors, list(self.partition), self._layout()
        digest = self._digest() if self.opts.verify_moves else None
        old_nodes = list(self.stage_nodes)
        st.orphans = list(old_actors)  # stopped by _teardown if the move fails half-way
        exports = [a.export_state.remote() for a in old_actors]
        # wait for the exports without fetching them here: they stay in the stages' object stores
        ready, _ = ray.wait(exports, num_returns=len(exports), timeout=self.opts.ready_timeout_s,
                            fetch_local=False)
        if len(ready) < len(exports):
            raise JobError(f"stages did not export their state within {self.opts.ready_timeout_s:.0f}s")
        ray.get([a.shutdown.remote() for a in old_actors], timeout=self.opts.ready_timeout_s)
        self.planning.layers = move.layers  # later calibrations correct these
        self.spec = self.spec.resolve(new_plan.stages, new_plan.microbatches, keep_bounds=True)
        self._adopt(new_plan)
        # a stage on a node that already has one of ours takes that actor over (no new process);
        # the others start on their (new) nodes
        spare: dict[str, list[Any]] = {}
        for node, actor in zip(old_nodes, old_actors, strict=True):
            spare.setdefault(node, []).append(actor)
        config = self.spec.stage_config()
        st.actors, calls = [], []
        for s, chunks in enumerate(self._layout()):
            refs = [ref for theirs, ref in zip(old_layout, exports, strict=True)
                    if overlaps(chunks, theirs)]
            node = self.stage_nodes[s]
            if spare.get(node):
                actor = spare[node].pop()
                calls.append(actor.reconfigure.remote(config, s, self.spec.num_stages, chunks,
                                                      refs))
            else:
                actor = st.prestarted.pop(s, None) or self._new_actor(
                    s, NodeAffinitySchedulingStrategy(node, soft=False))
                calls.append(actor.import_state.remote(refs))
            st.actors.append(actor)
        moved = ray.get(calls, timeout=self.opts.ready_timeout_s)
        for left in [*spare.values(), list(st.prestarted.values())]:
            for actor in left:  # nodes the job leaves (their state has been taken), spares
                ray.kill(actor)
        st.orphans, st.prestarted = [], {}
        self._connect()
        if digest is not None and self._digest() != digest:
            raise JobError(f"the state changed while moving from {before} to {list(self.partition)}")
        pause = time.time() - t0
        self._emit("rebalance", f"moved from {before} to {[list(b) for b in self.partition]} in "
                                f"{pause:.2f} s at step {self.step_done}: {why}",
                   before=[list(b) for b in before], after=[list(b) for b in self.partition],
                   stages_before=len(old_layout), stages_after=self.spec.num_stages,
                   pause_s=pause, bytes_moved=sum(moved), step=self.step_done, reason=why,
                   verified=digest is not None)
        self._emit("plan", f"re-planned {new_plan.stages} stages: {new_plan.reason}",
                   plan=new_plan.to_dict())
        self.training.moves += 1
        self.training.figures_since = len(self.figures)
        if self.elastic.watcher is not None:
            self.elastic.watcher.accept(usable_nodes(observe(), self.opts.cpus_per_stage))
        self._request_slots()
        self._enter_running(f"partition {list(self.partition)}")

    def _digest(self) -> dict[str, str]:
        """Per-tensor digests of the whole job's state (all stages' weights, older versions,
        optimizer state), keyed by global parameter name."""
        merged: dict[str, str] = {}
        for d in ray.get([a.state_digest.remote() for a in self.actors],
                         timeout=self.opts.ready_timeout_s):
            merged.update(d)
        return merged
