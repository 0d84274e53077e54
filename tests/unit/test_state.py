"""workers/state.py: the layout-independent stage payloads (ranges, merging) and the heap policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipewave.workers import state
from pipewave.workers.state import describe, hull, merge_payloads, overlaps, payload_chunks, save_stage_file


def test_payload_chunks_reads_chunks_or_the_old_single_range() -> None:
    assert payload_chunks({"chunks": [[0, 2], [6, 8]], "layers": [0, 8]}) == ((0, 2), (6, 8))
    assert payload_chunks({"layers": [2, 5]}) == ((2, 5),)  # a payload from before chunks
    assert payload_chunks({"chunks": [], "layers": ["3", "4"]}) == ((3, 4),)  # empty: the range
    assert payload_chunks({"chunks": [("1", "2")]}) == ((1, 2),)
    with pytest.raises(KeyError):
        payload_chunks({})


@pytest.mark.parametrize(("ours", "theirs", "expected"), [
    (((0, 2),), ((2, 4),), False),  # adjacent: no shared layer
    (((0, 3),), ((2, 4),), True),
    (((2, 4),), ((0, 3),), True),
    (((0, 2), (6, 8)), ((2, 6),), False),  # a worker's two chunks around another's
    (((0, 2), (6, 8)), ((5, 7),), True),
    (((3, 4),), ((0, 10),), True),  # inside
    ((), ((0, 1),), False),
])
def test_overlaps(ours: tuple[tuple[int, int], ...], theirs: tuple[tuple[int, int], ...],
                  expected: bool) -> None:
    assert overlaps(ours, theirs) is expected
    assert overlaps(theirs, ours) is expected


def test_hull_and_describe() -> None:
    assert hull([(6, 8), (0, 2)]) == (0, 8)
    assert hull([(3, 5)]) == (3, 5)
    assert describe([(2, 5)]) == "2-4"
    assert describe([(0, 2), (6, 8)]) == "0-1+6-7"
    assert describe([(4, 5)]) == "4-4"


def payload(stage: int, chunks: list[list[int]], version: int = 3, **extra: Any) -> dict[str, Any]:
    a = chunks[0][0]
    return {"stage": stage, "chunks": chunks, "latest_version": version,
            "model": {f"layers.{a}.w": a}, "older_versions": {"1": {f"layers.{a}.w": -a}},
            "optimizer": {"state": {f"layers.{a}.w": {"step": version}}, "lr": 0.1 * (stage + 1)},
            **extra}


def test_merge_takes_the_payloads_that_hold_the_layers() -> None:
    p0, p1, p2 = payload(0, [[0, 2], [6, 8]]), payload(1, [[2, 4]]), payload(2, [[4, 6]])
    merged = merge_payloads([p0, p1, p2], [(1, 3)])  # layers 1 and 2: stages 0 and 1
    assert merged == {
        "model": {"layers.0.w": 0, "layers.2.w": 2},
        "older_versions": {1: {"layers.0.w": 0, "layers.2.w": -2}},  # offsets as ints
        "optimizer": {"state": {"layers.0.w": {"step": 3}, "layers.2.w": {"step": 3}},
                      "lr": pytest.approx(0.2)},  # a scalar: the last payload's
        "latest_version": 3,
    }
    only = merge_payloads([p0, p1, p2], [(7, 8)])
    assert only["model"] == {"layers.0.w": 0} and only["latest_version"] == 3


def test_merge_refuses_mixed_versions_and_uncovered_layers() -> None:
    p0, p1 = payload(0, [[0, 2]], version=3), payload(1, [[2, 4]], version=4)
    with pytest.raises(ValueError, match=r"^stage 1 is at weight version 4, other stages at 3$"):
        merge_payloads([p0, p1], [(0, 4)])
    assert merge_payloads([p0, p1], [(0, 2)])["latest_version"] == 3  # stage 1 not needed
    with pytest.raises(ValueError, match=r"^no stage state holds layers 4-5\+8-8$"):
        merge_payloads([p0, p1], [(4, 6), (8, 9)])


def test_save_stage_file_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "stage-0.pt"
    save_stage_file(path, {"model": {"w": torch.arange(3)}})
    save_stage_file(path, {"model": {"w": torch.arange(4)}})
    assert torch.equal(torch.load(path)["model"]["w"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["stage-0.pt"]  # no temporary file left


class _Libc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_keep_freed_memory_sets_glibc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc()
    monkeypatch.setattr(state.ctypes, "CDLL", lambda name: libc if name == "libc.so.6" else None)
    state.keep_freed_memory()
    assert libc.calls == [(-3, 32 * 2**20), (-1, 2**30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_keep_freed_memory_without_glibc_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(state.ctypes, "CDLL", missing)
    state.keep_freed_memory()  # no error: a musl or macOS process keeps its allocator's defaults
    monkeypatch.setattr(state.ctypes, "CDLL", lambda name: object())  # a libc without mallopt
    state.keep_freed_memory()
