"""api/prom.py: the Prometheus text the service renders, from a real job store (SQLite in a
temporary folder) and, for the cluster gauges, node snapshots in place of Ray's node table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipewave.api.prom import ServiceMetrics
from pipewave.api.store import JobStore

MANAGER = SimpleNamespace(settings=SimpleNamespace(cpus_per_stage=2.0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    yield s
    s.close()


def submit(store: JobStore, name: str, tmp_path: Path) -> str:
    row, created = store.create_job({"name": name, "steps": 10}, lambda job_id: tmp_path / job_id, 2)
    assert created
    return row.id


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the rendered text."""
    text, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_jobs_by_state_and_the_progress_of_running_jobs(store: JobStore, tmp_path: Path) -> None:
    queued = [submit(store, f"q{i}", tmp_path) for i in range(2)]
    running, starting, done = (submit(store, n, tmp_path) for n in ("run", "start", "done"))
    store.set_phase(running, "RUNNING", "training", step=3, loss=0.5, samples_per_s=12.5, stages=2)
    store.set_phase(starting, "STARTING", "starting stages")
    store.set_phase(done, "SUCCEEDED", "finished", step=10, loss=0.25, samples_per_s=9.0, stages=2)
    got = samples(ServiceMetrics(store, MANAGER))  # Ray is not running here: no cluster gauges
    jobs = {labels[0][1]: v for (name, labels), v in got.items() if name == "pipewave_jobs"}
    assert jobs == {"QUEUED": 2, "STARTING": 1, "RUNNING": 1, "REBALANCING": 0, "SUCCEEDED": 1,
                    "FAILED": 0, "CANCELLED": 0}
    assert got["pipewave_queue_length", ()] == 2
    run = (("job_id", running), ("name", "run"))
    start = (("job_id", starting), ("name", "start"))
    assert got["pipewave_job_step", run] == 3 and got["pipewave_job_step", start] == 0
    assert got["pipewave_job_loss", run] == 0.5 and ("pipewave_job_loss", start) not in got
    assert got["pipewave_job_samples_per_second", run] == 12.5
    assert got["pipewave_job_stages", run] == 2 and ("pipewave_job_stages", start) not in got
    # finished and queued jobs have no progress gauges
    progress = {dict(labels)["job_id"] for (name, labels), _ in got.items()
                if name.startswith("pipewave_job_")}
    assert progress == {running, starting} and not progress & {done, *queued}
    assert not any(name.startswith("pipewave_cluster_") for name, _ in got)


def test_cluster_slots_of_alive_nodes(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipewave.service.cluster import status  # (where the api reads Ray's node table)

    def node(node_id: str, state: status.NodeState, cpus: float, available: float) -> status.NodeStatus:
        return status.NodeStatus(node_id, state, "127.0.0.1", "cpu:test", cpus, available, 0.0, 2**30, ())

    nodes = (node("a", "ALIVE", 8.0, 5.0), node("b", "DRAINING", 4.0, 4.0), node("c", "DEAD", 4.0, 0.0),
             node("d", "ALIVE", 3.0, 1.0))
    monkeypatch.setattr(status, "node_statuses", lambda: nodes)
    got = samples(ServiceMetrics(store, MANAGER))
    # 2 CPUs a stage: a has 4 slots (2 free), d one (none free); draining and dead nodes none
    assert got["pipewave_cluster_slots", ()] == 5
    assert got["pipewave_cluster_free_slots", ()] == 2
    assert got["pipewave_queue_length", ()] == 0


def test_http_requests_counted_and_timed(store: JobStore) -> None:
    metrics = ServiceMetrics(store, MANAGER)
    metrics.requests.labels("GET", "/api/v1/jobs", "200").inc()
    metrics.requests.labels("GET", "/api/v1/jobs", "200").inc()
    metrics.requests.labels("POST", "/api/v1/jobs", "401").inc()
    metrics.latency.labels("GET", "/api/v1/jobs").observe(0.003)
    got = samples(metrics)
    get = (("method", "GET"), ("route", "/api/v1/jobs"))
    assert got["pipewave_http_requests_total", (*get, ("status", "200"))] == 2
    assert got["pipewave_http_requests_total", (("method", "POST"), ("route", "/api/v1/jobs"),
                                                ("status", "401"))] == 1
    assert got["pipewave_http_request_duration_seconds_count", get] == 1
    assert got["pipewave_http_request_duration_seconds_sum", get] == pytest.approx(0.003)
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items()
               if name == "pipewave_http_request_duration_seconds_bucket"}
    assert (buckets["0.0025"], buckets["0.005"], buckets["+Inf"]) == (0, 1, 1)
