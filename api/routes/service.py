"""Service routes: health (no auth), Prometheus metrics, the dashboard and its login."""

from __future__ import annotations

import html
import urllib.parse
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from pipewave.api.auth import COOKIE, token_matches
from pipewave.api.deps import ManagerDep
from pipewave.api.models import Health
from pipewave.service.cluster.status import connected

open_router = APIRouter(tags=["service"])  # no token needed
router = APIRouter(tags=["service"])


@open_router.get("/healthz", response_model=Health)
def healthz(manager: ManagerDep) -> Health:
    return Health(status="ok", ray=connected())


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.prom.render()
    return Response(body, media_type=content_type)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse(resources.files("pipewave.api").joinpath("static/index.html").read_text(),
                        headers={"Cache-Control": "no-store"})


def login_page(message: str = "") -> str:
    note = f'<p class="err">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pipewave: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;color:#222}}
input{{width:100%;padding:.5rem;font:inherit}}button{{margin-top:.75rem;padding:.4rem 1.2rem;font:inherit}}
.err{{color:#b00}}</style></head><body><h1>pipewave</h1>{note}
<p>Paste the API token (the file <code>$PIPEWAVE_HOME/api-token</code> on the server, or
<code>$PIPEWAVE_API_TOKEN</code>).</p>
<form method="post" action="/login"><input type="password" name="token" autocomplete="off" autofocus>
<button type="submit">Sign in</button></form></body></html>"""


def _signed_in(request: Request, token: str) -> Response:
    if not token_matches(token, request.app.state.token):
        return HTMLResponse(login_page("That token is not valid."), status_code=401)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                    max_age=30 * 86400)
    return resp


@open_router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, token: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    if token is None:
        return HTMLResponse(login_page(), status_code=401)
    return _signed_in(request, token)


@open_router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request) -> Response:
    """The login form's post (application/x-www-form-urlencoded, field ``token``)."""
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", errors="replace"))
    token = (form.get("token") or [""])[0]
    return _signed_in(request, token[:256])
