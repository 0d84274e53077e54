"""The job manager's parts without Ray: the dispatcher's sums (api/dispatch.py), the feed that
writes a controller's reports into the store (api/feed.py, acting on typed events) and the
cluster view (api/views.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import new_spec
from pipewave.api.dispatch import MAX_REQUEST, cap, min_slots, scale_request
from pipewave.api.feed import Feed
from pipewave.api.joblog import close_job_log, open_job_log
from pipewave.api.store import JobStore
from pipewave.api.views import cluster_view
from pipewave.service.cluster.status import NodeStatus, free_slots_per_node, total_slots
from pipewave.service.control.job import STAGES_READY, Event

READY = [{"stage": 0, "layers": [0, 2], "chunks": [[0, 2]], "node_id": "n0", "device": "cpu", "params": 5},
         {"stage": 1, "layers": [2, 4], "chunks": [[2, 4]], "node_id": "n1", "device": "cpu", "params": 7}]


def test_min_slots() -> None:
    assert min_slots(new_spec(stages=3)) == 3
    assert min_slots(new_spec(stages="auto", partition="auto")) == 1
    elastic = new_spec(stages="auto", partition="auto", elastic={"min_stages": 2, "max_stages": 4})
    assert min_slots(elastic) == 2


def test_cap_takes_the_fullest_nodes_first() -> None:
    assert cap({"a": 1, "b": 3, "c": 2}, 4) == {"b": 3, "c": 1}
    assert cap({"a": 1, "b": 0}, 5) == {"a": 1}
    assert cap({"a": 2}, 0) == {}


def test_scale_request() -> None:
    assert scale_request([], []) == 0  # nothing queued, nobody asks: no request
    assert scale_request([(2, 0), (3, 0)], []) == 0  # running jobs alone ask for nothing
    assert scale_request([(2, 0), (3, 0)], [4]) == 9  # room for the running ones and the queued
    assert scale_request([(2, 5)], []) == 5  # an elastic job asking for more than it holds
    assert scale_request([(4, 1)], [1, 2]) == 7  # never less than it holds
    assert scale_request([], [MAX_REQUEST, 5]) == MAX_REQUEST


NODES = (
    NodeStatus("a" * 56, "ALIVE", "10.0.0.1", "cpu:x", 4.0, 2.5, 0.0, 8 * 2**30, (("zone", "z1"),)),
    NodeStatus("b" * 56, "DRAINING", "10.0.0.2", "gpu:A100", 4.0, 4.0, 1.0, None, ()),
    NodeStatus("c" * 56, "DEAD", "10.0.0.3", None, 2.0, 0.0, 0.0, None, ()),
    NodeStatus("d" * 56, "ALIVE", "10.0.0.4", None, 3.0, 3.0, 0.0, None, ()),
)


def test_slots_and_the_cluster_view() -> None:
    assert [n.slots(1.0) for n in NODES] == [4, 0, 0, 3]
    assert free_slots_per_node(1.0, NODES) == {"a" * 56: 2, "d" * 56: 3}
    assert free_slots_per_node(0.5, NODES) == {"a" * 56: 5, "d" * 56: 6}
    assert total_slots(1.0, NODES) == 7 and total_slots(2.0, NODES) == 3
    view = cluster_view(NODES, [("j1", "job", READY)], 1.0)
    assert [(n.state, n.slots, n.kind) for n in view.nodes] == [
        ("ALIVE", 4, "cpu:x"), ("DRAINING", 0, "gpu:A100"), ("DEAD", 0, None), ("ALIVE", 3, None)]
    assert view.nodes[0].labels == {"zone": "z1"} and view.nodes[0].memory_bytes == 8 * 2**30
    assert (view.slots.total, view.slots.free, view.slots.cpus_per_stage) == (7, 5, 1.0)
    assert [(s.job_id, s.stage, s.node_id, s.layers, s.chunks) for s in view.stages] == [
        ("j1", 0, "n0", [0, 2], [[0, 2]]), ("j1", 1, "n1", [2, 4], [[2, 4]])]


@pytest.fixture
def fed(tmp_path: Path) -> Any:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    spec = new_spec(stages=2)
    row, _ = store.create_job(spec.model_dump(mode="json"), lambda i: tmp_path / i, 2)
    log = open_job_log(tmp_path / "job.log", "no-such-thread")
    feed = Feed(store, row.id, spec, log)
    yield SimpleNamespace(store=store, feed=feed, spec=spec, job_id=row.id, log=tmp_path / "job.log")
    close_job_log(log)
    store.close()


def test_a_report_before_the_controller_is_attached_is_an_error(fed: Any) -> None:
    with pytest.raises(RuntimeError, match="before its controller was attached"):
        fed.feed.event(Event(time.time(), "info", "hello"))


def test_the_stages_ready_event_sets_the_placement(fed: Any) -> None:
    fed.feed.attach(SimpleNamespace(spec=fed.spec, reason="", step_done=0))
    fed.feed.event(Event(time.time(), "info", "2 stages ready", {"stages": READY}, topic=STAGES_READY))
    row = fed.store.get(fed.job_id)
    placed = json.loads(row.placement_json)
    assert [(p["stage"], p["node_id"], p["chunks"]) for p in placed] == [(0, "n0", [[0, 2]]),
                                                                         (1, "n1", [[2, 4]])]
    assert placed[0]["layer_names"] and row.slots == 2 and fed.feed.stage_nodes == placed
    (ev,) = [e for e in fed.store.events(fed.job_id) if e.kind == "info"]
    assert ev.message == "2 stages ready" and ev.data["stages"][1]["params"] == 7
    assert "EVENT info: 2 stages ready" in fed.log.read_text()


def test_an_info_event_shaped_like_a_placement_is_only_an_event(fed: Any) -> None:
    """The feed acts on the event's topic, not on the shape of its data."""
    fed.feed.attach(SimpleNamespace(spec=fed.spec, reason="", step_done=0))
    fed.feed.event(Event(time.time(), "info", "some stages", {"stages": READY}))
    assert fed.store.get(fed.job_id).placement_json == "[]" and fed.feed.stage_nodes == []
    assert [e.message for e in fed.store.events(fed.job_id) if e.kind == "info"] == ["some stages"]


def test_state_events_set_the_phase_and_progress_the_rate(fed: Any) -> None:
    fed.feed.attach(SimpleNamespace(spec=fed.spec, reason="planned", step_done=0))
    fed.feed.event(Event(time.time(), "state", "STARTING: planned", {"state": "STARTING"}))
    assert fed.store.get(fed.job_id).state == "STARTING"
    fed.feed.progress(1, 2.0)
    fed.feed.progress(1, 2.0)  # the same step again: no second point
    time.sleep(0.01)
    fed.feed.progress(2, 1.5)
    points = fed.store.metrics(fed.job_id)
    assert [p.step for p in points] == [1, 2] and points[0].samples_per_s is None
    assert fed.feed.rate is not None and fed.feed.rate > 0
    assert fed.store.get(fed.job_id).loss == 1.5


def test_the_job_log_keeps_only_its_threads_records(tmp_path: Path) -> None:
    log = open_job_log(tmp_path / "a.log", "job-x")
    try:
        logging.getLogger("pipewave.test").warning("from the test's thread")
    finally:
        close_job_log(log)
    assert "from the test's thread" not in (tmp_path / "a.log").read_text()
    assert log not in logging.getLogger().handlers
