"""Prometheus metrics of the service: jobs by state, each running job's progress, the cluster's
stage slots, the queue, and HTTP requests. Names start with ``pipewave_``, in base units."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipewave.api.models import ApiState


class _JobCollector(Collector):
    def __init__(self, store: Any, manager: Any) -> None:
        self.store, self.manager = store, manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.store.counts()
        jobs = GaugeMetricFamily("pipewave_jobs", "Jobs by state", labels=["state"])
        for st in ApiState:
            jobs.add_metric([st.value], counts.get(st.value, 0))
        yield jobs
        queue = GaugeMetricFamily("pipewave_queue_length", "Jobs waiting for stage slots")
        queue.add_metric([], counts.get(ApiState.QUEUED.value, 0))
        yield queue
        step = GaugeMetricFamily("pipewave_job_step", "Steps done", labels=["job_id", "name"])
        loss = GaugeMetricFamily("pipewave_job_loss", "Latest training loss", labels=["job_id", "name"])
        rate = GaugeMetricFamily("pipewave_job_samples_per_second", "Training throughput",
                                 labels=["job_id", "name"])
        stages = GaugeMetricFamily("pipewave_job_stages", "Pipeline stages", labels=["job_id", "name"])
        live = [s.value for s in ApiState if not s.is_terminal and s is not ApiState.QUEUED]
        rows, _ = self.store.list_jobs(live, limit=500)
        for r in rows:
            labels = [r.id, r.name]
            step.add_metric(labels, r.step)
            if r.loss is not None:
                loss.add_metric(labels, r.loss)
            if r.samples_per_s is not None:
                rate.add_metric(labels, r.samples_per_s)
            if r.stages is not None:
                stages.add_metric(labels, r.stages)
        yield from (step, loss, rate, stages)
        try:
            from pipewave.service.cluster.status import free_slots_per_node, node_statuses, total_slots

            nodes = node_statuses()
            free = sum(free_slots_per_node(self.manager.settings.cpus_per_stage, nodes).values())
            total = total_slots(self.manager.settings.cpus_per_stage, nodes)
        except Exception:  # Ray unreachable: leave the cluster gauges out
            return
        g = GaugeMetricFamily("pipewave_cluster_slots", "Stage slots of the alive, not draining nodes")
        g.add_metric([], total)
        yield g
        g = GaugeMetricFamily("pipewave_cluster_free_slots", "Stage slots free for new jobs")
        g.add_metric([], free)
        yield g


class ServiceMetrics:
    def __init__(self, store: Any, manager: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pipewave_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("pipewave_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.registry.register(_JobCollector(store, manager))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
