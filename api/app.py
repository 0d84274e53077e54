"""The FastAPI application: ``create_app(settings)``; ``pipewave serve`` runs it under uvicorn."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from pipewave.api import auth
from pipewave.api.manager import JobManager
from pipewave.api.prom import ServiceMetrics
from pipewave.api.routes import cluster, jobs, models, service
from pipewave.api.settings import Settings, get_settings, load_token
from pipewave.api.store import JobStore
from pipewave.service.spec import field_path

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
OPEN_PATHS = frozenset({"/healthz", "/login"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from pipewave.service.cluster.runtime import connect

        settings.home.mkdir(parents=True, exist_ok=True)
        os.environ["PIPEWAVE_HOME"] = str(settings.home)  # the profiler cache and others follow it
        connect(settings.ray_address, settings.local_cpus)  # (no-op if `pipewave serve` did)
        app.state.manager.start()
        try:
            yield
        finally:
            app.state.manager.stop()
            app.state.store.close()

    app = FastAPI(title="pipewave", version="0.1.0", lifespan=lifespan,
                  description="Elastic, asynchronous pipeline-parallel training on Ray. "
                              "Every route but /healthz needs 'Authorization: Bearer <token>'.")
    settings.home.mkdir(parents=True, exist_ok=True)
    app.state.settings = settings
    app.state.token = load_token(settings)
    app.state.store = JobStore(settings.db_url)
    app.state.manager = JobManager(settings, app.state.store)
    app.state.prom = ServiceMetrics(app.state.store, app.state.manager)

    api = APIRouter(prefix="/api/v1")
    api.include_router(jobs.router)
    api.include_router(cluster.router)
    api.include_router(models.router)
    app.include_router(api)
    app.include_router(service.open_router)
    app.include_router(service.router)
    static = resources.files("pipewave.api").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    _errors(app)
    app.add_middleware(Guard, token=app.state.token, max_body=settings.max_body_bytes, prom=app.state.prom)
    return app


def _errors(app: FastAPI) -> None:
    """Every error is JSON with a one-line ``detail``; validation errors list their fields."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        found = [([str(p) for p in e.get("loc", ())], _msg(e)) for e in err.errors()]
        errors = [{"loc": loc, "msg": msg} for loc, msg in found]
        line = "; ".join(_where(loc, msg) for loc, msg in found[:5])
        return JSONResponse({"detail": f"invalid request: {line}", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        logger.exception("internal error")
        return JSONResponse({"detail": f"internal error: {type(err).__name__}"}, status_code=500)


def _where(loc: list[str], msg: str) -> str:
    """``field.path: message``; the path as the user wrote it (``spec.field_path``), left out
    where the message names its field itself."""
    where = ".".join(field_path(loc[1:] if loc[:1] == ["body"] else loc))
    return msg if msg.startswith(f"{where}.") else f"{where}: {msg}"


def _msg(e: Any) -> str:
    if e.get("type") == "extra_forbidden":
        return "unknown field"
    if e.get("type") == "json_invalid":
        return f"malformed JSON ({e.get('ctx', {}).get('error', 'decode error')})"
    return str(e.get("msg", "invalid")).removeprefix("Value error, ")


class _TooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware: token auth (all but the open paths), the request body limit, and
    request metrics. Pure ASGI keeps SSE streams unbuffered."""

    def __init__(self, app: Any, token: str, max_body: int, prom: ServiceMetrics) -> None:
        self.app, self.token, self.max_body, self.prom = app, token, max_body, prom

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        request = Request(scope)
        status = {"code": 500, "started": False}

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS:
                auth.check(request, self.token)
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise _TooLarge
            await self.app(scope, self._limited(receive), send_wrapped)
        except HTTPException as err:  # 401 from auth
            if "text/html" in request.headers.get("accept", "") and request.method == "GET":
                resp: Any = HTMLResponse(service.login_page(), status_code=err.status_code)
            else:
                resp = JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)
            await resp(scope, receive, send_wrapped)
        except _TooLarge:
            if status["started"]:
                raise
            too_big = f"request body larger than {self.max_body} bytes"
            resp = JSONResponse({"detail": too_big}, status_code=413)
            await resp(scope, receive, send_wrapped)
        finally:
            static = scope["path"].startswith("/static/")
            route = getattr(scope.get("route"), "path", None) or ("/static" if static else "unmatched")
            self.prom.requests.labels(request.method, route, str(status["code"])).inc()
            self.prom.latency.labels(request.method, route).observe(time.perf_counter() - t0)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        return wrapped
