"""A trained model out of pipewave, in a format other tools read.

``export_model`` takes a checkpoint (or a job's output folder: its newest checkpoint), rebuilds
the job's model from the spec the checkpoint holds, and writes the weights with the model's own
``export``: a transformers model as ``config.json`` + ``model.safetensors`` (loadable with
``AutoModelForCausalLM.from_pretrained``), any other model as ``model.safetensors`` keyed by
global parameter names + ``pipewave.json``. Either folder can start a new job (``init_from``),
and a transformers export can be a job's ``model.pretrained``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipewave.service.control.checkpoint import latest, load_model_state, read_manifest
from pipewave.service.spec import JobSpec


@dataclass(frozen=True)
class ExportResult:
    checkpoint: Path
    step: int
    kind: str
    architecture: str
    format: str  # "transformers" | "pipewave"
    parameters: int
    output: Path
    files: tuple[str, ...]


def find_checkpoint(source: Path) -> Path:
    """``source`` if it is a checkpoint (holds manifest.json), else the newest checkpoint of the
    job output folder ``source``; one readable ValueError otherwise."""
    if (source / "manifest.json").is_file():
        return source
    if not source.is_dir():
        raise ValueError(f"no such checkpoint or job output folder: {source}")
    record = latest(source)
    if record is None:
        raise ValueError(f"{source} holds no checkpoint (neither a manifest.json nor checkpoints/step-*)")
    return record.path


def export_model(source: Path, output: Path, force: bool = False) -> ExportResult:
    """Write the model of checkpoint ``source`` (or of a job output's newest) to ``output``."""
    from pipewave.workers.models import model_for

    ckpt = find_checkpoint(source)
    manifest = read_manifest(ckpt)
    try:
        spec = JobSpec.model_validate(manifest["spec"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"checkpoint {ckpt} holds no valid job spec: {str(err).splitlines()[0]}") from None
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not force:
            raise ValueError(f"output {output} exists and is not empty (use --force to replace it)")
        if output.is_dir():
            shutil.rmtree(output)
        else:
            output.unlink()
    model = model_for(spec.model_settings)
    state = load_model_state(ckpt)
    names = list(model.parameter_shapes())
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"checkpoint {ckpt} lacks parameters {missing[:3]} of its model")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # (with the umask's mode, like any folder the user makes)
    try:
        model.export({n: state[n] for n in names}, tmp)
        mask = _umask()
        for f in tmp.iterdir():  # (safetensors writes its file 0600: readable as the folder is)
            f.chmod(0o666 & ~mask)
        tmp.replace(output)  # the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = model.info()
    return ExportResult(ckpt, int(manifest["step"]), info.kind, info.architecture,
                        model.export_format, info.parameters, output,
                        tuple(sorted(p.name for p in output.iterdir())))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
