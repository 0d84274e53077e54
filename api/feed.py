"""The store's feed: what one job's controller reports (events, progress, finished runs), written
into the store. Called in the job's thread; the manager reads ``stage_nodes`` and ``rate``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipewave.api.joblog import log_event
from pipewave.api.models import StepPoint
from pipewave.api.store import JobStore
from pipewave.api.views import stage_placement, timeline_of
from pipewave.service.control.job import STAGES_READY, Event
from pipewave.service.spec import JobSpec

if TYPE_CHECKING:
    from pipewave.service.control.controller import JobController
    from pipewave.service.control.metrics import StepMetrics
    from pipewave.workers.stage import RunReport


class Feed:
    """One job's reports into the store. ``attach`` the job's controller before it runs."""

    def __init__(self, store: JobStore, job_id: str, spec: JobSpec, log: logging.FileHandler) -> None:
        self.store, self.job_id, self.spec, self.log = store, job_id, spec, log
        self.controller: JobController | None = None
        self.stage_nodes: list[dict[str, Any]] = []  # where each stage runs (the latest placement)
        self.rate: float | None = None  # smoothed samples/s
        self._last: tuple[int, float] | None = None  # (step, time) of the previous progress report

    def attach(self, controller: JobController) -> None:
        self.controller = controller

    def _ctl(self) -> JobController:
        if self.controller is None:
            raise RuntimeError(f"job {self.job_id}: a report came before its controller was attached")
        return self.controller

    def event(self, ev: Event) -> None:
        """A controller event: logged; a state change sets the job's phase, anything else is
        stored as an event (after its effect: a placement, a checkpoint row)."""
        ctl = self._ctl()
        log_event(self.log, ev)
        if ev.kind == "state":
            fields: dict[str, Any] = {}
            if ctl.spec.is_resolved:
                fields.update(stages=ctl.spec.num_stages, microbatches=ctl.spec.num_microbatches,
                              slots=ctl.spec.num_stages)
            if ev.data["state"] in ("RUNNING", "STARTING") and ctl.step_done:
                fields["step"] = ctl.step_done
            self.store.set_phase(self.job_id, ev.data["state"], ctl.reason, **fields)
            return
        if ev.topic == STAGES_READY:
            self.stage_nodes = stage_placement(ev.data["stages"], _layer_names(ctl.spec))
            self.store.update(self.job_id, placement_json=json.dumps(self.stage_nodes),
                              slots=len(self.stage_nodes))
        elif ev.kind == "checkpoint":
            path = Path(ev.data["path"])
            size = sum(f.stat().st_size for f in path.glob("*") if f.is_file())
            self.store.add_checkpoint(self.job_id, ctl.step_done, str(path), size)
            if ev.data.get("pruned"):
                self.store.remove_checkpoints(self.job_id, list(ev.data["pruned"]))
        self.store.add_event(self.job_id, ev.kind, ev.message, _jsonable(ev.data), at=ev.time)

    def progress(self, step: int, loss: float | None) -> None:
        """A step done: the job's step, loss and smoothed throughput; one metrics point per step."""
        now = time.time()
        if self._last is not None and step > self._last[0]:
            rate = (step - self._last[0]) * self.spec.batch_size / max(now - self._last[1], 1e-6)
            self.rate = rate if self.rate is None else 0.7 * self.rate + 0.3 * rate
        if self._last is None or step > self._last[0]:
            self._last = (step, now)
            self.store.put_metrics(self.job_id, [StepPoint(step=step, time=now, loss=loss,
                                                           samples_per_s=self.rate)])
        self.store.update(self.job_id, step=step, loss=loss, samples_per_s=self.rate)

    def run_done(self, new: list[StepMetrics], reports: list[RunReport], first: int) -> None:
        """A run's end: its steps' measured metrics, and its timeline (the latest replaces the last)."""
        now = time.time()
        points = [StepPoint(step=m.step, time=now, loss=m.loss, samples_per_s=m.samples_per_s,
                            time_s=m.time_s, stage_busy_s=list(m.stage_busy_s),
                            stage_idle_s=list(m.stage_idle_s), stage_cpu_s=list(m.stage_cpu_s),
                            predicted_stage_busy_s=list(m.predicted_stage_busy_s)) for m in new]
        self.store.put_metrics(self.job_id, points)
        self.store.put_timeline(self.job_id, timeline_of(reports, first, len(new),
                                                         self._ctl().spec.num_microbatches))


def _layer_names(spec: JobSpec) -> list[str]:
    from pipewave.workers.models import layer_names

    return list(layer_names(spec.model_settings))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))
