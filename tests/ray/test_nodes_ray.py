"""Node kinds on the shared local Ray cluster."""

from __future__ import annotations

import pytest

from pipewave.service.cluster.nodes import cluster_nodes


@pytest.mark.ray
def test_the_test_cluster_is_one_cpu_node(ray_cluster) -> None:
    from harness import RAY_CPUS

    (node,) = cluster_nodes()
    assert node.kind.startswith("cpu:") and node.kind != "cpu:unknown"
    assert node.cpus == RAY_CPUS and node.gpus == 0 and node.memory_bytes
