"""Profiling on the shared local Ray cluster."""

from __future__ import annotations

import pytest

from pipewave.service.planning.profiler import (
    ProfileCache,
    profile_cluster,
    profile_key,
)
from pipewave.workers.models import num_layers


@pytest.mark.ray
def test_profile_cluster_caches(ray_cluster, make_spec, tmp_path) -> None:
    cache = ProfileCache(tmp_path)
    spec = make_spec()
    first = profile_cluster(spec, cache).reference
    assert len(first.layers) == num_layers(spec.model)
    assert first.device_kind.startswith("cpu:")  # the node kind: its processor model
    assert first.key == profile_key(spec.model, spec.microbatch_size, first.device_kind)
    assert (cache.hits, cache.misses) == (0, 1)
    assert all(c.forward_s > 0 and c.activation_bytes > 0 for c in first.layers)

    again = profile_cluster(make_spec(), cache).reference  # same job shape: served from the cache
    assert again == first and (cache.hits, cache.misses) == (1, 1)

    bigger = make_spec(microbatches=2)  # microbatch 4 instead of 2: another key, a miss
    other = profile_cluster(bigger, cache).reference
    assert (cache.hits, cache.misses) == (1, 2)
    assert other.key != first.key and other.measured_at > first.measured_at
    assert other.layers[1].output_bytes == 2 * first.layers[1].output_bytes
    assert {p.name for p in tmp_path.iterdir()} == {f"{first.key}.json", f"{other.key}.json"}


@pytest.mark.ray
def test_each_node_kind_is_profiled_and_gets_a_speed(ray_cluster, make_spec, tmp_path) -> None:
    """Two kinds (both on the test cluster's one node, so equally fast within noise): one
    profile each, cached under each kind, and a speed per kind relative to the reference."""
    from pipewave.service.cluster.nodes import NodeInfo, cluster_nodes
    from pipewave.service.planning.profiler import profile_cluster

    (real,) = cluster_nodes()
    nodes = [NodeInfo(real.node_id, "kind-a", 3.0, 0.0, None),
             NodeInfo(real.node_id, "kind-b", 1.0, 0.0, None)]
    cache = ProfileCache(tmp_path)
    spec = make_spec(model={"kind": "gpt", "vocab_size": 1024, "d_model": 64, "n_layers": 2,
                            "n_heads": 2, "seq_len": 32})
    cp = profile_cluster(spec, cache, nodes)
    assert set(cp.profiles) == {"kind-a", "kind-b"} and cp.reference.device_kind == "kind-a"
    assert cp.speeds["kind-a"] == 1.0 and 0.7 < cp.speeds["kind-b"] < 1.4
    assert len(list(tmp_path.glob("*.json"))) == 2 and cache.misses == 2
    again = profile_cluster(spec, cache, nodes)  # a re-plan: no new profiling
    assert cache.hits == 2 and again.speeds == cp.speeds
