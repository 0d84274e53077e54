"""The ``pipewave`` command: the cluster-side commands (``server_commands``: schedule, train,
plan, drain, serve) and the REST client's commands (``client_commands``: submit, jobs, status,
cancel, logs) on one Typer app.

Loading it imports no server package (torch, Ray, the API's): the cluster-side commands import
the service only when they run, so the light client install has the whole command line. Bad
input ends with one readable line on stderr and exit code 2, never a traceback; ``train`` exits 1
when the job fails and 130 when it is cancelled.
"""

from __future__ import annotations

import sys

import typer

from pipewave.cli import client_commands, export_command, models_command, prepare_command, server_commands
from pipewave.cli.app import app, err_console

server_commands.register(app)
export_command.register(app)
prepare_command.register(app)
client_commands.register(app)
models_command.register(app)


def main() -> None:
    """Entry point: usage errors become one line on stderr with exit code 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err_console.print("interrupted")
        code = 130
    except Exception as err:
        # typer's (vendored click) usage errors: format_message() and exit_code, no public base
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            code = 0
        else:
            cmd = ctx.command_path if ctx is not None else "pipewave"
            err_console.print(f"[red]error:[/red] {err.format_message()} (see '{cmd} --help')",
                              highlight=False, soft_wrap=True)
            code = err.exit_code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
