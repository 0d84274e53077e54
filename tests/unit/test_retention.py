"""``checkpoint.keep_last``: which checkpoint folders ``retain`` deletes (pure file system)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipewave.service.control.checkpoint import latest, retain, step_dir


def make(output: Path, step: int, complete: bool = True) -> Path:
    d = step_dir(output, step)
    d.mkdir(parents=True)
    (d / "stage-0.pt").write_bytes(b"x")
    if complete:
        (d / "manifest.json").write_text(json.dumps({"step": step}))
    return d


def steps(output: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in (output / "checkpoints").iterdir())


def test_keeps_the_newest_complete_ones(tmp_path: Path) -> None:
    for s in range(1, 11):
        make(tmp_path, s)
    assert retain(tmp_path, 2) == list(range(1, 9))
    assert steps(tmp_path) == [9, 10]
    assert retain(tmp_path, 2) == []  # nothing more to do


def test_a_write_cut_short_never_costs_the_last_complete_checkpoint(tmp_path: Path) -> None:
    make(tmp_path, 1)
    make(tmp_path, 2, complete=False)  # crashed while writing: older than the newest complete
    make(tmp_path, 3)
    make(tmp_path, 4, complete=False)  # being written now (or crashed): newer, left alone
    assert retain(tmp_path, 1) == [1, 2]
    assert steps(tmp_path) == [3, 4]
    record = latest(tmp_path)
    assert record is not None and record.step == 3  # what a resume takes


def test_no_complete_checkpoint_deletes_nothing(tmp_path: Path) -> None:
    make(tmp_path, 1, complete=False)
    assert retain(tmp_path, 1) == [] and steps(tmp_path) == [1]
    assert retain(tmp_path / "nothing-here", 3) == []
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        retain(tmp_path, 0)
