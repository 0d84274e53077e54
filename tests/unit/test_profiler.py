"""The layer profiler: real figures, stable timings, the on-disk cache, and a run on Ray."""

from __future__ import annotations

import json

import pytest

from harness import tiny_gpt
from pipewave.service.planning.partition import LayerCost
from pipewave.service.planning.profiler import (
    Profile,
    ProfileCache,
    profile_key,
    profile_layers,
)
from pipewave.workers.models import build_layers, num_layers


def total(costs: list[LayerCost]) -> float:
    return sum(c.forward_s + c.backward_s for c in costs)


@pytest.mark.parametrize("vocab", [256, 4096])
def test_figures_are_real(vocab: int) -> None:
    cfg, b = tiny_gpt(vocab_size=vocab), 4
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
    small = profile_layers(tiny_gpt(vocab_size=256), 8, repeats=5, warmup=1)[-1]
    large = profile_layers(tiny_gpt(vocab_size=4096), 8, repeats=5, warmup=1)[-1]
    ratio = (large.forward_s + large.backward_s) / (small.forward_s + small.backward_s)
    assert ratio > 2.0, ratio


def test_activation_bytes_grow_with_microbatch() -> None:
    cfg = tiny_gpt()
    one = profile_layers(cfg, 1, repeats=1, warmup=0)
    four = profile_layers(cfg, 4, repeats=1, warmup=0)
    for a, b in zip(one, four, strict=True):
        assert b.activation_bytes > a.activation_bytes
    # a block's saved activations are all (b, T, ...) tensors: 4x the microbatch, 4x the bytes
    assert four[1].activation_bytes == 4 * one[1].activation_bytes


def test_profiles_are_stable() -> None:
    cfg = tiny_gpt(d_model=64, seq_len=32)
    first, second = profile_layers(cfg, 4, repeats=5), profile_layers(cfg, 4, repeats=5)
    a, b = total(first), total(second)
    assert abs(a - b) <= 0.5 * max(a, b), (a, b)
    for x, y in zip(first, second, strict=True):  # memory figures are exact
        assert (x.param_bytes, x.activation_bytes, x.output_bytes) == (
            y.param_bytes, y.activation_bytes, y.output_bytes)


def test_profile_key() -> None:
    cfg = tiny_gpt()
    key = profile_key(cfg, 4, "cpu")
    assert key == profile_key(tiny_gpt(), 4, "cpu")
    assert key != profile_key(cfg, 8, "cpu")
    assert key != profile_key(cfg, 4, "NVIDIA H100")
    assert key != profile_key(tiny_gpt(vocab_size=512), 4, "cpu")


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
