"""The job manager: the queue, one controller thread per running job, the autoscaler request.

Submitted jobs are committed as QUEUED; the dispatcher starts them in FIFO order as stage slots
free up (``pipewave.api.queue.decide``), one at a time: a job's planner sees only the slots other jobs
leave free, and the next job is considered once it is placed. Each job's controller runs in its
own thread (``pipewave.api.runs``) and reports into the store (``pipewave.api.feed``). After a
restart, jobs that were running resume from their latest checkpoint (or fail, saying why).
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from pipewave.api.dispatch import cap, min_slots, scale_request
from pipewave.api.models import ApiState
from pipewave.api.queue import Holding, Waiting, decide
from pipewave.api.runs import JobRun, start_run
from pipewave.api.settings import Settings
from pipewave.api.store import JobStore
from pipewave.service.cluster.status import free_slots_per_node, request_stages
from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.job import stage_bundle
from pipewave.service.spec import JobSpec

logger = logging.getLogger(__name__)


class JobManager:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings, self.store = settings, store
        self._running: dict[str, JobRun] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._wants: dict[str, int] = {}  # elastic job -> stage slots it asks the autoscaler for
        self._requested: int | None = None  # stage bundles last asked of Ray's autoscaler

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._dispatch_loop, name="pipewave-dispatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop dispatching; job threads stop after their current step. Their rows stay as they
        are, so the next start resumes them from their checkpoints (the actors go with this
        process's Ray connection)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def recover(self) -> None:
        """Jobs the previous service process left running: resume from a checkpoint or fail."""
        for row in self.store.active():
            record = ckpt.latest(Path(row.output))
            if row.cancel_requested:
                self.store.set_phase(row.id, "CANCELLED", "cancelled (the service restarted meanwhile)")
            elif record is None:
                self.store.set_phase(row.id, "FAILED", "the service stopped before the job's first "
                                     "checkpoint: nothing to resume from (set checkpoint.every_steps "
                                     "to survive restarts)")
            else:
                self.store.set_phase(row.id, "QUEUED", f"the service restarted: will resume from the "
                                     f"checkpoint at step {record.step}", step=record.step)
                self.store.add_event(row.id, "service", f"service restarted; job queued to resume "
                                     f"from step {record.step}", {"step": record.step})

    # -- requests --------------------------------------------------------------------------
    def submitted(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        with self._lock:
            r = self._running.get(job_id)
            row = self.store.get(job_id)
            if row is None or ApiState(row.state).is_terminal:
                return
            if r is None and row.state == ApiState.QUEUED:
                self.store.set_phase(job_id, "CANCELLED", "cancelled by user while queued",
                                     cancel_requested=True)
                return
            self.store.update(job_id, cancel_requested=True)
            self.store.add_event(job_id, "service", "cancel requested")
            if r is not None:
                r.controller.cancel("cancelled by user")
        self._wake.set()

    def delete_files(self, output: str) -> None:
        path = Path(output).resolve()
        root = self.settings.jobs_dir.resolve()
        if path.is_relative_to(root) and path != root:
            shutil.rmtree(path, ignore_errors=True)

    def placements(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """(job id, name, its stages) of the running jobs."""
        with self._lock:
            return [(r.job_id, r.spec.name, list(r.feed.stage_nodes)) for r in self._running.values()]

    def queue_positions(self) -> dict[str, int]:
        return {row.id: i for i, row in enumerate(self.store.queued())}

    # -- dispatching -----------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch_once()
            except Exception:  # the loop never dies: log and try again next round
                logger.exception("dispatcher round failed")
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def _dispatch_once(self) -> None:
        with self._lock:
            for job_id in [j for j, r in self._running.items() if not r.thread.is_alive()]:
                del self._running[job_id]
                self._wants.pop(job_id, None)
            placing = any(not r.placed for r in self._running.values())
        queued = [row for row in self.store.queued() if not row.cancel_requested]
        specs = {row.id: JobSpec.model_validate_json(row.spec_json) for row in queued}
        self._autoscale([min_slots(specs[row.id]) for row in queued])
        if not self.settings.dispatch or placing or not queued:
            return
        per_node = free_slots_per_node(self.settings.cpus_per_stage)
        waiting = [Waiting(row.id, min_slots(specs[row.id])) for row in queued]
        with self._lock:
            holding = [Holding(r.job_id, len(r.feed.stage_nodes) or min_slots(r.spec), r.eta_s())
                       for r in self._running.values()]
        decision = decide(waiting, sum(per_node.values()), holding)
        for row in queued:  # why each waits (written only when it changes)
            why = decision.waiting_reason.get(row.id)
            if why is not None and why != row.reason:
                self.store.update(row.id, reason=why)
        if decision.start is not None:
            s = decision.start
            logger.info("starting job %s: %s", s.job_id, s.reason)
            self._launch(s.job_id, specs[s.job_id], cap(per_node, s.max_slots))

    def _autoscale(self, queued_needs: list[int]) -> None:
        """One scale request for the whole service (``dispatch.scale_request``), in bundles of
        one stage's resources (one worker pod of a KubeRay worker group); sent when it changes."""
        with self._lock:
            running = [(len(r.feed.stage_nodes), self._wants.get(r.job_id, 0))
                       for r in self._running.values()]
        total = scale_request(running, queued_needs)
        if total == self._requested:
            return
        request_stages(stage_bundle(self.settings.cpus_per_stage, self.settings.gpus_per_stage), total)
        self._requested = total

    def _launch(self, job_id: str, spec: JobSpec, node_slots: dict[str, int]) -> None:
        run = start_run(self.store, self.settings, job_id, spec, node_slots,
                        autoscaler=lambda want: self._wants.__setitem__(job_id, want),
                        stop=self._stop, wake=self._wake)
        with self._lock:
            self._running[job_id] = run
        run.thread.start()
