"""``pipewave export``: a trained model out of a checkpoint, as a folder other tools read.

Cluster-side (it needs torch and, for transformers models, transformers): the service is
imported inside the command, so the light client install loads this module and ends the command
with one line naming the server install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipewave.cli.app import error_text, fail
from pipewave.cli.server_commands import needs_server


def register(app: typer.Typer) -> None:
    app.command()(export)


@needs_server
def export(
    source: Annotated[Path, typer.Argument(
        help="a checkpoint folder (…/checkpoints/step-N) or a job's output folder (its newest checkpoint)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder to write the model to")],
    force: Annotated[bool, typer.Option("--force", help="replace a non-empty output folder")] = False,
) -> None:
    """Write a checkpoint's model as model.safetensors (+ config.json for transformers models)."""
    from pipewave.service.export import export_model

    try:
        result = export_model(source, output, force=force)
    except (ValueError, OSError) as err:
        fail(error_text(err))
    print(f"exported {result.architecture} ({result.parameters:,} parameters) from step "
          f"{result.step} of {result.checkpoint}")
    print(f"  {result.output}: {', '.join(result.files)}")
    if result.format == "transformers":
        print(f"  load it with: AutoModelForCausalLM.from_pretrained({str(result.output)!r})")
    else:
        print("  start a job from it with: init_from: " + str(result.output))
