"""The running jobs: one controller per job, driven step by step in its own thread, reporting
into the store through its ``Feed`` and into the job's log file."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipewave.api.feed import Feed
from pipewave.api.joblog import close_job_log, open_job_log
from pipewave.api.settings import Settings
from pipewave.api.store import JobStore
from pipewave.service.schedules import schedule_traits
from pipewave.service.spec import JobSpec

if TYPE_CHECKING:  # imported when a job starts: it imports Ray, which the app leaves to connect()
    from pipewave.service.control.controller import ControllerOptions, JobController

logger = logging.getLogger(__name__)

PLACED_STATES = frozenset({"RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"})


@dataclass
class JobRun:
    """A job the manager started. ``placed``: its stages run (or it ended), so the dispatcher
    may plan the next job."""

    job_id: str
    spec: JobSpec
    feed: Feed
    controller: JobController
    placed: bool = False
    thread: threading.Thread = field(init=False)  # set by start_run

    def eta_s(self) -> float | None:
        """Seconds to its last step at its smoothed rate; None before a rate is known."""
        if not self.feed.rate:
            return None
        return (self.spec.steps - self.controller.step_done) * self.spec.batch_size / self.feed.rate


def controller_options(settings: Settings, spec: JobSpec, node_slots: dict[str, int],
                       autoscaler: Callable[[int], None]) -> ControllerOptions:
    """The service's options for a job's controller: its settings' stage resources, within the
    free ``node_slots``, elastic scale requests to ``autoscaler``, runs cut at the service's
    ``run_steps`` where a run boundary is free (every synchronous schedule)."""
    from pipewave.service.control.controller import ControllerOptions

    # "auto" chooses among the synchronous schedules
    sync = spec.schedule == "auto" or schedule_traits(spec.schedule).synchronous
    embedded = settings.ray_address is None  # this machine's cores are shared by all stages
    return ControllerOptions(cpus_per_stage=settings.cpus_per_stage, resume=True,
                             gpus_per_stage=settings.gpus_per_stage,
                             threads_per_stage=None if embedded else max(1, int(settings.cpus_per_stage)),
                             autoscaler=autoscaler, node_slots=node_slots,
                             max_run_steps=settings.run_steps if sync else None)


def start_run(store: JobStore, settings: Settings, job_id: str, spec: JobSpec, node_slots: dict[str, int],
              autoscaler: Callable[[int], None], stop: threading.Event, wake: threading.Event) -> JobRun:
    """Make the job's controller and the thread that drives it, and mark the job CREATED. The
    thread is not started: the caller records the run, then calls ``run.thread.start()``. It sets
    ``wake`` whenever the job's placement may have changed, and stops when ``stop`` is set."""
    from pipewave.service.control.controller import JobController

    row = store.get(job_id)
    if row is None:
        raise KeyError(f"no such job: {job_id}")
    output = Path(row.output)
    output.mkdir(parents=True, exist_ok=True)
    feed = Feed(store, job_id, spec, open_job_log(output / "job.log", f"job-{job_id}"))
    controller = JobController(spec, output, controller_options(settings, spec, node_slots, autoscaler),
                               on_event=feed.event, on_progress=feed.progress, on_run=feed.run_done)
    feed.attach(controller)
    store.set_phase(job_id, "CREATED", "planning", started_at=row.started_at or time.time(),
                    slots=sum(node_slots.values()))
    run = JobRun(job_id, spec, feed, controller)
    run.thread = threading.Thread(target=_drive, args=(run, store, stop, wake), name=f"job-{job_id}",
                                  daemon=True)
    return run


def _drive(run: JobRun, store: JobStore, stop: threading.Event, wake: threading.Event) -> None:
    ctl = run.controller
    try:
        while not ctl.state.is_terminal and not stop.is_set():
            ctl.step()
            if ctl.state.value in PLACED_STATES:
                run.placed = True
                wake.set()
    except Exception as err:  # step() never raises; this is the last guard
        logger.exception("job %s thread failed", run.job_id)
        store.set_phase(run.job_id, "FAILED", f"internal error: {err}")
    finally:
        run.placed = True
        close_job_log(run.feed.log)
        wake.set()
