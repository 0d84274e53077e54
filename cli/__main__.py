"""``python -m pipewave.cli`` is the ``pipewave`` command."""

from pipewave.cli.main import main

main()
