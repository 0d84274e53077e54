"""The durable job store: every acknowledged request is committed before the reply.

One ``JobStore`` per service process; safe to call from the API's threads and the job threads
(writes are serialized: SQLite has one writer).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pipewave.api.db import CheckpointRow, EventRow, JobRow, MetricRow, TimelineRow, make_engine
from pipewave.api.models import (
    PHASE_TO_STATE,
    ApiState,
    CheckpointPublic,
    EventPublic,
    JobPublic,
    StagePlacement,
    StepPoint,
    Timeline,
)


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another body."""


def body_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def new_job_id() -> str:
    return f"j-{uuid.uuid4().hex[:12]}"


class JobStore:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._write = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    def _tx(self) -> Session:
        return self._session.begin()  # type: ignore[return-value]

    # -- jobs ------------------------------------------------------------------------------
    def create_job(self, spec: dict[str, Any], output_for: Any, slots: int,
                   idempotency_key: str | None = None) -> tuple[JobRow, bool]:
        """Insert a QUEUED job (and its first event); returns (job, created). A replayed key with
        the same body returns the first job; with another body raises IdempotencyConflict."""
        digest = body_hash(spec)
        with self._write:
            if idempotency_key is not None:
                with self._session() as s:
                    old = s.scalar(select(JobRow).where(JobRow.idempotency_key == idempotency_key))
                if old is not None:
                    if old.body_hash != digest:
                        raise IdempotencyConflict(idempotency_key)
                    return old, False
            now = time.time()
            job_id = new_job_id()
            row = JobRow(id=job_id, name=spec["name"], state=ApiState.QUEUED.value, phase="QUEUED",
                         reason="waiting for stage slots", spec_json=json.dumps(spec),
                         steps=int(spec["steps"]), slots=slots, idempotency_key=idempotency_key,
                         body_hash=digest, output=str(output_for(job_id)), created_at=now,
                         updated_at=now, step=0, cancel_requested=False, placement_json="[]")
            try:
                with self._tx() as s:
                    s.add(row)
                    s.flush()
                    s.add(EventRow(job_id=job_id, time=now, kind="state", message="QUEUED: submitted",
                                   data_json=json.dumps({"state": "QUEUED", "phase": "QUEUED"})))
            except IntegrityError:  # a concurrent request with the same key won the race
                with self._session() as s:
                    old = s.scalar(select(JobRow).where(JobRow.idempotency_key == idempotency_key))
                if old is None or old.body_hash != digest:
                    raise IdempotencyConflict(str(idempotency_key)) from None
                return old, False
            return row, True

    def get(self, job_id: str) -> JobRow | None:
        with self._session() as s:
            return s.get(JobRow, job_id)

    def list_jobs(self, states: Iterable[str] | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[JobRow], int]:
        q = select(JobRow)
        n = select(func.count()).select_from(JobRow)
        if states:
            q, n = q.where(JobRow.state.in_(list(states))), n.where(JobRow.state.in_(list(states)))
        with self._session() as s:
            rows = list(s.scalars(q.order_by(JobRow.created_at.desc()).limit(limit).offset(offset)))
            return rows, int(s.scalar(n) or 0)

    def queued(self) -> list[JobRow]:
        """Queued jobs, oldest first (FIFO)."""
        with self._session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.state == ApiState.QUEUED.value)
                                  .order_by(JobRow.created_at)))

    def active(self) -> list[JobRow]:
        """Jobs that started and have not ended (after a restart: the ones to resume)."""
        live = [st.value for st in ApiState if not st.is_terminal and st is not ApiState.QUEUED]
        with self._session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.state.in_(live))
                                  .order_by(JobRow.created_at)))

    def update(self, job_id: str, **fields: Any) -> None:
        with self._write, self._tx() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = time.time()

    def set_phase(self, job_id: str, phase: str, reason: str, **fields: Any) -> bool:
        """Move the job to the API state of ``phase`` and record a ``state`` event when the API
        state or phase changes. A terminal job never changes (returns False)."""
        state = PHASE_TO_STATE[phase]
        now = time.time()
        with self._write, self._tx() as s:
            row = s.get(JobRow, job_id)
            if row is None or ApiState(row.state).is_terminal:
                return False
            changed = row.state != state.value or row.phase != phase
            row.state, row.phase, row.reason, row.updated_at = state.value, phase, reason, now
            for k, v in fields.items():
                setattr(row, k, v)
            if state.is_terminal:
                row.finished_at = now
            if changed:
                s.add(EventRow(job_id=job_id, time=now, kind="state", message=f"{state.value}: {reason}",
                               data_json=json.dumps({"state": state.value, "phase": phase})))
            return True

    def delete(self, job_id: str) -> None:
        with self._write, self._tx() as s:
            for table in (EventRow, MetricRow, CheckpointRow, TimelineRow):
                s.execute(delete(table).where(table.job_id == job_id))
            s.execute(delete(JobRow).where(JobRow.id == job_id))

    def counts(self) -> dict[str, int]:
        with self._session() as s:
            rows = s.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
            return {st: int(n) for st, n in rows}

    # -- history ---------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, message: str, data: dict[str, Any] | None = None,
                  at: float | None = None) -> None:
        with self._write, self._tx() as s:
            s.add(EventRow(job_id=job_id, time=at or time.time(), kind=kind, message=message,
                           data_json=json.dumps(data or {}, default=str)))

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[EventPublic]:
        with self._session() as s:
            rows = s.scalars(select(EventRow).where(EventRow.job_id == job_id, EventRow.seq > after)
                             .order_by(EventRow.seq).limit(limit))
            return [EventPublic(seq=r.seq, time=r.time, kind=r.kind, message=r.message,
                                data=json.loads(r.data_json)) for r in rows]

    def put_metrics(self, job_id: str, points: list[StepPoint]) -> None:
        """Insert or replace points by step (a run's full figures replace its live points)."""
        if not points:
            return
        with self._write, self._tx() as s:
            for p in points:
                figures = p.model_dump(exclude={"step", "time", "loss", "samples_per_s"})
                s.merge(MetricRow(job_id=job_id, step=p.step, time=p.time, loss=p.loss,
                                  samples_per_s=p.samples_per_s, figures_json=json.dumps(figures)))

    def metrics(self, job_id: str, since_step: int = 0, limit: int = 100_000) -> list[StepPoint]:
        with self._session() as s:
            rows = s.scalars(select(MetricRow).where(MetricRow.job_id == job_id, MetricRow.step > since_step)
                             .order_by(MetricRow.step).limit(limit))
            return [StepPoint(step=r.step, time=r.time, loss=r.loss, samples_per_s=r.samples_per_s,
                              **json.loads(r.figures_json)) for r in rows]

    def metric_cursor(self, job_id: str) -> float:
        """The latest metric row's time (new points have a later one)."""
        with self._session() as s:
            return float(s.scalar(select(func.max(MetricRow.time)).where(MetricRow.job_id == job_id)) or 0)

    def metrics_since(self, job_id: str, after_time: float) -> list[StepPoint]:
        with self._session() as s:
            rows = s.scalars(select(MetricRow).where(MetricRow.job_id == job_id, MetricRow.time > after_time)
                             .order_by(MetricRow.time))
            return [StepPoint(step=r.step, time=r.time, loss=r.loss, samples_per_s=r.samples_per_s,
                              **json.loads(r.figures_json)) for r in rows]

    def add_checkpoint(self, job_id: str, step: int, path: str, size: int) -> None:
        with self._write, self._tx() as s:
            s.merge(CheckpointRow(job_id=job_id, step=step, path=path, time=time.time(), bytes=size))
            row = s.get(JobRow, job_id)
            if row is not None:
                row.checkpoint_step = step

    def remove_checkpoints(self, job_id: str, steps: list[int]) -> None:
        """Forget checkpoints the job deleted (``checkpoint.keep_last``)."""
        with self._write, self._tx() as s:
            s.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id,
                                                  CheckpointRow.step.in_(steps)))

    def checkpoints(self, job_id: str) -> list[CheckpointPublic]:
        with self._session() as s:
            rows = s.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                             .order_by(CheckpointRow.step))
            return [CheckpointPublic(step=r.step, path=r.path, time=r.time, bytes=r.bytes) for r in rows]

    def put_timeline(self, job_id: str, timeline: Timeline) -> None:
        with self._write, self._tx() as s:
            steps = "-".join(map(str, timeline.steps))
            s.merge(TimelineRow(job_id=job_id, steps=steps, data_json=timeline.model_dump_json()))

    def timeline_steps(self, job_id: str) -> str:
        """The latest timeline's steps ("a-b"; "" when there is none)."""
        with self._session() as s:
            return s.scalar(select(TimelineRow.steps).where(TimelineRow.job_id == job_id)) or ""

    def timeline(self, job_id: str) -> Timeline:
        with self._session() as s:
            row = s.get(TimelineRow, job_id)
        return Timeline.model_validate_json(row.data_json) if row else Timeline()


def to_public(row: JobRow, queue_position: int | None = None) -> JobPublic:
    return JobPublic(
        id=row.id, name=row.name, state=ApiState(row.state), phase=row.phase, reason=row.reason,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        updated_at=row.updated_at, spec=json.loads(row.spec_json), stages=row.stages,
        microbatches=row.microbatches, step=row.step, steps=row.steps,
        progress=min(1.0, row.step / row.steps) if row.steps else 0.0, loss=row.loss,
        samples_per_s=row.samples_per_s, queue_position=queue_position, slots=row.slots,
        cancel_requested=row.cancel_requested,
        placement=[StagePlacement(**p) for p in json.loads(row.placement_json)],
        checkpoint_step=row.checkpoint_step)
