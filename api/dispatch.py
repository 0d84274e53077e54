"""The dispatcher's sums, pure: how few slots a job can start with, which nodes' free slots a
starting job gets, and how many stages the service asks Ray's autoscaler to make room for.
(Which queued job starts, and why the others wait, is ``pipewave.api.queue.decide``.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipewave.service.spec import JobSpec

MAX_REQUEST = 1024  # stages asked of the autoscaler at most


def min_slots(spec: JobSpec) -> int:
    """The fewest stage slots a job can start with."""
    if spec.stages != "auto":
        return spec.stages
    return spec.elastic.min_stages if spec.elastic is not None else 1


def cap(per_node: Mapping[str, int], total: int) -> dict[str, int]:
    """At most ``total`` slots, taken from the nodes with the most free first."""
    out: dict[str, int] = {}
    for node, n in sorted(per_node.items(), key=lambda kv: -kv[1]):
        take = min(n, total - sum(out.values()))
        if take > 0:
            out[node] = take
    return out


def scale_request(running: Sequence[tuple[int, int]], queued_needs: Sequence[int]) -> int:
    """Stages to ask the autoscaler room for (Ray keeps one request per cluster): every running
    job's stages (an elastic job's as many as it asks for) and every queued job's minimum; 0 (no
    request) when no job is queued and none asks for more. ``running``: (stages placed, stage
    slots it asks for) per running job; ``queued_needs``: each queued job's ``min_slots``."""
    held = sum(max(placed, asks) for placed, asks in running)
    wanting = bool(queued_needs) or any(asks > 0 for _, asks in running)
    return min(held + sum(queued_needs), MAX_REQUEST) if wanting else 0
