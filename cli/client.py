"""A small synchronous client of the pipewave REST API (see docs/api.md).

Every failure raises ``ClientError`` whose message is one readable line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
STREAM_READ_FACTOR = 5  # an event stream may be quiet for this many request timeouts
_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


class ClientError(Exception):
    """A request that failed; the message is one readable line, ``status`` the HTTP status if any,
    ``detail`` the server's own one-line reason for an error response (else None)."""

    def __init__(self, message: str, status: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


def pipewave_home() -> Path:
    """pipewave's state directory, as the service reads it: ``$PIPEWAVE_HOME``, else ``~/.pipewave``
    (the service keeps its API token in ``api-token`` there)."""
    return Path(os.environ.get("PIPEWAVE_HOME") or Path.home() / ".pipewave").expanduser()


def resolve_connection(url: str | None, token: str | None) -> tuple[str, str | None]:
    """The server URL and API token: the arguments, else $PIPEWAVE_URL / $PIPEWAVE_API_TOKEN, else
    the default URL and the token file $PIPEWAVE_HOME/api-token (if readable)."""
    url = url or os.environ.get("PIPEWAVE_URL") or DEFAULT_URL
    token = token or os.environ.get("PIPEWAVE_API_TOKEN") or _read_token_file(pipewave_home() / "api-token")
    return url, token


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(err: Exception) -> str:
    """An exception's first words, e.g. "connection refused" for "[Errno 111] Connection refused"."""
    text = _ERRNO.sub("", one_line(str(err)))
    return (text[:1].lower() + text[1:]) if text else type(err).__name__


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events from text lines: yields {"id", "event", "data"} with ``data`` parsed as
    JSON; comment lines (":...") are skipped, a blank line ends a message, multi-line data joins
    with newlines, and a message cut off at the end is dropped."""
    msg_id: str | None = None
    event: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield {"id": msg_id, "event": event or "message", "data": _sse_data("\n".join(data))}
            msg_id, event, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            msg_id = value


def _sse_data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ClientError(f"the server sent an event whose data is not JSON: {one_line(text, 80)}") from None


def _detail(resp: httpx.Response) -> str:
    """The one-line ``detail`` of an error body, else the status's reason phrase."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # a framework's raw validation errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    if detail:
        return one_line(str(detail))
    return resp.reason_phrase or "error"


class ApiClient:
    """The pipewave API at ``url`` (the server root; "/api/v1" is added), authenticated by ``token``."""

    def __init__(self, url: str, token: str | None, timeout: float = 30) -> None:
        url = url.rstrip("/").removesuffix(API_PREFIX)
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"invalid server URL {url!r}: it must start with http:// or https://")
        self.url, self.timeout = url, timeout
        headers = {"User-Agent": "pipewave-cli", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=url + API_PREFIX, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ the routes

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /jobs: the new job (or the earlier one for a replayed idempotency key)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._dict(self._request("POST", "/jobs", json=spec, headers=headers))

    def list_jobs(self, states: list[str] | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """GET /jobs: {"items", "total", "limit", "offset"}, newest first."""
        params: list[tuple[str, str | int]] = [("state", s) for s in states or []]
        params += [("limit", limit), ("offset", offset)]
        return self._dict(self._request("GET", "/jobs", params=params))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /jobs/{id}."""
        return self._dict(self._request("GET", f"/jobs/{job_id}", job_id=job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """POST /jobs/{id}/cancel: the job, with its cancel requested (or unchanged if it ended)."""
        return self._dict(self._request("POST", f"/jobs/{job_id}/cancel", job_id=job_id))

    def delete(self, job_id: str) -> None:
        """DELETE /jobs/{id} (an ended job only)."""
        self._request("DELETE", f"/jobs/{job_id}", job_id=job_id)

    def metrics(self, job_id: str, since_step: int = 0) -> list[dict[str, Any]]:
        """GET /jobs/{id}/metrics: the job's step points, by step."""
        resp = self._request("GET", f"/jobs/{job_id}/metrics", job_id=job_id,
                             params={"since_step": since_step})
        items = self._dict(resp).get("items")
        if not isinstance(items, list):
            raise self._unexpected(resp, "no list of items")
        return items

    def logs(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """GET /jobs/{id}/logs: the log text from byte ``offset`` and the offset to continue from."""
        resp = self._request("GET", f"/jobs/{job_id}/logs", job_id=job_id, params={"offset": offset},
                             headers={"Accept": "text/plain"})
        nxt = resp.headers.get("X-Next-Offset", "")
        next_offset = int(nxt) if nxt.isdigit() else offset + len(resp.content)
        return resp.content.decode("utf-8", errors="replace"), next_offset

    def events(self, job_id: str, follow: bool = True,
               last_event_id: int | None = None) -> Generator[dict[str, Any], None, None]:
        """GET /jobs/{id}/events: the job's events as {"id", "event", "data"}; with ``follow`` the
        stream lasts until the job ends; ``last_event_id`` asks for the events after that one."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self.timeout, read=self.timeout * STREAM_READ_FACTOR)
        params = {"follow": "true" if follow else "false"}
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/events", params=params, headers=headers,
                                   timeout=timeout) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp, job_id)
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise self._unexpected(resp, "not an event stream")
                yield from parse_sse(resp.iter_lines())
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise ClientError(self._transport_message(err)) from None

    def cluster(self) -> dict[str, Any]:
        """GET /cluster: nodes, slots and the stages placed on them."""
        return self._dict(self._request("GET", "/cluster"))

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, job_id: str | None = None, **kw: Any) -> httpx.Response:
        logger.debug("%s %s%s%s", method, self.url, API_PREFIX, path)
        try:
            resp = self._http.request(method, path, **kw)
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise ClientError(self._transport_message(err)) from None
        self._check(resp, job_id)
        return resp

    def _check(self, resp: httpx.Response, job_id: str | None) -> None:
        """Raise the ClientError of an error response."""
        code = resp.status_code
        if code < 400:
            return
        detail = _detail(resp)
        if code == 401:
            msg = "unauthorized: the API token was rejected (set PIPEWAVE_API_TOKEN or --token)"
        elif code == 404 and job_id is not None:
            msg = f"no such job: {job_id}"
        else:
            msg = f"{code}: {detail}"
        raise ClientError(msg, status=code, detail=detail)

    def _transport_message(self, err: Exception) -> str:
        where = f"the pipewave server at {self.url}"
        if isinstance(err, httpx.ConnectTimeout):
            return f"cannot reach {where}: no answer within {self.timeout:g} s"
        if isinstance(err, httpx.TimeoutException):
            return f"{where} did not answer within {self.timeout:g} s"
        if isinstance(err, httpx.ConnectError):
            return f"cannot reach {where}: {_reason(err)}"
        if isinstance(err, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return f"invalid server URL {self.url!r}: {_reason(err)}"
        return f"lost the connection to {where}: {_reason(err)}"

    def _dict(self, resp: httpx.Response) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError:
            raise self._unexpected(resp, "not JSON") from None
        if not isinstance(body, dict):
            raise self._unexpected(resp, f"a JSON {type(body).__name__}, not an object")
        return body

    def _unexpected(self, resp: httpx.Response, what: str) -> ClientError:
        return ClientError(f"unexpected answer from the pipewave server at {self.url} "
                           f"({resp.request.method} {resp.request.url.path}: {resp.status_code}, {what})",
                           status=resp.status_code)
