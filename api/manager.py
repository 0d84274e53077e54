"""The job manager: the queue, one controller thread per running job, and the store's feed.

Submitted jobs are committed as QUEUED; the dispatcher starts them in FIFO order as stage slots
free up (``pipewave.api.queue.decide``), one at a time: a job's planner sees only the slots other jobs
leave free, and the next job is considered once it is placed. Each job's controller runs in its
own thread and reports into the store (state changes, events, live and per-run metrics,
checkpoints, the latest timeline, its log). After a restart, jobs that were running resume from
their latest checkpoint (or fail, saying why).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipewave.api.models import ApiState, StepPoint, Timeline
from pipewave.api.queue import Holding, Waiting, decide
from pipewave.api.settings import Settings
from pipewave.api.store import JobStore, to_public
from pipewave.service.control import checkpoint as ckpt
from pipewave.service.spec import JobSpec

logger = logging.getLogger(__name__)


def min_slots(spec: JobSpec) -> int:
    """The fewest stage slots a job can start with."""
    if spec.stages != "auto":
        return spec.stages
    return spec.elastic.min_stages if spec.elastic is not None else 1


@dataclass
class _Running:
    job_id: str
    spec: JobSpec
    controller: Any = None  # pipewave.service.control.controller.JobController, once made
    thread: threading.Thread | None = None
    placed: bool = False  # its stages run (or it ended): the next job may be planned
    last: tuple[int, float] | None = None  # (step, time) of the previous progress report
    rate: float | None = None  # smoothed samples/s
    log: Any = None  # its log file handler
    stage_nodes: list[dict[str, Any]] = field(default_factory=list)


class JobManager:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings, self.store = settings, store
        self._running: dict[str, _Running] = {}
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
            if r is not None and r.controller is not None:
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
            return [(r.job_id, r.spec.name, list(r.stage_nodes)) for r in self._running.values()]

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
            for job_id in [j for j, r in self._running.items() if r.thread and not r.thread.is_alive()]:
                del self._running[job_id]
                self._wants.pop(job_id, None)
            placing = any(not r.placed for r in self._running.values())
        queued = [row for row in self.store.queued() if not row.cancel_requested]
        specs = {row.id: JobSpec.model_validate_json(row.spec_json) for row in queued}
        self._autoscale([min_slots(specs[row.id]) for row in queued])
        if not self.settings.dispatch or placing:
            return
        if not queued:
            return
        per_node = free_slots_per_node(self.settings.cpus_per_stage)
        free = sum(per_node.values())
        waiting = [Waiting(row.id, min_slots(specs[row.id])) for row in queued]
        with self._lock:
            holding = [Holding(r.job_id, len(r.stage_nodes) or min_slots(r.spec), self._eta(r))
                       for r in self._running.values()]
        decision = decide(waiting, free, holding)
        for row in queued:  # why each waits (written only when it changes)
            why = decision.waiting_reason.get(row.id)
            if why is not None and why != row.reason:
                self.store.update(row.id, reason=why)
        if decision.start is not None:
            s = decision.start
            logger.info("starting job %s: %s", s.job_id, s.reason)
            self._launch(s.job_id, specs[s.job_id], _cap(per_node, s.max_slots))

    def _autoscale(self, queued_needs: list[int]) -> None:
        """One scale request for the whole service (Ray keeps one per cluster): room for every
        running job's stages (an elastic job's as many as it asks for) and every queued job's
        minimum, in bundles of one stage's resources (one worker pod of a KubeRay worker group)."""
        with self._lock:
            held = sum(max(len(r.stage_nodes), self._wants.get(r.job_id, 0)) for r in self._running.values())
        wanting = queued_needs or any(w > 0 for w in self._wants.values())
        total = min(held + sum(queued_needs), 1024) if wanting else 0
        if total == self._requested:
            return
        from pipewave.service.control.job import stage_bundle
        from ray.autoscaler.sdk import request_resources

        bundle = stage_bundle(self.settings.cpus_per_stage, self.settings.gpus_per_stage)
        request_resources(bundles=[bundle] * total)
        logger.info("asked the autoscaler for room for %d stage(s)", total)
        self._requested = total

    def _eta(self, r: _Running) -> float | None:
        ctl = r.controller
        if ctl is None or not r.rate:
            return None
        return (r.spec.steps - ctl.step_done) * r.spec.batch_size / r.rate

    def _launch(self, job_id: str, spec: JobSpec, node_slots: dict[str, int]) -> None:
        from pipewave.service.control.controller import ControllerOptions, JobController

        row = self.store.get(job_id)
        assert row is not None
        output = Path(row.output)
        output.mkdir(parents=True, exist_ok=True)
        run = _Running(job_id, spec)
        # a run boundary is free for flush schedules (all but the asynchronous ones)
        sync = spec.schedule not in ("pipedream", "2bw")
        embedded = self.settings.ray_address is None  # this machine's cores are shared by all stages
        opts_cpus = self.settings.cpus_per_stage  # on a cluster: a stage's threads
        opts = ControllerOptions(cpus_per_stage=self.settings.cpus_per_stage, resume=True,
                                 gpus_per_stage=self.settings.gpus_per_stage,
                                 threads_per_stage=None if embedded else max(1, int(opts_cpus)),
                                 autoscaler=lambda want: self._wants.__setitem__(job_id, want),
                                 node_slots=node_slots,
                                 max_run_steps=self.settings.run_steps if sync else None)
        run.controller = JobController(
            spec, output, opts, on_event=lambda ev: self._on_event(run, ev),
            on_progress=lambda step, loss: self._on_progress(run, step, loss),
            on_run=lambda new, reports, first: self._on_run(run, new, reports, first))
        run.log = _job_log(output / "job.log", f"job-{job_id}")
        self.store.set_phase(job_id, "CREATED", "planning", started_at=row.started_at or time.time(),
                             slots=sum(node_slots.values()))
        run.thread = threading.Thread(target=self._drive, args=(run,), name=f"job-{job_id}", daemon=True)
        with self._lock:
            self._running[job_id] = run
        run.thread.start()

    def _drive(self, run: _Running) -> None:
        ctl = run.controller
        try:
            while not ctl.state.is_terminal and not self._stop.is_set():
                ctl.step()
                if ctl.state.value in ("RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"):
                    run.placed = True
                    self._wake.set()
        except Exception as err:  # step() never raises; this is the last guard
            logger.exception("job %s thread failed", run.job_id)
            self.store.set_phase(run.job_id, "FAILED", f"internal error: {err}")
        finally:
            run.placed = True
            logging.getLogger().removeHandler(run.log)
            run.log.close()
            self._wake.set()

    # -- reports from a job's controller (in its thread) -------------------------------------
    def _on_event(self, run: _Running, ev: Any) -> None:
        ctl = run.controller
        _log_line(run.log, ev)
        if ev.kind == "state":
            fields: dict[str, Any] = {}
            if ctl.spec.is_resolved:
                fields.update(stages=ctl.spec.num_stages, microbatches=ctl.spec.num_microbatches,
                              slots=ctl.spec.num_stages)
            if ev.data["state"] in ("RUNNING", "STARTING") and ctl.step_done:
                fields["step"] = ctl.step_done
            self.store.set_phase(run.job_id, ev.data["state"], ctl.reason, **fields)
            return
        if ev.kind == "info" and "stages" in ev.data:  # "N stages ready": where each stage runs
            run.stage_nodes = stage_placement(ev.data["stages"], _layer_names(ctl.spec))
            self.store.update(run.job_id, placement_json=json.dumps(run.stage_nodes),
                              slots=len(run.stage_nodes))
        if ev.kind == "checkpoint":
            path = Path(ev.data["path"])
            size = sum(f.stat().st_size for f in path.glob("*") if f.is_file())
            self.store.add_checkpoint(run.job_id, ctl.step_done, str(path), size)
        self.store.add_event(run.job_id, ev.kind, ev.message, _jsonable(ev.data), at=ev.time)

    def _on_progress(self, run: _Running, step: int, loss: float | None) -> None:
        now = time.time()
        if run.last is not None and step > run.last[0]:
            rate = (step - run.last[0]) * run.spec.batch_size / max(now - run.last[1], 1e-6)
            run.rate = rate if run.rate is None else 0.7 * run.rate + 0.3 * rate
        if run.last is None or step > run.last[0]:
            run.last = (step, now)
            self.store.put_metrics(run.job_id, [StepPoint(step=step, time=now, loss=loss,
                                                          samples_per_s=run.rate)])
        self.store.update(run.job_id, step=step, loss=loss, samples_per_s=run.rate)

    def _on_run(self, run: _Running, new: list[Any], reports: list[Any], first: int) -> None:
        now = time.time()
        points = [StepPoint(step=m.step, time=now, loss=m.loss, samples_per_s=m.samples_per_s,
                            time_s=m.time_s, stage_busy_s=list(m.stage_busy_s),
                            stage_idle_s=list(m.stage_idle_s), stage_cpu_s=list(m.stage_cpu_s),
                            predicted_stage_busy_s=list(m.predicted_stage_busy_s)) for m in new]
        self.store.put_metrics(run.job_id, points)
        self.store.put_timeline(run.job_id, timeline_of(reports, first, len(new),
                                                        run.controller.spec.num_microbatches))


