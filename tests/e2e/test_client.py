"""The API client and the server commands' error paths, against a canned loopback HTTP server.

No pipewave server and no Ray: a stdlib HTTP server on 127.0.0.1 answers as docs/api.md says.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
from typer.testing import CliRunner

from pipewave.cli.client import ApiClient, ClientError, parse_sse, resolve_connection
from pipewave.cli.client_commands import register

TOKEN = "test-token-0123456789"
JOB = {"id": "j-1", "name": "tiny", "state": "RUNNING", "phase": "RUNNING", "step": 3, "steps": 10}
EVENT_STREAM = (
    ": connected\n\n"
    'id: 1\nevent: state\ndata: {"seq": 1, "kind": "state", "message": "QUEUED",'
    ' "data": {"state": "QUEUED"}}\n\n'
    ": keep-alive\n"
    'event: metrics\ndata: {"kind": "metrics",\ndata:  "data": {"step": 3, "loss": 4.5}}\n\n'
    'id: 2\r\nevent: state\r\ndata: {"seq": 2, "kind": "state", "message": "SUCCEEDED",'
    ' "data": {"state": "SUCCEEDED"}}\r\n\r\n'
)
UNAUTHORIZED = "unauthorized: the API token was rejected (set PIPEWAVE_API_TOKEN or --token)"

# (method, path) -> (status, content type, body)
ROUTES: dict[tuple[str, str], tuple[int, str, str]] = {
    ("GET", "/api/v1/jobs/j-1"): (200, "application/json", json.dumps(JOB)),
    ("GET", "/api/v1/jobs/boom"): (500, "text/plain", "Internal Server Error\nTraceback ..."),
    ("GET", "/api/v1/jobs"): (200, "application/json", json.dumps({"items": [JOB], "total": 1})),
    ("POST", "/api/v1/jobs/j-1/cancel"): (202, "application/json", json.dumps({**JOB, "state": "CANCELLED"})),
    ("DELETE", "/api/v1/jobs/j-1"): (204, "application/json", ""),
    ("DELETE", "/api/v1/jobs/j-2"): (409, "application/json",
                                     json.dumps({"detail": "job j-2 has not ended; cancel it first"})),
    ("GET", "/api/v1/jobs/j-1/metrics"): (200, "application/json", json.dumps({"items": [{"step": 1}]})),
    ("GET", "/api/v1/jobs/j-1/logs"): (200, "text/plain", "line one\nline two\n"),
    ("GET", "/api/v1/jobs/j-1/events"): (200, "text/event-stream", EVENT_STREAM),
    ("GET", "/api/v1/cluster"): (200, "text/html", "<html>a proxy page</html>"),
}


class _Handler(BaseHTTPRequestHandler):
    """Answers from ROUTES; records each request on the server."""

    server: _Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else b""
        path = urlsplit(self.path).path
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers), "body": body})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, "application/json", json.dumps({"detail": "missing or bad token"}))
        if path == "/api/v1/slow":
            time.sleep(1.0)
        if (self.command, path) == ("POST", "/api/v1/jobs"):
            return self._send(*self._submitted(json.loads(body)))
        status, ctype, text = ROUTES.get((self.command, path), (404, "application/json", '{"detail": "nf"}'))
        headers = {"X-Next-Offset": "118"} if path.endswith("/logs") else {}
        self._send(status, ctype, text, headers)

    def _submitted(self, spec: dict[str, Any]) -> tuple[int, str, str]:
        if self.headers.get("Idempotency-Key") == "taken":
            return 409, "application/json", json.dumps({"detail": "idempotency key reused with another body"})
        if spec.get("steps") == 0:
            detail = "invalid job spec:\n steps: Input should be greater than or equal to 1"
            return 422, "application/json", json.dumps({"detail": detail, "errors": [{"loc": ["steps"]}]})
        return 201, "application/json", json.dumps({**JOB, "state": "QUEUED"})

    def _send(self, status: int, ctype: str, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    requests: list[dict[str, Any]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (the timeout test): nothing to report


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def url(server: _Server) -> str:
    server.requests.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def client(url: str) -> Iterator[ApiClient]:
    with ApiClient(url, TOKEN, timeout=5) as c:
        yield c



def _error(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- the client


def test_routes_answer_json(client: ApiClient, server: _Server) -> None:
    assert client.get_job("j-1") == JOB
    assert client.cancel("j-1")["state"] == "CANCELLED"
    client.delete("j-1")
    assert client.metrics("j-1") == [{"step": 1}]
    assert client.list_jobs(["RUNNING", "QUEUED"], limit=5)["total"] == 1
    assert server.requests[-1]["path"] == "/api/v1/jobs?state=RUNNING&state=QUEUED&limit=5&offset=0"
    assert all(r["headers"]["Authorization"] == f"Bearer {TOKEN}" for r in server.requests)


def test_submit_sends_the_spec_and_idempotency_key(client: ApiClient, server: _Server) -> None:
    assert client.submit({"name": "tiny", "steps": 10}, idempotency_key="k-1")["state"] == "QUEUED"
    sent = server.requests[-1]
    assert json.loads(sent["body"]) == {"name": "tiny", "steps": 10}
    assert sent["headers"]["Idempotency-Key"] == "k-1"


def test_logs_return_text_and_next_offset(client: ApiClient, server: _Server) -> None:
    assert client.logs("j-1", offset=100) == ("line one\nline two\n", 118)
    assert server.requests[-1]["path"] == "/api/v1/jobs/j-1/logs?offset=100"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.get_job("nope"), "no such job: nope"),
        (lambda c: c.submit({"steps": 0}),
         "422: invalid job spec: steps: Input should be greater than or equal to 1"),
        (lambda c: c.submit({"steps": 1}, idempotency_key="taken"),
         "409: idempotency key reused with another body"),
        (lambda c: c.delete("j-2"), "409: job j-2 has not ended; cancel it first"),
        (lambda c: c.get_job("boom"), "500: Internal Server Error"),
    ],
)
def test_http_errors_are_one_exact_line(client: ApiClient, call: Any, message: str) -> None:
    assert _error(lambda: call(client)) == message


def test_rejected_token(url: str) -> None:
    with ApiClient(url, "wrong-token") as c:
        assert _error(lambda: c.get_job("j-1")) == UNAUTHORIZED
    with ApiClient(url, None) as c:
        assert _error(c.cluster) == UNAUTHORIZED


def test_body_that_is_not_json(client: ApiClient, url: str) -> None:
    assert _error(client.cluster) == (f"unexpected answer from the pipewave server at {url} "
                                      "(GET /api/v1/cluster: 200, not JSON)")


def test_server_down(closed_url: str) -> None:
    with ApiClient(closed_url, TOKEN) as c:
        assert _error(lambda: c.get_job("j-1")) == (
            f"cannot reach the pipewave server at {closed_url}: connection refused")
        assert _error(lambda: list(c.events("j-1"))).startswith("cannot reach the pipewave server")


def test_timeout(url: str) -> None:
    with ApiClient(url, TOKEN, timeout=0.2) as c:
        assert _error(lambda: c._request("GET", "/slow")) == (
            f"the pipewave server at {url} did not answer within 0.2 s")


def test_bad_url() -> None:
    assert _error(lambda: ApiClient("127.0.0.1:8000", None)) == (
        "invalid server URL '127.0.0.1:8000': it must start with http:// or https://")


# ----------------------------------------------------------------------------- events


def test_event_stream(client: ApiClient, server: _Server) -> None:
    msgs = list(client.events("j-1", last_event_id=0))
    assert [(m["id"], m["event"]) for m in msgs] == [("1", "state"), (None, "metrics"), ("2", "state")]
    assert msgs[1]["data"] == {"kind": "metrics", "data": {"step": 3, "loss": 4.5}}  # two data lines
    assert msgs[2]["data"]["data"] == {"state": "SUCCEEDED"}
    sent = server.requests[-1]
    assert sent["path"] == "/api/v1/jobs/j-1/events?follow=true"
    assert sent["headers"]["Last-Event-ID"] == "0"


def test_event_stream_of_a_missing_job(client: ApiClient) -> None:
    assert _error(lambda: list(client.events("nope"))) == "no such job: nope"


def test_parse_sse() -> None:
    lines = [": hello", "id: 5", "event: info", "data: [1,", "data: 2]", "", "", "data:3", "",
             "event: cut", "data: {}"]  # the last message never ends: dropped
    assert list(parse_sse(lines)) == [{"id": "5", "event": "info", "data": [1, 2]},
                                      {"id": None, "event": "message", "data": 3}]
    with pytest.raises(ClientError, match="not JSON: oops"):
        list(parse_sse(["data: oops", ""]))


# ----------------------------------------------------------------------------- connection


def test_resolve_connection_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PIPEWAVE_HOME", str(tmp_path))
    monkeypatch.delenv("PIPEWAVE_URL", raising=False)
    monkeypatch.delenv("PIPEWAVE_API_TOKEN", raising=False)
    assert resolve_connection(None, None) == ("http://127.0.0.1:8000", None)
    (tmp_path / "api-token").write_text("from-file\n")
    assert resolve_connection(None, None) == ("http://127.0.0.1:8000", "from-file")
    monkeypatch.setenv("PIPEWAVE_URL", "http://env:1")
    monkeypatch.setenv("PIPEWAVE_API_TOKEN", "from-env")
    assert resolve_connection(None, None) == ("http://env:1", "from-env")
    assert resolve_connection("http://flag:2", "from-flag") == ("http://flag:2", "from-flag")


# ----------------------------------------------------------------------------- commands


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app


def _invoke(app: typer.Typer, *args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize("args", [["jobs"], ["status", "j-1"], ["cancel", "j-1"], ["logs", "j-1"]])
def test_command_with_server_down(cli: typer.Typer, closed_url: str, args: list[str]) -> None:
    r = _invoke(cli, *args, "--url", closed_url, "--token", TOKEN)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: cannot reach the pipewave server at {closed_url}: connection refused"


def test_command_with_missing_job(cli: typer.Typer, url: str) -> None:
    r = _invoke(cli, "status", "nope", "--url", url, "--token", TOKEN)
    assert (r.exit_code, r.stderr.strip()) == (1, "error: no such job: nope")


def test_command_with_rejected_token(cli: typer.Typer, url: str) -> None:
    r = _invoke(cli, "jobs", "--url", url, "--token", "wrong-token")
    assert (r.exit_code, r.stderr.strip()) == (1, f"error: {UNAUTHORIZED}")


def test_submit_bad_job_file(cli: typer.Typer, closed_url: str, url: str, tmp_path: Path) -> None:
    r = _invoke(cli, "submit", str(tmp_path / "none.yaml"), "--url", closed_url)
    assert r.exit_code == 2
    assert r.stderr.strip() == f"error: job file not found: {tmp_path / 'none.yaml'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {kind: gpt}\nsteps: 0\ncolour: blue\n")
    r = _invoke(cli, "submit", str(bad), "--url", url, "--token", TOKEN)  # the server validates (422)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: invalid job spec: ") and len(r.stderr.strip().splitlines()) == 1


def test_jobs_unknown_state(cli: typer.Typer, closed_url: str) -> None:
    r = _invoke(cli, "jobs", "--state", "sleeping", "--url", closed_url)
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: unknown state 'SLEEPING'")
