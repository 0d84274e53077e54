"""Checkpoints: one file per stage plus a JSON manifest, loadable without pipewave's runtime.

Layout of ``<output>/checkpoints/step-000050/``::

    manifest.json     {"format", "step", "spec", "stages": [{"stage", "layers", "file"}, ...]}
    stage-0.pt        torch.save({"model": state_dict slice, "optimizer": ..., ...})

The full model's state_dict is the union of the stages' ``model`` dicts; its keys are those of
``pipewave.workers.models.build_model(cfg, seed)`` (an ``nn.Sequential``), so plain torch loads it::

    sd = {}
    for s in json.load(open("manifest.json"))["stages"]:
        sd.update(torch.load(s["file"], weights_only=True)["model"])
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FORMAT = "pipewave-checkpoint/1"


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    path: Path


def step_dir(output: Path, step: int) -> Path:
    return output / "checkpoints" / f"step-{step:06d}"


def write_manifest(directory: Path, step: int, spec: dict[str, Any],
                   stages: list[dict[str, Any]]) -> Path:
    manifest = {"format": FORMAT, "step": step, "spec": spec, "stages": stages}
    tmp = directory / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(directory / "manifest.json")  # the manifest appears last: a checkpoint is whole
    return directory / "manifest.json"


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"not a pipewave checkpoint: {directory} ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"unknown checkpoint format in {path}: {manifest.get('format')!r}")
    return manifest


def latest(output: Path) -> CheckpointRecord | None:
    """The newest complete checkpoint under ``output`` (one with a manifest), if any."""
    root = output / "checkpoints"
    found = []
    for d in root.glob("step-*") if root.is_dir() else []:
        if (d / "manifest.json").is_file():
            found.append(CheckpointRecord(int(d.name.split("-")[1]), d))
    return max(found, key=lambda r: r.step, default=None)


def load_model_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The full model's state_dict from a checkpoint directory (plain torch, no Ray)."""
    d = Path(directory)
    state: dict[str, torch.Tensor] = {}
    for entry in read_manifest(d)["stages"]:
        state.update(torch.load(d / entry["file"], weights_only=True, map_location="cpu")["model"])
    return state


def prune(output: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    root = output / "checkpoints"
    dirs = sorted(root.glob("step-*")) if root.is_dir() else []
    for d in dirs[: max(0, len(dirs) - keep)]:
        shutil.rmtree(d, ignore_errors=True)


def retain(output: Path, keep_last: int) -> list[int]:
    """Keep the ``keep_last`` newest *complete* checkpoints (those with a manifest) and delete
    the older ones, with any incomplete folder older than the newest complete one (a write cut
    short); returns the steps deleted. The newest complete checkpoint is never deleted, and a
    folder still being written (newer than it) is left alone, so a crash at any moment leaves
    at least one complete checkpoint."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    root = output / "checkpoints"
    dirs = sorted(root.glob("step-*")) if root.is_dir() else []
    complete = [d for d in dirs if (d / "manifest.json").is_file()]
    if not complete:
        return []
    kept = set(complete[-keep_last:])
    newest = complete[-1]
    doomed = [d for d in dirs if d not in kept and d.name < newest.name]
    for d in doomed:
        (d / "manifest.json").unlink(missing_ok=True)  # (incomplete first: never half a checkpoint)
        shutil.rmtree(d, ignore_errors=True)
    return [int(d.name.split("-")[1]) for d in doomed]
