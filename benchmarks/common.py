"""What the benchmark scripts share: the command line as run, the load average."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def the_command() -> str:
    """This process's command line, the venv's python and the script relative to the repo."""
    exe, script = Path(sys.executable), Path(sys.argv[0]).resolve()
    shown = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else str(exe)  # keep the venv's
    script_shown = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else sys.argv[0]
    return shlex.join([shown, script_shown, *sys.argv[1:]])


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
