"""Checkpoint directory bookkeeping (pure: no Ray, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipewave.service.control import checkpoint as ckpt


def make(output: Path, step: int, complete: bool = True) -> Path:
    d = ckpt.step_dir(output, step)
    d.mkdir(parents=True)
    if complete:
        ckpt.write_manifest(d, step, {"name": "x"}, [])
    return d


def test_latest_ignores_incomplete_checkpoints(tmp_path: Path) -> None:
    assert ckpt.latest(tmp_path) is None
    make(tmp_path, 5)
    make(tmp_path, 10)
    make(tmp_path, 15, complete=False)  # no manifest: a save that never finished
    rec = ckpt.latest(tmp_path)
    assert rec is not None and rec.step == 10 and rec.path == ckpt.step_dir(tmp_path, 10)


@pytest.mark.parametrize(("keep", "left"), [(0, []), (1, [15]), (2, [10, 15]), (5, [5, 10, 15])])
def test_prune_keeps_the_newest(tmp_path: Path, keep: int, left: list[int]) -> None:
    for step in (5, 10, 15):
        make(tmp_path, step)
    ckpt.prune(tmp_path, keep)
    assert sorted(int(d.name.split("-")[1]) for d in (tmp_path / "checkpoints").iterdir()) == left


def test_bad_manifest_is_a_clear_error(tmp_path: Path) -> None:
    d = make(tmp_path, 1, complete=False)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a pipewave checkpoint"):
        ckpt.read_manifest(d)
    (d / "manifest.json").write_text('{"format": "other/9"}')
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        ckpt.read_manifest(d)