def stage_placement(stages: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Where each stage runs, from the "N stages ready" event's ``stages``: its layers (the hull),
    its chunks ([start, end) per chunk, in chunk order; data without them is one chunk, its
    layers) and the names of its layers in chunk order."""
    out = []
    for st in stages:
        layers = [int(v) for v in st["layers"]]
        chunks = [[int(a), int(b)] for a, b in st.get("chunks") or [layers]]
        out.append({"stage": st["stage"], "layers": layers, "chunks": chunks,
                    "layer_names": [n for a, b in chunks for n in names[a:b]],
                    "node_id": st["node_id"], "device": st["device"]})
    return out


def timeline_of(reports: list[Any], first: int, count: int, microbatches: int, last: int = 4) -> Timeline:
    """The spans of a run's last ``last`` steps, relative to the first of them; each says which
    of its stage's chunks ran it."""
    lo = max(first, first + count - last)  # global step index (0-based) of the first kept step
    spans = []
    chunks = 1
    for rep in reports:
        for action, start, end in rep.spans:
            chunks = max(chunks, action.chunk + 1)
            step = first + action.microbatch // microbatches
            if step >= lo:
                spans.append((rep.stage, str(action.kind), action.microbatch % microbatches, step + 1,
                              action.chunk, start, end))
    if not spans:
        return Timeline(stages=len(reports), chunks_per_stage=chunks, steps=[lo + 1, first + count])
    t0 = min(s[5] for s in spans)
    t1 = max(s[6] for s in spans)
    return Timeline(stages=len(reports), chunks_per_stage=chunks, steps=[lo + 1, first + count], t0=t0,
                    duration_s=t1 - t0,
                    spans=[{"stage": st, "kind": k, "microbatch": mb, "step": sp, "chunk": c,
                            "start": a - t0, "end": b - t0} for st, k, mb, sp, c, a, b in spans])


def free_slots_per_node(cpus_per_stage: float) -> dict[str, int]:
    """Stage slots free on each alive, not draining node (Ray's available CPUs)."""
    import ray
    from pipewave.service.cluster.nodes import draining_node_ids

    alive = {str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")}
    leaving = draining_node_ids()
    avail = ray._private.state.available_resources_per_node()
    return {node: int(res.get("CPU", 0) // cpus_per_stage + 1e-9) for node, res in avail.items()
            if node in alive and node not in leaving}


def _cap(per_node: dict[str, int], total: int) -> dict[str, int]:
    """At most ``total`` slots, taken from the nodes with the most free first."""
    out: dict[str, int] = {}
    for node, n in sorted(per_node.items(), key=lambda kv: -kv[1]):
        take = min(n, total - sum(out.values()))
        if take > 0:
            out[node] = take
    return out


def _layer_names(spec: JobSpec) -> list[str]:
    from pipewave.workers.models import layer_names

    return list(layer_names(spec.model))


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


class _ThreadFilter(logging.Filter):
    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName == self.thread_name


def _job_log(path: Path, thread_name: str) -> logging.FileHandler:
    """A handler writing the job thread's log records (INFO and up) to the job's log file."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.addFilter(_ThreadFilter(thread_name))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _log_line(handler: logging.FileHandler, ev: Any) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time))
    if handler.stream is not None:
        handler.stream.write(f"{stamp} EVENT {ev.kind}: {ev.message}\n")
        handler.flush()


def public(store: JobStore, manager: JobManager, job_id: str) -> Any:
    row = store.get(job_id)
    if row is None:
        return None
    pos = manager.queue_positions().get(job_id) if row.state == ApiState.QUEUED else None
    return to_public(row, pos)

