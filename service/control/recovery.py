"""Failures of elastic jobs: the replicated state, recovery from lost stages (state RECOVERING)
and waiting for nodes (state WAITING):

RUNNING -> RECOVERING -> RUNNING             (a stage's node died: restart at once)
                      -> WAITING -> RUNNING  (too few usable slots: wait for more)

At every drained run boundary each stage exports its state (kept in its node's object store) and
the next stage on another node pulls a copy into its own memory, in the background. When stages
die with their node, the job restarts from the newest round every stage can be restored from (its
own export where its node lives, else the copy its holder keeps), or else from the latest
checkpoint, on the nodes left. With fewer usable slots than ``elastic.min_stages`` it waits for
more (at most ``elastic.wait_timeout_s``), asking the autoscaler for room.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ray

from pipewave.service.cluster.nodes import cluster_nodes, slots_of
from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.context import ReplicaRound, RestartPoint
from pipewave.service.control.elastic import observe, usable_nodes
from pipewave.service.control.job import JobError, JobState
from pipewave.service.control.stages import StagesMixin
from pipewave.service.planning.partition import InfeasibleError
from pipewave.service.planning.planner import plan_job
from pipewave.workers.state import overlaps


class RecoveryMixin(StagesMixin):
    """Replicating elastic jobs' state, and restarting them when stages are lost."""

    # -- failures --------------------------------------------------------------------------
    def _replicate(self) -> None:
        """At a drained run boundary: every stage exports its state (kept in its node's object
        store) and the next stage on another node pulls a copy into its own memory, in the
        background. A node that dies loses at most the steps since."""
        e = self.elastic
        ready, _ = ray.wait(e.replicating, num_returns=len(e.replicating), timeout=0)
        if len(ready) < len(e.replicating):
            return  # the previous copy is still on its way: skip this one
        if e.copying is not None and _all_ok(e.replicating):
            e.latest = e.copying  # every copy of that round arrived
        refs = [a.export_state.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=self.opts.ready_timeout_s, fetch_local=False)
        S, nodes = len(self.actors), list(self.stage_nodes) or [""] * len(self.actors)
        holders = []
        for s in range(S):
            others = [(s + k) % S for k in range(1, S) if nodes[(s + k) % S] != nodes[s]]
            holders.append(others[0] if others else (s + 1) % S)
        e.replicating = [self.actors[h].hold_replica.remote(s, self.step_done, [refs[s]])
                         for s, h in enumerate(holders)]
        e.copying = ReplicaRound(self.step_done, tuple(refs), tuple(nodes), tuple(holders))

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
        self.elastic.excluded = set(self.stage_nodes) - alive
        # the newest round every stage can be restored from: its own export where its node
        # lives, else the copy its holder keeps (a round need not have finished everywhere)
        found: list[Any] = []
        step, missing = 0, "no copy of the state was made yet"
        for snap in (self.elastic.copying, self.elastic.latest):
            if snap is None:
                continue
            step, refs, nodes, holders = snap.step, snap.refs, snap.nodes, snap.holders
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
        lost = max(self.training.seen_step, self.step_done) - step
        self.planning.move, self.elastic.change = None, None  # (a move decided before is moot)
        self._teardown()
        if sources is not None:
            self.elastic.restart = RestartPoint(step, tuple(sources), self._layout())
            where = f"the state of step {step} (kept on surviving nodes)"
        else:
            self._record = ckpt.latest(self.output)
            if self._record is None:
                raise JobError(f"stages died and no copy of their state survived ({missing})")
            self.elastic.restart = None
            where = f"the checkpoint of step {self._record.step} (no full copy survived)"
            lost = max(self.training.seen_step, self.step_done) - self._record.step
        self._emit("recovery", f"recovering from {where}; {lost} step(s) to redo",
                   step=step if sources is not None else self._record.step if self._record else 0,
                   steps_lost=lost, from_replicas=sources is not None)
        self.elastic.waiting_since = time.time()
        self._try_restart()

    def _on_waiting(self) -> None:
        """Start again once the usable nodes offer ``elastic.min_stages`` slots (or time out)."""
        self._try_restart()

    def _try_restart(self) -> None:
        """Restart the lost job on the usable nodes if they offer ``elastic.min_stages`` slots
        (then RUNNING); else WAITING (asking the autoscaler for room), until
        ``elastic.wait_timeout_s`` has passed since the recovery began."""
        assert self.spec.elastic is not None
        p, nodes = self.planning, cluster_nodes(exclude=self.elastic.excluded)
        slots = slots_of(nodes, p.speeds, self.opts.cpus_per_stage, self.opts.memory_fraction)
        e = self.spec.elastic
        try:
            jp = plan_job(self.spec, p.layers, slots, microbatches=self.spec.num_microbatches,
                          max_stages=min(e.max_stages, len(slots))) if len(slots) >= e.min_stages \
                else None
            if jp is not None and jp.stages < e.min_stages:
                jp = plan_job(self.spec, p.layers, slots, stages=e.min_stages,
                              microbatches=self.spec.num_microbatches)
        except InfeasibleError:
            jp = None
        if jp is None:
            p.slots = slots
            self._request_slots()
            waited = time.time() - self.elastic.waiting_since
            if waited > e.wait_timeout_s:
                raise JobError(f"waited {waited:.0f} s for {e.min_stages} stage slots; "
                               f"the cluster offers {len(slots)}")
            if self.state is not JobState.WAITING:
                self._transition(JobState.WAITING, f"{len(slots)} slot(s) usable, the job needs "
                                                   f"{e.min_stages}")
            time.sleep(self.opts.watch_every_s)
            return
        self.spec = self.spec.resolve(jp.stages, jp.microbatches, keep_bounds=True)
        p.slots = slots
        self._adopt(jp)
        self._start_actors()
        el, t = self.elastic, self.training
        if el.restart is not None:
            r = el.restart
            ray.get([a.import_state.remote([ref for theirs, ref in
                                            zip(r.layout, r.sources, strict=True)
                                            if overlaps(mine, theirs)])
                     for a, mine in zip(self.actors, self._layout(), strict=True)],
                    timeout=self.opts.ready_timeout_s)
            t.step_done = r.step
        else:
            assert self._record is not None
            self._resume(self._record)
        el.restart, el.latest, el.copying, el.replicating = None, None, None, []
        t.seen_step = t.step_done
        # the steps after the restart point are redone: their first measurements go
        t.metrics = [m for m in t.metrics if m.step <= t.step_done]
        self._rewrite_metrics()
        t.figures_since = len(t.figures)
        t.moves += 1
        if el.watcher is not None:
            el.watcher.accept(usable_nodes(observe(), self.opts.cpus_per_stage))
        self._request_slots()
        self._enter_running(f"restarted at step {t.step_done} on {self.spec.num_stages} stages "
                            f"{list(self.partition)}")

    def _rewrite_metrics(self) -> None:
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= self.step_done]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)


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
