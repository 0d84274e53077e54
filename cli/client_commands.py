"""The ``pipewave`` commands that talk to a pipewave server: submit, jobs, status, cancel, logs.

``register(app)`` adds them to the command line. They import nothing of pipewave's service, API
or workers (the client install has no torch and no Ray): ``submit`` reads the job file here and
the server validates it. Every failure ends with one line on stderr and exit code 1 (a job file
that cannot be read, or one the server rejects as invalid: 2); following a job ends with 0
(succeeded), 1 (failed) or 130 (cancelled, or Ctrl-C, which leaves the job running).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape

from pipewave.cli.app import err_console, error_text, fail, interrupted
from pipewave.cli.client import ApiClient, ClientError, one_line, resolve_connection
from pipewave.cli.client_views import STATES, TERMINAL, num, print_job, print_jobs

logger = logging.getLogger(__name__)

STREAM_ONLY = frozenset({"metrics", "timeline"})  # event kinds without a stored sequence number
SHOWN_KINDS = frozenset({"rebalance", "recovery", "checkpoint"})
RECONNECTS = 3  # event stream drops in a row before falling back to polling
POLL_FAILURES = 5  # failed polls in a row before giving up
POLL_S = 2.0
LOG_POLL_S = 1.0

UrlOpt = Annotated[str | None, typer.Option(
    "--url", help="server URL (default $PIPEWAVE_URL, else http://127.0.0.1:8000)")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", help="API token (default $PIPEWAVE_API_TOKEN, else $PIPEWAVE_HOME/api-token)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
JobIdArg = Annotated[str, typer.Argument(help="the job id (j-...)")]


def register(app: typer.Typer) -> None:
    """Add the server commands to ``app``."""
    for command in (submit, jobs, status, cancel, logs):
        app.command()(command)


# ----------------------------------------------------------------------------- commands


def submit(
    job: Annotated[Path, typer.Argument(help="job spec, YAML or JSON")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="show its progress until it ends")] = False,
    idempotency_key: Annotated[str | None, typer.Option(
        help="a key that makes a repeated submit return the first job")] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Submit a job file to the server and print its id.

    With --follow, show its progress until it ends: exit 0 succeeded, 1 failed, 130 cancelled."""
    body = _load_job(job)
    with _connect(url, token) as client:
        created = _submit(client, body, idempotency_key)
        if not follow:
            if as_json:
                _print_json(created)
            else:
                print(created["id"])
            return
        if not as_json:
            print(created["id"], flush=True)
        final = _follow(client, created, quiet=as_json)
    if as_json:
        _print_json(final)
    _finish(final, quiet=as_json)


