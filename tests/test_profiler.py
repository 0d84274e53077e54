"""The layer profiler: real figures, stable timings, the on-disk cache, and a run on Ray."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.partition import LayerCost
from service.profiler import Profile, ProfileCache, profile_key, profile_layers, profile_on_cluster
from service.spec import GPTSpec
from workers.models import build_layers, num_layers

TINY: dict[str, Any] = {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2,
                        "n_heads": 2, "seq_len": 16}


def gpt(**overrides: Any) -> GPTSpec:
    return GPTSpec.model_validate({**TINY, **overrides})


def total(costs: list[LayerCost]) -> float:
    return sum(c.forward_s + c.backward_s for c in costs)


@pytest.mark.parametrize("vocab", [256, 4096])
def test_figures_are_real(vocab: int) -> None:
    cfg, b = gpt(vocab_size=vocab), 4
    costs = profile_layers(cfg, b, repeats=3, warmup=1)
    layers = build_layers(cfg, 0)
    assert len(costs) == num_layers(cfg) == len(layers)
    for cost, layer in zip(costs, layers, strict=True):
        assert cost.param_bytes == sum(p.numel() * p.element_size() for p in layer.parameters())
        assert cost.forward_s > 0 and cost.backward_s > 0
        assert cost.activation_bytes > 0
    for cost in costs[:-1]:
        assert cost.output_bytes == b * cfg.seq_len * cfg.d_model * 4
    assert costs[-1].output_bytes == b * cfg.seq_len * vocab * 4
    # the head keeps at least the log-softmax of its logits for the loss's backward
    assert costs[-1].activation_bytes >= b * cfg.seq_len * vocab * 4


def test_head_cost_grows_with_vocab() -> None:
    small = profile_layers(gpt(vocab_size=256), 8, repeats=5, warmup=1)[-1]
    large = profile_layers(gpt(vocab_size=4096), 8, repeats=5, warmup=1)[-1]
    ratio = (large.forward_s + large.backward_s) / (small.forward_s + small.backward_s)
    assert ratio > 2.0, ratio


def test_activation_bytes_grow_with_microbatch() -> None:
    cfg = gpt()
    one = profile_layers(cfg, 1, repeats=1, warmup=0)
    four = profile_layers(cfg, 4, repeats=1, warmup=0)
    for a, b in zip(one, four, strict=True):
        assert b.activation_bytes > a.activation_bytes
    # a block's saved activations are all (b, T, ...) tensors: 4x the microbatch, 4x the bytes
    assert four[1].activation_bytes == 4 * one[1].activation_bytes


def test_profiles_are_stable() -> None:
    cfg = gpt(d_model=64, seq_len=32)
    first, second = profile_layers(cfg, 4, repeats=5), profile_layers(cfg, 4, repeats=5)
    a, b = total(first), total(second)
    assert abs(a - b) <= 0.5 * max(a, b), (a, b)
    for x, y in zip(first, second, strict=True):  # memory figures are exact
        assert (x.param_bytes, x.activation_bytes, x.output_bytes) == (
            y.param_bytes, y.activation_bytes, y.output_bytes)


def test_profile_key() -> None:
    cfg = gpt()
    key = profile_key(cfg, 4, "cpu")
    assert key == profile_key(gpt(), 4, "cpu")
    assert key != profile_key(cfg, 8, "cpu")
    assert key != profile_key(cfg, 4, "NVIDIA H100")
    assert key != profile_key(gpt(vocab_size=512), 4, "cpu")


def _profile(key: str = "k") -> Profile:
    costs = (LayerCost(1e-3, 2e-3, 10, 20, 30), LayerCost(0.5, 0.25, 1, 2, 3))
    return Profile(key, "cpu", costs, 123.5)


def test_cache_roundtrip_and_corrupt_files(tmp_path, caplog) -> None:
    cache = ProfileCache(tmp_path / "profiles")
    assert cache.get("k") is None and cache.misses == 1  # no directory yet
    profile = _profile()
    cache.put(profile)
    assert cache.get("k") == profile and cache.hits == 1
    assert Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    assert [p.name for p in cache.directory.iterdir()] == ["k.json"]  # no temp files left

    cache.path("k").write_text("{not json")
    assert cache.get("k") is None
    cache.path("k").write_text(json.dumps({"version": 1, "key": "k"}))  # truncated
    assert cache.get("k") is None
    cache.path("other").write_text(json.dumps(profile.to_dict()))  # wrong key inside
    assert cache.get("other") is None
    assert cache.misses == 4 and cache.hits == 1
    assert "ignoring unreadable profile" in caplog.text


@pytest.mark.ray
def test_profile_on_cluster_caches(ray_cluster, make_spec, tmp_path) -> None:
    cache = ProfileCache(tmp_path)
    spec = make_spec()
    first = profile_on_cluster(spec, cache)
    assert len(first.layers) == num_layers(spec.model)
    assert first.device_kind.startswith("cpu:")  # the node kind: its processor model
    assert first.key == profile_key(spec.model, spec.microbatch_size, first.device_kind)
    assert (cache.hits, cache.misses) == (0, 1)
    assert all(c.forward_s > 0 and c.activation_bytes > 0 for c in first.layers)

    again = profile_on_cluster(make_spec(), cache)  # same job shape: served from the cache
    assert again == first and (cache.hits, cache.misses) == (1, 1)

    bigger = make_spec(microbatches=2)  # microbatch 4 instead of 2: another key, a miss
    other = profile_on_cluster(bigger, cache)
    assert (cache.hits, cache.misses) == (1, 2)
    assert other.key != first.key and other.measured_at > first.measured_at
    assert other.layers[1].output_bytes == 2 * first.layers[1].output_bytes
    assert {p.name for p in tmp_path.iterdir()} == {f"{first.key}.json", f"{other.key}.json"}


@pytest.mark.ray
def test_each_node_kind_is_profiled_and_gets_a_speed(ray_cluster, make_spec, tmp_path) -> None:
    """Two kinds (both on the test cluster's one node, so equally fast within noise): one
    profile each, cached under each kind, and a speed per kind relative to the reference."""
    from service.nodes import NodeInfo, cluster_nodes
    from service.profiler import profile_cluster

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
