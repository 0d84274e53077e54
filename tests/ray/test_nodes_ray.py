"""Node kinds on the shared local Ray cluster."""

from __future__ import annotations

import pytest
from pipewave.service.cluster.nodes import NodeInfo, cluster_nodes

NODES = [NodeInfo("n1", "cpu:old", 2.0, 0.0, 8 * 2**30), NodeInfo("n2", "cpu:old", 2.0, 0.0, None),
         NodeInfo("n3", "cpu:new", 1.0, 0.0, 4 * 2**30)]


@pytest.mark.ray
def test_the_test_cluster_is_one_cpu_node(ray_cluster) -> None:
    from harness import RAY_CPUS

    (node,) = cluster_nodes()
    assert node.kind.startswith("cpu:") and node.kind != "cpu:unknown"
    assert node.cpus == RAY_CPUS and node.gpus == 0 and node.memory_bytes
