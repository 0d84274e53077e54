"""Chunks (virtual stages) in what the service stores and serves, without Ray: the timeline's spans
say which chunk of their stage ran them, and a stage's placement lists its chunks' layer ranges
and their layers' names. Data stored before chunks existed still reads (one chunk)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi.testclient import TestClient

from pipewave.api.models import StageOnNode, StagePlacement, Timeline
from pipewave.api.views import stage_placement, timeline_of
from pipewave.service.schedules import Action, Kind, make_schedule

TOKEN = "test-token-0123456789abcdef"


def report(stage: int, spans: list[tuple[Action, float, float]]) -> Any:
    """What timeline_of reads of a RunReport (workers/stage.py): the stage and its spans."""
    return SimpleNamespace(stage=stage, spans=spans)


def reports_of(name: str, stages: int, microbatches: int, steps: int, **kw: Any) -> list[Any]:
    """A schedule's actions as spans, slot i of the grid at [100 + i, 100 + i + 0.5) seconds."""
    sched = make_schedule(name, stages, microbatches, steps, **kw)
    return [report(s, [(a, 100.0 + i, 100.5 + i) for i, a in enumerate(row) if a is not None])
            for s, row in sorted(sched.grid.items())]


def test_timeline_of_keeps_each_spans_chunk() -> None:
    F, B = Kind.F, Kind.B
    reports = [  # run of 2 steps (global steps 4 and 5, 0-based), 2 microbatches a step
        report(0, [(Action(0, F, 0, chunk=0), 10.0, 10.1), (Action(0, F, 0, chunk=1), 10.3, 10.4),
                   (Action(0, B, 0, chunk=1), 10.5, 10.7), (Action(0, B, 0, chunk=0), 10.9, 11.1),
                   (Action(0, F, 3, chunk=1), 11.2, 11.3)]),
        report(1, [(Action(1, F, 0, chunk=0), 10.1, 10.2), (Action(1, F, 2, chunk=1), 11.0, 11.5)]),
    ]
    tl = timeline_of(reports, first=4, count=2, microbatches=2)
    assert tl.stages == 2 and tl.chunks_per_stage == 2 and tl.steps == [5, 6]
    assert tl.t0 == 10.0 and abs(tl.duration_s - 1.5) < 1e-9
    got = [(s.stage, s.kind, s.microbatch, s.step, s.chunk, round(s.start, 6), round(s.end, 6))
           for s in tl.spans]
    assert got == [
        (0, "F", 0, 5, 0, 0.0, 0.1), (0, "F", 0, 5, 1, 0.3, 0.4), (0, "B", 0, 5, 1, 0.5, 0.7),
        (0, "B", 0, 5, 0, 0.9, 1.1), (0, "F", 1, 6, 1, 1.2, 1.3),
        (1, "F", 0, 5, 0, 0.1, 0.2), (1, "F", 0, 6, 1, 1.0, 1.5),
    ]
    # stored as JSON and read back (api/store.py), the chunks stay
    back = Timeline.model_validate_json(tl.model_dump_json())
    assert [s.chunk for s in back.spans] == [0, 1, 1, 0, 1, 0, 1] and back.chunks_per_stage == 2


def test_timeline_of_keeps_only_the_last_steps_but_counts_every_chunk() -> None:
    spans = [(Action(0, Kind.F, 0, chunk=2), 1.0, 2.0), (Action(0, Kind.F, 1, chunk=0), 3.0, 4.0)]
    reports = [report(0, spans)]
    tl = timeline_of(reports, first=0, count=2, microbatches=1, last=1)
    assert [(s.microbatch, s.step, s.chunk) for s in tl.spans] == [(0, 2, 0)]
    assert tl.chunks_per_stage == 3 and tl.t0 == 3.0


