"""``pipewave models``: the models a job spec can name on a pipewave server (``GET /api/v1/models``).

A client command: it imports nothing of pipewave's service, API or workers, so the light client
install has it. Every failure ends with one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from pipewave.cli.app import fail
from pipewave.cli.client import ApiClient, ClientError, resolve_connection


class ModelsClient(ApiClient):
    """The API client with the models route."""

    def models(self) -> list[dict[str, Any]]:
        """GET /models: the built-in model kinds and the installed plugins."""
        resp = self._request("GET", "/models")
        items = self._dict(resp).get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise self._unexpected(resp, "no list of models")
        return items


def register(app: typer.Typer) -> None:
    """Add ``models`` to ``app``."""
    app.command()(models)


def models(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with the JSON schemas)")] = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="server URL (default $PIPEWAVE_URL, else http://127.0.0.1:8000)")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="API token (default $PIPEWAVE_API_TOKEN, else $PIPEWAVE_HOME/api-token)")] = None,
) -> None:
    """List the models a job spec can name (model.kind, and model.name for plugins)."""
    try:
        client = ModelsClient(*resolve_connection(url, token))
        with client:
            items = client.models()
    except ClientError as err:
        fail(str(err), 1)
    if as_json:
        print(json.dumps({"items": items}, indent=2))
    else:
        print_models(items)


def _fields(item: dict[str, Any]) -> str:
    """The fields a spec gives the model: its config's for a plugin, else the section's own."""
    schema = item.get("config_schema") or item.get("spec_schema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    names = [n for n in props or {} if n != "kind"] if isinstance(props, dict) else []
    return ", ".join(names) or "-"


def print_models(items: list[dict[str, Any]]) -> None:
    """The models as a table on stdout (every server string escaped)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(caption=f"{len(items)} models; `pipewave models --json` gives their JSON schemas",
              caption_justify="left")
    for col in ("kind", "name", "from", "fields", "description"):
        t.add_column(col, overflow="fold")
    for m in items:
        source = f"{m.get('distribution')} {m.get('version') or ''}".strip() if m.get("distribution") \
            else "pipewave"
        about = str(m.get("description") or "")
        if m.get("architectures"):
            about += f" (architectures: {', '.join(map(str, m['architectures']))})"
        shown = f"[red]does not load:[/red] {escape(str(m['error']))}" if m.get("error") else escape(about)
        t.add_row(escape(str(m.get("kind"))), escape(str(m.get("name"))), escape(source),
                  escape(_fields(m)), shown)
    Console().print(t)
