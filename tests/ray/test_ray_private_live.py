"""Every private Ray API pipewave uses (service/cluster/ray_private.py) against the real shared
cluster: each call exists, takes pipewave's arguments and answers in the shape pipewave reads. A
Ray upgrade that changes one fails here, by name (``RayApiChanged``), before a job meets it."""

from __future__ import annotations

import ray

from pipewave.service.cluster import ray_private
from pipewave.service.cluster.status import node_statuses


def test_available_resources_per_node(ray_cluster) -> None:
    avail = ray_private.available_resources_per_node()
    cpus = {str(n["NodeID"]): n["Resources"]["CPU"] for n in ray.nodes() if n.get("Alive")}
    assert set(avail) == set(cpus)
    for node, res in avail.items():
        assert 0 <= res["CPU"] <= cpus[node]
        assert all(isinstance(v, float) for v in res.values())


def test_draining_nodes(ray_cluster) -> None:
    assert ray_private.draining_nodes() == {}  # the idle local cluster drains nothing


def test_drain_node_call(ray_cluster) -> None:
    """The GCS call ``ray drain-node`` makes, on a node id no node has (the shared cluster's one
    node is the head, which must not go): Ray takes the call and answers (accepted, reason)."""
    accepted, why = ray_private.drain_node("ab" * 28, 0, "pipewave test: no such node")
    assert isinstance(accepted, bool) and isinstance(why, str)


def test_node_statuses_read_through_the_wrappers(ray_cluster) -> None:
    (node,) = node_statuses()
    assert node.state == "ALIVE" and node.cpus > 0 and 0 <= node.available_cpus <= node.cpus
    assert node.kind is None  # a CPU node without the kind label
