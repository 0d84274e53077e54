"""How the client's commands show jobs: the job states, their colours, the jobs table and one job's
card (rich markup; every server string escaped)."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape

STATES = ("QUEUED", "STARTING", "RUNNING", "REBALANCING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
STATE_STYLE = {"RUNNING": "green", "REBALANCING": "yellow", "STARTING": "cyan", "QUEUED": "dim",
               "SUCCEEDED": "bold green", "FAILED": "bold red", "CANCELLED": "magenta"}


def num(x: Any, fmt: str = ".4f") -> str:
    """A number as ``fmt`` gives it; "-" for anything else (a missing figure)."""
    return format(x, fmt) if isinstance(x, int | float) else "-"


def _opt(x: Any) -> str:
    return "-" if x is None else escape(str(x))


def _age(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    s = max(0.0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} ({_age(t)} ago)"


def _styled_state(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else escape(state)


def _layers(span: Any) -> str:
    if not (isinstance(span, list) and len(span) == 2):
        return "-"
    first, end = span
    return f"{first}" if end - first == 1 else f"{first}-{end - 1}"


def print_jobs(page: dict[str, Any]) -> None:
    """A page of ``GET /jobs`` as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    items = page.get("items") or []
    t = Table(caption=f"{len(items)} of {page.get('total', len(items))} jobs", caption_justify="left")
    for col in ("id", "name", "state", "step", "loss", "samples/s", "stages", "age"):
        t.add_column(col, justify="right" if col in ("step", "loss", "samples/s", "stages") else "left")
    for j in items:
        t.add_row(escape(str(j.get("id"))), escape(str(j.get("name"))), _styled_state(str(j.get("state"))),
                  f"{j.get('step') or 0}/{j.get('steps') or '-'}", num(j.get("loss")),
                  num(j.get("samples_per_s"), ".1f"), str(j.get("stages") or "-"), _age(j.get("created_at")))
    Console().print(t)


def print_job(j: dict[str, Any]) -> None:
    """One job (``GET /jobs/{id}``) on stdout: its figures, then where its stages run."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=escape(f"{j.get('id')} ({j.get('name')})"), show_header=False)
    for key, value in _job_rows(j):
        t.add_row(key, value)
    console.print(t)
    placement = j.get("placement") or []
    if placement:
        p = Table(title="placement")
        for col in ("stage", "layers", "node", "device"):
            p.add_column(col)
        for s in placement:
            p.add_row(str(s.get("stage")), _layers(s.get("layers")), escape(str(s.get("node_id") or "-")),
                      escape(str(s.get("device") or "-")))
        console.print(p)


def _job_rows(j: dict[str, Any]) -> list[tuple[str, str]]:
    state, phase = str(j.get("state")), str(j.get("phase"))
    progress = j.get("progress")
    rows = [("state", _styled_state(state) + (f" (phase {escape(phase)})" if phase != state else "")),
            ("reason", escape(str(j.get("reason") or "-"))),
            ("progress", f"step {j.get('step') or 0}/{j.get('steps') or '-'}"
                         + (f" ({progress:.1%})" if isinstance(progress, int | float) else "")),
            ("loss", num(j.get("loss"))),
            ("samples/s", num(j.get("samples_per_s"), ".2f")),
            ("stages / microbatches", f"{j.get('stages') or '-'} / {j.get('microbatches') or '-'}"),
            ("schedule", escape(str((j.get("spec") or {}).get("schedule", "-")))),
            ("slots", _opt(j.get("slots"))),
            ("checkpoint step", _opt(j.get("checkpoint_step"))),
            ("created", _when(j.get("created_at"))), ("started", _when(j.get("started_at"))),
            ("finished", _when(j.get("finished_at")))]
    if j.get("queue_position") is not None:
        rows.insert(2, ("queue position", str(j["queue_position"])))
    if j.get("cancel_requested") and state not in TERMINAL:
        rows.insert(1, ("cancel", "requested"))
    return rows
