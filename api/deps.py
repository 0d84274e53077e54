"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from pipewave.api.manager import JobManager
from pipewave.api.settings import Settings
from pipewave.api.store import JobStore


# async: FastAPI runs a sync dependency in its thread pool, a hop per dependency per request
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_manager(request: Request) -> JobManager:
    return request.app.state.manager  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ManagerDep = Annotated[JobManager, Depends(get_manager)]
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
NodeId = Annotated[str, Path(min_length=1, max_length=128)]


def not_found(job_id: str) -> HTTPException:
    return HTTPException(404, detail=f"no such job: {job_id}")
