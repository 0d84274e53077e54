"""The pipewave command line, run as a user runs it (subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness import pipewave

ROOT = Path(__file__).resolve().parents[2]




def test_schedule_prints_grid_and_figures() -> None:
    r = pipewave("schedule", "1f1b", "--stages", "2", "--microbatches", "4")
    assert r.returncode == 0, r.stderr
    assert "stage 0 | 0F0  0F1  .    0B0  0F2  0B1  0F3  0B2  .    0B3+" in r.stdout
    assert "bubble" in r.stdout.lower()


def test_schedule_json() -> None:
    r = pipewave("schedule", "gpipe", "--stages", "4", "--microbatches", "8", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["name"] == "gpipe" and d["stages"] == 4
    assert d["bubble_mean"] == pytest.approx(3 / 11)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["schedule", "zigzag"], "unknown schedule"),
        (["schedule", "1f1b", "--vertical-sync"], "vertical_sync"),
        (["train", "/nonexistent.yaml"], "job file not found"),
        (["train", "examples/gpt-small.yaml", "--address", "127.0.0.1:1"], "cannot connect to ray"),
        (["train", "examples/gpt-small.yaml", "--address", "nonsense"], "not a cluster address"),
        (["train", "examples/gpt-small.yaml", "--steps", "0"], "invalid value"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    r = pipewave(*args)
    assert r.returncode == 2
    assert needle in r.stderr.lower() or needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_spec_is_one_line_exit_2(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "examples" / "gpt-small.yaml").read_text())
    spec["optimizer"]["lr"] = -1
    spec["colour"] = "blue"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec))
    r = pipewave("train", str(p))
    assert r.returncode == 2
    assert "optimizer.lr" in r.stderr and "colour: unknown field" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
