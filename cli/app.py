"""The ``pipewave`` Typer app and what every command shares: the stderr console and one-line exits.

This module imports nothing of pipewave's: the command modules import it, never the other way,
and ``main`` puts them together.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pipewave: elastic, asynchronous pipeline-parallel training on Ray.")
err_console = Console(stderr=True)


def error_text(err: BaseException) -> str:
    """An exception's first line, else its type's name."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command: "error: <message>" (one line, taken literally) on stderr and exit ``code``."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def interrupted() -> NoReturn:
    """End the command after Ctrl-C: "interrupted" on stderr, exit 130."""
    err_console.print("interrupted")
    raise typer.Exit(130)
