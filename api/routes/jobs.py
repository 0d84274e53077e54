"""/api/v1/jobs: submit, list, inspect, cancel, delete; metrics, events (SSE), timeline, logs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as FsParam
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from sse_starlette.sse import EventSourceResponse

from pipewave.api.deps import JobId, ManagerDep, SettingsDep, StoreDep, not_found
from pipewave.api.dispatch import min_slots
from pipewave.api.models import (
    ApiState,
    CheckpointList,
    JobList,
    JobPublic,
    MetricsList,
    Timeline,
)
from pipewave.api.settings import Settings
from pipewave.api.store import IdempotencyConflict, to_public
from pipewave.api.views import public
from pipewave.service.control.checkpoint import step_dir
from pipewave.service.export import export_model
from pipewave.service.inputs import check_job, resolve_paths
from pipewave.service.spec import JobSpec, SpecError

router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                               pattern=r"^[\x21-\x7e]+$")]


@router.post("", status_code=201, response_model=JobPublic,
             responses={200: {"model": JobPublic, "description": "an idempotent replay"},
                        409: {"description": "idempotency key reused with another body"}})
def submit(spec: JobSpec, store: StoreDep, manager: ManagerDep, settings: SettingsDep,
           idempotency_key: IdempotencyKey = None) -> Any:
    spec = _check_inputs(spec, settings)
    try:
        row, created = store.create_job(spec.model_dump(mode="json"), lambda i: settings.jobs_dir / i,
                                        min_slots(spec), idempotency_key)
    except IdempotencyConflict:
        raise HTTPException(409, detail="this Idempotency-Key was used with another request body") from None
    if created:
        manager.submitted()
    body = public(store, manager, row.id)
    if body is None:  # deleted meanwhile
        raise not_found(row.id)
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200,
                        headers={"Location": f"/api/v1/jobs/{row.id}"})


def _check_inputs(spec: JobSpec, settings: Settings) -> JobSpec:
    """What the spec names: paths inside the data root (no '..', no symlink out of it), the
    model built from its config against the data and its weights (``pipewave.service.inputs``)."""
    try:
        spec = resolve_paths(spec, root=settings.data_dir.resolve())
        check_job(spec)
    except SpecError as err:
        raise HTTPException(422, detail=str(err).removeprefix("invalid job spec: ")) from None
    return spec


@router.get("", response_model=JobList)
def list_jobs(store: StoreDep, manager: ManagerDep,
              state: Annotated[list[ApiState] | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> JobList:
    rows, total = store.list_jobs([s.value for s in state] if state else None, limit, offset)
    positions = manager.queue_positions() if any(r.state == ApiState.QUEUED for r in rows) else {}
    return JobList(items=[to_public(r, positions.get(r.id)) for r in rows], total=total,
                   limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: JobId, store: StoreDep, manager: ManagerDep) -> JobPublic:
    body = public(store, manager, job_id)
    if body is None:
        raise not_found(job_id)
    return body


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses={200: {"model": JobPublic, "description": "the job had already ended"}})
def cancel(job_id: JobId, store: StoreDep, manager: ManagerDep) -> Any:
    row = store.get(job_id)
    if row is None:
        raise not_found(job_id)
    ended = ApiState(row.state).is_terminal
    if not ended:
        manager.cancel(job_id)
    body = public(store, manager, job_id)
    if body is None:  # deleted meanwhile
        raise not_found(job_id)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ended else 202)


@router.delete("/{job_id}", status_code=204, responses={409: {"description": "the job has not ended"}})
def delete(job_id: JobId, store: StoreDep, manager: ManagerDep) -> Response:
    row = store.get(job_id)
    if row is None:
        raise not_found(job_id)
    if not ApiState(row.state).is_terminal:
        raise HTTPException(409, detail=f"job {job_id} is {row.state}: cancel it first, then delete it")
    store.delete(job_id)
    manager.delete_files(row.output)
    return Response(status_code=204)


@router.get("/{job_id}/metrics", response_model=MetricsList)
def metrics(job_id: JobId, store: StoreDep,
            since_step: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> MetricsList:
    if store.get(job_id) is None:
        raise not_found(job_id)
    return MetricsList(items=store.metrics(job_id, since_step))


@router.get("/{job_id}/timeline", response_model=Timeline)
def timeline(job_id: JobId, store: StoreDep) -> Timeline:
    if store.get(job_id) is None:
        raise not_found(job_id)
    return store.timeline(job_id)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList)
def checkpoints(job_id: JobId, store: StoreDep) -> CheckpointList:
    row = store.get(job_id)
    if row is None:
        raise not_found(job_id)
    keep = (json.loads(row.spec_json).get("checkpoint") or {}).get("keep_last")
    return CheckpointList(items=store.checkpoints(job_id), keep_last=keep)


_EXPORTS = threading.Lock()  # one export at a time: each is a full pass over the weights


@router.get("/{job_id}/checkpoints/{step}/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}},
                             "description": "the model of that checkpoint as `pipewave export` writes "
                                            "it (model.safetensors, + config.json for transformers)"}})
def export(job_id: JobId, step: Annotated[int, FsParam(ge=0, le=10_000_000)],
           store: StoreDep) -> FileResponse:
    row = store.get(job_id)
    if row is None:
        raise not_found(job_id)
    ckpt = step_dir(FsPath(row.output), step)
    if not (ckpt / "manifest.json").is_file():
        raise HTTPException(404, detail=f"job {job_id} has no checkpoint at step {step}")
    folder = FsPath(row.output) / "exports" / f"step-{step:06d}"
    archive = folder.with_suffix(".zip")
    with _EXPORTS:
        if not archive.is_file():
            try:
                export_model(ckpt, folder, force=True)
            except (ValueError, OSError) as err:
                raise HTTPException(409, detail=f"cannot export step {step}: "
                                                f"{str(err).splitlines()[0]}") from None
            tmp = shutil.make_archive(str(folder) + ".tmp", "zip", root_dir=folder)
            os.replace(tmp, archive)
    return FileResponse(archive, media_type="application/zip", filename=f"{job_id}-step-{step}.zip")


@router.get("/{job_id}/logs", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}}, "description": "log text from offset"}})
def logs(job_id: JobId, store: StoreDep,
         offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
         limit: Annotated[int, Query(ge=1, le=16 << 20)] = 1 << 20) -> PlainTextResponse:
    row = store.get(job_id)
    if row is None:
        raise not_found(job_id)
    path = FsPath(row.output) / "job.log"
    data = b""
    if path.is_file():
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
    return PlainTextResponse(data.decode("utf-8", errors="replace"),
                             headers={"X-Next-Offset": str(offset + len(data))})


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
async def events(job_id: JobId, request: Request, store: StoreDep, settings: SettingsDep,
                 follow: bool = True,
                 last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
                 ) -> EventSourceResponse:
    if await to_thread.run_sync(store.get, job_id) is None:
        raise not_found(job_id)
    return EventSourceResponse(_stream(job_id, request, store, settings.poll_s, follow, last_event_id or 0),
                               ping=15)


async def _stream(job_id: str, request: Request, store: Any, poll_s: float, follow: bool,
                  after: int) -> AsyncIterator[dict[str, Any]]:
    """Past events, then new events, metric points and timeline notices until the job ends."""
    metric_t = await to_thread.run_sync(store.metric_cursor, job_id)
    timeline_steps = await to_thread.run_sync(store.timeline_steps, job_id)  # the client has this one
    while True:
        row = await to_thread.run_sync(store.get, job_id)
        for ev in await to_thread.run_sync(store.events, job_id, after):
            after = ev.seq
            yield {"id": str(ev.seq), "event": ev.kind, "data": ev.model_dump_json()}
        if not follow or row is None:
            return
        for p in await to_thread.run_sync(store.metrics_since, job_id, metric_t):
            metric_t = max(metric_t, p.time)
            yield {"event": "metrics", "data": json.dumps({"kind": "metrics", "time": p.time,
                                                            "data": p.model_dump()})}
        steps = await to_thread.run_sync(store.timeline_steps, job_id)
        if steps and steps != timeline_steps:
            first, last = map(int, steps.split("-"))
            notice = {"kind": "timeline", "data": {"steps": [first, last]}}
            yield {"event": "timeline", "data": json.dumps(notice)}
            timeline_steps = steps
        if ApiState(row.state).is_terminal or await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)
