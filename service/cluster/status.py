"""The cluster as the service shows and sizes it: each node's state and free stage slots, and
the one scale request the service keeps with Ray's autoscaler.

The api reads Ray only through these functions; each answers with frozen snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pipewave.service.cluster import ray_private
from pipewave.service.cluster.nodes import draining_node_ids, static_kind

logger = logging.getLogger(__name__)

NodeState = Literal["ALIVE", "DRAINING", "DEAD"]


@dataclass(frozen=True)
class NodeStatus:
    """One node of Ray's node table, now."""

    node_id: str
    state: NodeState  # DRAINING: alive, but Ray is draining it
    address: str
    kind: str | None  # its label, else its GPU model; None: a CPU node without the label
    cpus: float
    available_cpus: float  # CPUs no task or actor holds (0 for a dead node)
    gpus: float
    memory_bytes: int | None  # Ray's "memory" resource
    labels: tuple[tuple[str, str], ...]  # Ray's node labels, as (key, value) pairs

    def slots(self, cpus_per_stage: float) -> int:
        """Stage slots it offers new work: ``cpus_per_stage`` CPUs each; none unless ALIVE."""
        return int(self.cpus // cpus_per_stage) if self.state == "ALIVE" else 0


def node_statuses() -> tuple[NodeStatus, ...]:
    """Every node Ray knows, dead ones included, in Ray's order."""
    import ray

    draining = draining_node_ids()
    avail = ray_private.available_resources_per_node()
    out = []
    for n in ray.nodes():
        node_id, res = str(n["NodeID"]), n.get("Resources", {})
        labels = {str(k): str(v) for k, v in (n.get("Labels") or {}).items()}
        state: NodeState = "DEAD" if not n.get("Alive") else "DRAINING" if node_id in draining else "ALIVE"
        out.append(NodeStatus(
            node_id=node_id, state=state, address=str(n.get("NodeManagerAddress", "")),
            kind=static_kind(labels, res), cpus=float(res.get("CPU", 0)),
            available_cpus=float(avail.get(node_id, {}).get("CPU", 0)) if state != "DEAD" else 0.0,
            gpus=float(res.get("GPU", 0)), memory_bytes=int(res["memory"]) if res.get("memory") else None,
            labels=tuple(labels.items())))
    return tuple(out)


def free_slots_per_node(cpus_per_stage: float,
                        nodes: Sequence[NodeStatus] | None = None) -> dict[str, int]:
    """Stage slots free on each alive, not draining node (Ray's available CPUs)."""
    nodes = node_statuses() if nodes is None else nodes
    return {n.node_id: int(n.available_cpus // cpus_per_stage + 1e-9) for n in nodes if n.state == "ALIVE"}


def total_slots(cpus_per_stage: float, nodes: Sequence[NodeStatus] | None = None) -> int:
    """Stage slots of the alive, not draining nodes."""
    return sum(n.slots(cpus_per_stage) for n in (node_statuses() if nodes is None else nodes))


def request_stages(bundle: Mapping[str, float], count: int) -> None:
    """Ask Ray's autoscaler for room for ``count`` stages of ``bundle`` resources each, replacing
    the previous request (Ray keeps one per cluster; 0 withdraws it)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[dict(bundle)] * count)
    logger.info("asked the autoscaler for room for %d stage(s)", count)


def connected() -> bool:
    """Whether this process is connected to a Ray cluster."""
    import ray

    return bool(ray.is_initialized())