def jobs(
    state: Annotated[list[str] | None, typer.Option(
        "--state", help="only jobs in this state (repeatable): " + ", ".join(STATES))] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many jobs")] = 50,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List the server's jobs, newest first."""
    states = _states(state or [])
    with _connect(url, token) as client:
        page = client.list_jobs(states, limit)
    if as_json:
        _print_json(page)
    else:
        print_jobs(page)


def status(job_id: JobIdArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Show a job: its state, progress, figures and where its stages run."""
    with _connect(url, token) as client:
        job = client.get_job(job_id)
    if as_json:
        _print_json(job)
    else:
        print_job(job)


def cancel(job_id: JobIdArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Cancel a job (it stops at its next step boundary) and print its state."""
    with _connect(url, token) as client:
        job = client.cancel(job_id)
    if as_json:
        _print_json(job)
    elif job["state"] not in TERMINAL and job.get("cancel_requested"):
        print(f"{job['id']} {job['state']} (cancel requested)")
    else:
        print(f"{job['id']} {job['state']}")


def logs(
    job_id: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print {id, text, next_offset} objects, one a line")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print a job's log; --follow keeps printing new lines until the job ends."""
    with _connect(url, token) as client:
        try:
            _print_logs(client, job_id, follow, as_json)
        except KeyboardInterrupt:
            interrupted()


# ----------------------------------------------------------------------------- plumbing


@contextmanager
def _connect(url: str | None, token: str | None) -> Iterator[ApiClient]:
    """A client of the server; a ClientError inside ends the command with its line and exit 1."""
    try:
        with ApiClient(*resolve_connection(url, token)) as client:
            yield client
    except ClientError as err:
        fail(str(err), 1)


def _load_job(path: Path) -> dict[str, Any]:
    """The job file's fields (JSON for a .json file, else YAML) as the JSON body of a submit; a
    file that cannot be read as a mapping ends the command (exit 2). The server validates them."""
    if not path.is_file():
        fail(f"job file not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        fail(f"cannot read job file {path}: {error_text(err).strip()}")
    if not isinstance(data, dict):
        fail(f"job file {path} must hold a mapping of fields, not {type(data).__name__}")
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:  # YAML's dates, non-string keys, .nan, ...
        fail(f"cannot send job file {path} as JSON: {error_text(err)}")
    return data


def _submit(client: ApiClient, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """POST the job; the server's validation error (422) ends the command as a bad job file (exit 2)."""
    try:
        return client.submit(body, idempotency_key)
    except ClientError as err:
        if err.status != 422:
            raise
        reason = one_line(err.detail or str(err))
        for prefix in ("invalid request: ", "invalid job spec: "):
            reason = reason.removeprefix(prefix)
        fail(f"invalid job spec: {reason}")


def _states(given: list[str]) -> list[str]:
    states = [s.upper() for s in given]
    for s in states:
        if s not in STATES:
            fail(f"unknown state {s!r}: one of {', '.join(STATES)}")
    return states


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _finish(job: dict[str, Any], quiet: bool) -> None:
    """Report how a followed job ended and exit with its code."""
    state = job["state"]
    if state == "SUCCEEDED":
        if not quiet:
            loss = num(job.get("loss"))
            print(f"{job['id']} SUCCEEDED: step {job.get('step')}/{job.get('steps')}, loss {loss}")
        return
    if state == "FAILED":
        fail(f"job {job['id']} failed: {job.get('reason') or 'no reason given'}", 1)
    err_console.print(escape(f"job {job['id']} was cancelled"), highlight=False)
    raise typer.Exit(130)


def _follow(client: ApiClient, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Follow a job to its end (Ctrl-C: exit 130, the job goes on); returns the ended job."""
    try:
        return _Follower(client, job, quiet).run()
    except KeyboardInterrupt:
        interrupted()


class _Follower:
    """Shows a job's progress: its event stream feeds a progress bar, reconnecting where it drops
    (the server replays; events seen already are skipped), then polling the job when it keeps dropping."""

    def __init__(self, client: ApiClient, job: dict[str, Any], quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.client, self.job_id, self.quiet = client, job["id"], quiet
        self.state: str = job["state"]
        self.last_seq = -1
        self.ended: dict[str, Any] | None = None  # the terminal state event's payload
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                            TimeRemainingColumn(), console=err_console, disable=quiet)
        self.task = self.bar.add_task(escape(str(job.get("name") or self.job_id)), total=job.get("steps"),
                                      completed=job.get("step") or 0, loss=num(job.get("loss")), rate="")

    def run(self) -> dict[str, Any]:
        with self.bar:
            if self._stream():
                return self._final()
            self._say("[dim]the event stream keeps dropping; polling the job instead[/dim]")
            return self._poll()

    def _stream(self) -> bool:
        """Follow the event stream; True once the job has ended, False when it keeps dropping."""
        drops = 0
        while drops <= RECONNECTS:
            after = self.last_seq if self.last_seq >= 0 else None
            try:
                with closing(self.client.events(self.job_id, last_event_id=after)) as stream:
                    for msg in stream:
                        if self._on_event(msg):
                            drops = 0
                        if self.ended is not None:
                            return True
            except ClientError as err:
                if err.status is not None and err.status < 500:
                    raise
                logger.info("event stream of %s dropped: %s", self.job_id, err)
            drops += 1
            if drops <= RECONNECTS:
                time.sleep(1.0)
        return False

    def _on_event(self, msg: dict[str, Any]) -> bool:
        """Show one SSE message; False for an event seen already."""
        ev = msg["data"] if isinstance(msg["data"], dict) else {}
        kind = ev.get("kind") or msg["event"]
        seq = ev.get("seq")
        if kind not in STREAM_ONLY and isinstance(seq, int):
            if seq <= self.last_seq:
                return False
            self.last_seq = seq
        message = escape(str(ev.get("message", "")))
        if kind == "metrics":
            point = ev.get("data") or {}
            self._progress(point.get("step"), point.get("loss"), point.get("samples_per_s"))
        elif kind == "state":
            self._say(f"[dim]{message}[/dim]")
            self.state = (ev.get("data") or {}).get("state", self.state)
            if self.state in TERMINAL:
                self.ended = ev
        elif kind == "error":
            self._say(f"[red]{message}[/red]")
        elif kind in SHOWN_KINDS:
            self._say(message)
        return True

    def _final(self) -> dict[str, Any]:
        """The ended job; from its state event where the server cannot say."""
        try:
            return self.client.get_job(self.job_id)
        except ClientError as err:
            logger.info("cannot fetch the ended job %s: %s", self.job_id, err)
            ended = self.ended or {}
            return {"id": self.job_id, "state": self.state, "reason": ended.get("message")}

    def _poll(self) -> dict[str, Any]:
        """Poll the job every POLL_S seconds until it ends."""
        failures = 0
        while True:
            try:
                job = self.client.get_job(self.job_id)
            except ClientError as err:
                failures += 1
                if (err.status is not None and err.status < 500) or failures >= POLL_FAILURES:
                    raise
            else:
                failures = 0
                self._progress(job.get("step"), job.get("loss"), job.get("samples_per_s"))
                if job["state"] != self.state:
                    self.state = job["state"]
                    self._say(f"[dim]{escape(self.state)}: {escape(str(job.get('reason') or ''))}[/dim]")
                if self.state in TERMINAL:
                    return job
            time.sleep(POLL_S)

    def _progress(self, step: Any, loss: Any, rate: Any) -> None:
        fields: dict[str, Any] = {"loss": num(loss)}
        if isinstance(rate, int | float):
            fields["rate"] = f"{rate:.1f} samples/s"
        if isinstance(step, int):
            fields["completed"] = step
        self.bar.update(self.task, **fields)

    def _say(self, markup: str) -> None:
        if not self.quiet:
            self.bar.console.print(markup, highlight=False)


def _print_logs(client: ApiClient, job_id: str, follow: bool, as_json: bool) -> None:
    """Print the log from its start; following, poll until the job has ended and nothing is left."""
    offset = 0
    while True:
        ended = not follow or client.get_job(job_id)["state"] in TERMINAL  # before reading: no lost tail
        text, offset = _read_log(client, job_id, offset)
        if as_json and (text or not follow):
            print(json.dumps({"id": job_id, "text": text, "next_offset": offset}), flush=True)
        elif not as_json:
            sys.stdout.write(text)
            sys.stdout.flush()
        if ended:
            return
        time.sleep(LOG_POLL_S)


def _read_log(client: ApiClient, job_id: str, offset: int) -> tuple[str, int]:
    """The log from byte ``offset`` to its current end, and the offset after it."""
    parts: list[str] = []
    while True:
        text, nxt = client.logs(job_id, offset)
        if not text or nxt <= offset:
            return "".join(parts), max(nxt, offset)
        parts.append(text)
        offset = nxt