def test_timeline_of_a_hanayo_run() -> None:
    """Every span of a real hanayo schedule (2 workers, 2 waves: 4 chunks each) carries its chunk."""
    reports = reports_of("hanayo", 2, 4, 2, waves=2)
    tl = timeline_of(reports, first=0, count=2, microbatches=4)
    assert tl.chunks_per_stage == 4 and tl.steps == [1, 2]
    want = sorted((r.stage, str(a.kind), a.microbatch % 4, a.microbatch // 4 + 1, a.chunk)
                  for r in reports for a, _, _ in r.spans)
    assert sorted((s.stage, s.kind, s.microbatch, s.step, s.chunk) for s in tl.spans) == want
    for stage in (0, 1):
        for kind in ("F", "B"):
            assert {s.chunk for s in tl.spans if s.stage == stage and s.kind == kind} == {0, 1, 2, 3}


def test_single_chunk_timeline_and_old_stored_timeline() -> None:
    tl = timeline_of(reports_of("1f1b", 2, 4, 1), first=0, count=1, microbatches=4)
    assert tl.chunks_per_stage == 1 and tl.spans and {s.chunk for s in tl.spans} == {0}
    assert timeline_of([report(0, []), report(1, [])], 0, 1, 4).chunks_per_stage == 1
    old = {"stages": 1, "steps": [1, 1], "t0": 5.0, "duration_s": 1.0,  # stored before chunks
           "spans": [{"stage": 0, "kind": "F", "microbatch": 0, "step": 1, "start": 0, "end": 1}]}
    read = Timeline.model_validate(old)
    assert read.chunks_per_stage == 1 and read.spans[0].chunk == 0


NAMES = ["embed", "b0.attn", "b0.mlp", "b1.attn", "b1.mlp", "b2.attn", "b2.mlp", "head"]


def test_stage_placement_lists_chunks_and_their_layers() -> None:
    """Hanayo on 2 workers: worker w holds virtual stages w and 3 - w."""
    ready = [  # the controller's "2 stages ready" event's data["stages"]
        {"stage": 0, "layers": [0, 8], "chunks": [[0, 2], [6, 8]], "node_id": "n0", "device": "cpu",
         "params": 10},
        {"stage": 1, "layers": [2, 6], "chunks": [[2, 4], [4, 6]], "node_id": "n1", "device": "cpu",
         "params": 12},
    ]
    placed = stage_placement(ready, NAMES)
    assert placed == [
        {"stage": 0, "layers": [0, 8], "chunks": [[0, 2], [6, 8]],
         "layer_names": ["embed", "b0.attn", "b2.mlp", "head"], "node_id": "n0", "device": "cpu"},
        {"stage": 1, "layers": [2, 6], "chunks": [[2, 4], [4, 6]],
         "layer_names": ["b0.mlp", "b1.attn", "b1.mlp", "b2.attn"],
         "node_id": "n1", "device": "cpu"},
    ]
    assert [StagePlacement(**p).chunks for p in json.loads(json.dumps(placed))] == [[[0, 2], [6, 8]],
                                                                                   [[2, 4], [4, 6]]]


def test_stage_placement_without_chunks_is_one_chunk() -> None:
    """An event (or stored placement) from before chunks: one chunk, the stage's layers."""
    placed = stage_placement([{"stage": 0, "layers": (0, 3), "node_id": "n", "device": "cpu"}], NAMES)
    assert placed[0]["chunks"] == [[0, 3]] and placed[0]["layer_names"] == NAMES[:3]
    old = {"stage": 0, "layers": [0, 3], "layer_names": NAMES[:3], "node_id": "n", "device": "cpu"}
    assert StagePlacement(**old).chunks == [[0, 3]]
    assert StageOnNode(job_id="j", job_name="n", stage=0, node_id=None, layers=[3, 8]).chunks == [[3, 8]]
    assert list(StagePlacement.model_fields)[:3] == ["stage", "layers", "chunks"]


def test_api_serves_chunks(tmp_path: Path) -> None:
    """GET /jobs/{id}/timeline and /jobs/{id} return the chunks (the app in process; its lifespan,
    which connects to Ray and starts the dispatcher, does not run)."""
    from pipewave.api.app import create_app
    from pipewave.api.settings import Settings

    app = create_app(Settings(home=tmp_path, api_token=TOKEN))
    store = app.state.store
    row, _ = store.create_job({"name": "wave", "steps": 2}, lambda job_id: tmp_path / job_id, slots=2)
    store.put_timeline(row.id, timeline_of(reports_of("hanayo", 2, 4, 1), 0, 1, 4))
    store.update(row.id, placement_json=json.dumps(stage_placement(
        [{"stage": 0, "layers": [0, 8], "chunks": [[0, 2], [6, 8]], "node_id": "n0", "device": "cpu"},
         {"stage": 1, "layers": [2, 6], "chunks": [[2, 4], [4, 6]], "node_id": "n1", "device": "cpu"}],
        NAMES)))
    other, _ = store.create_job({"name": "old", "steps": 2}, lambda job_id: tmp_path / job_id, slots=1)
    store.update(other.id, placement_json=json.dumps(
        [{"stage": 0, "layers": [0, 8], "layer_names": NAMES, "node_id": "n0", "device": "cpu"}]))
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})

    tl = client.get(f"/api/v1/jobs/{row.id}/timeline").json()
    assert tl["chunks_per_stage"] == 2
    assert all("chunk" in s for s in tl["spans"]) and {s["chunk"] for s in tl["spans"]} == {0, 1}
    assert {(s["stage"], s["chunk"]) for s in tl["spans"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    job = client.get(f"/api/v1/jobs/{row.id}").json()
    assert [p["chunks"] for p in job["placement"]] == [[[0, 2], [6, 8]], [[2, 4], [4, 6]]]
    assert job["placement"][0]["layer_names"] == ["embed", "b0.attn", "b2.mlp", "head"]

    assert client.get(f"/api/v1/jobs/{other.id}").json()["placement"][0]["chunks"] == [[0, 8]]
    empty = client.get(f"/api/v1/jobs/{other.id}/timeline").json()
    assert empty["spans"] == [] and empty["chunks_per_stage"] == 1
    store.close()
