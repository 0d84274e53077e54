"""Layer profiler: measured ``LayerCost``s for the partition planner, cached on disk.

``profile_layers`` runs in the current process (pure torch): it builds the model's layers and
times each one at the job's microbatch shape, one thread, as a stage runs it. Activation bytes are
what the layer's forward saves for its backward (unique storages seen by a saved-tensors hook,
parameters excluded). ``profile_cluster`` runs it inside a Ray actor on a node of each node kind
of the cluster (``cluster.nodes``), caches each result by (model config, microbatch shape, node
kind) and derives the kinds' relative speeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from pipewave.service.cluster.nodes import NodeInfo, cluster_nodes, kind_speeds, reference_kind
from pipewave.service.planning.partition import LayerCost
from pipewave.workers.contract import ModelSettings, PipelineModel
from pipewave.workers.models import model_for, settings_of
from pipewave.workers.tree import Tree, differentiable, leaves

logger = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 2: layer names in the key; 3: CPU time, stage heap; 4: fixed parts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds ``fn`` takes: on CPU the thread's CPU time (one thread, as a stage computes; what
    else runs on the node does not count), on a GPU wall time between synchronisations."""
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    _sync(device)
    t0 = clock()
    result = fn()
    _sync(device)
    return clock() - t0, result


def _saved_bytes(fn: Callable[[], Any], exclude: set[int]) -> tuple[Any, int]:
    """Run ``fn`` and sum the unique storages its autograd graph saves (``exclude``: data_ptrs)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(seen.values())


def _profile_one(layer: torch.nn.Module, inp: Tree, loss: Callable[[Tree], Tensor] | None,
                 repeats: int, warmup: int, device: torch.device) -> tuple[LayerCost, Tree]:
    """Time one layer's forward and backward (the last one's with the loss, ``loss``); return
    its cost and its detached output (a tree of tensors)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    wrt = [t for t in leaves(inp) if t.requires_grad] + params

    def forward() -> tuple[Tree, list[Tensor]]:  # (output, what the backward starts from)
        out = layer(inp)
        return out, ([loss(out)] if loss is not None
                     else [t for t in leaves(out) if differentiable(t) and t.requires_grad])

    fwd: list[float] = []
    bwd: list[float] = []
    for i in range(warmup + repeats):
        f_s, (_, res) = _timed(forward, device)
        grads = None if loss is not None else [torch.randn_like(t) for t in res]
        b_s, _ = _timed(partial(torch.autograd.grad, res, wrt, grad_outputs=grads,
                                allow_unused=True), device)
        if i >= warmup:
            fwd.append(f_s)
            bwd.append(b_s)
    exclude = {p.untyped_storage().data_ptr() for p in params}
    (out, _), act_bytes = _saved_bytes(forward, exclude)
    cost = LayerCost(
        forward_s=statistics.median(fwd),
        backward_s=statistics.median(bwd),
        param_bytes=sum(p.numel() * p.element_size() for p in layer.parameters()),
        activation_bytes=act_bytes,
        output_bytes=sum(t.numel() * t.element_size() for t in leaves(out)),
    )
    return cost, torch.utils._pytree.tree_map(lambda t: t.detach(), out)


def _profile_chain(layers: list[torch.nn.Module], model: PipelineModel, size: int, seed: int,
                   repeats: int, warmup: int, dev: torch.device) -> list[LayerCost]:
    """Every layer at a (size, seq_len) batch, each fed the previous layer's output."""
    gen = torch.Generator().manual_seed(seed)
    shape = (size, model.seq_len)
    vocab = model.vocab_size or 2
    x: Tree = torch.randint(0, vocab, shape, generator=gen).to(dev)  # tokens
    targets = torch.randint(0, vocab, shape, generator=gen).to(dev)
    costs = []
    with torch.enable_grad():
        for i, layer in enumerate(layers):
            inp = torch.utils._pytree.tree_map(
                lambda t: t.detach().requires_grad_(differentiable(t)), x)
            last = i == len(layers) - 1
            cost, x = _profile_one(layer, inp, partial(model.loss, targets=targets) if last else None,
                                   repeats, warmup, dev)
            costs.append(cost)
    return costs


def _fixed_part(t_big: float, t_small: float, big: int, small: int) -> float:
    """The microbatch-independent part of a time measured at two sizes (t = a + b x size)."""
    per_sample = max(0.0, (t_big - t_small) / (big - small))
    return min(t_big, max(0.0, t_big - per_sample * big))


def profile_layers(model_cfg: Any, microbatch_size: int, seed: int = 0, repeats: int = 5,
                   warmup: int = 2, device: str = "cpu") -> list[LayerCost]:
    """Measure every layer of ``model_cfg`` at a (microbatch_size, seq_len) batch on one thread,
    and at a quarter of that size (or 2 samples more, from 1) to split each time into its fixed
    and its per-sample part."""
    if microbatch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("microbatch_size and repeats must be >= 1, warmup >= 0")
    dev = torch.device(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = model_for(model_cfg)
        layers = [layer.to(dev).train() for layer in model.build_layers(seed)]
        costs = _profile_chain(layers, model, microbatch_size, seed, repeats, warmup, dev)
        other = max(1, microbatch_size // 4) if microbatch_size > 1 else 3
        second = _profile_chain(layers, model, other, seed, repeats, warmup, dev)
    finally:
        torch.set_num_threads(threads)
    (big, cb), (small, cs) = sorted([(microbatch_size, costs), (other, second)],
                                    key=lambda pair: pair[0], reverse=True)
    costs = [replace(c, forward_fixed_s=_fixed_part(b.forward_s, s.forward_s, big, small),
                     backward_fixed_s=_fixed_part(b.backward_s, s.backward_s, big, small))
             for c, b, s in zip(costs, cb, cs, strict=True)]
    logger.debug("profiled %d layers: %s", len(costs), costs)
    return costs


@dataclass(frozen=True)
class Profile:
    """Measured layer costs of one model at one microbatch shape on one device kind."""

    key: str
    device_kind: str
    layers: tuple[LayerCost, ...]
    measured_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "key": self.key, "device_kind": self.device_kind,
                "measured_at": self.measured_at, "layers": [asdict(c) for c in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown profile format {data.get('version')!r}")
        layers = tuple(
            LayerCost(float(c["forward_s"]), float(c["backward_s"]), int(c["param_bytes"]),
                      int(c["activation_bytes"]), int(c["output_bytes"]),
                      float(c["forward_fixed_s"]), float(c["backward_fixed_s"]))
            for c in data["layers"]
        )
        return cls(str(data["key"]), str(data["device_kind"]), layers, float(data["measured_at"]))


def profile_key(model_cfg: Any, microbatch_size: int, device_kind: str) -> str:
    """Stable hash of the model config (``ModelSettings``, pydantic or mapping), microbatch shape
    and device kind."""
    settings = settings_of(SimpleNamespace(**model_cfg) if isinstance(model_cfg, dict) else model_cfg)
    cfg = settings.options
    names = model_for(settings).layer_names()  # a change in how models cut is a new key
    blob = json.dumps({"model": cfg, "layers": names, "shape": [microbatch_size, settings.seq_len],
                       "device": device_kind, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ProfileCache:
    """Profiles as ``<key>.json`` files in ``directory``; a bad file is a miss, never a crash."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Profile | None:
        path = self.path(key)
        try:
            profile = Profile.from_dict(json.loads(path.read_text()))
            if profile.key != key:
                raise ValueError(f"file holds key {profile.key!r}")
        except FileNotFoundError:
            profile = None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            logger.warning("ignoring unreadable profile %s: %s", path, err)
            profile = None
        if profile is None:
            self.misses += 1
        else:
            self.hits += 1
        return profile

    def put(self, profile: Profile) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{profile.key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(profile.to_dict(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(profile.key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _ProfilerActor:
    """Runs on a node of the kind it profiles (GPU there, if the node has one)."""

    def __init__(self) -> None:
        import ray

        from pipewave.workers.state import keep_freed_memory

        keep_freed_memory()  # the heap as a stage worker keeps it (large tensors reuse memory)
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"

    def profile(self, model_cfg: ModelSettings, microbatch_size: int, seed: int) -> list[LayerCost]:
        return profile_layers(model_cfg, microbatch_size, seed, device=self.device)


@dataclass(frozen=True)
class ClusterProfile:
    """The layers of the reference kind (the plan's costs) and every node kind's speed."""

    reference: Profile
    speeds: dict[str, float]  # node kind -> reference time / its time
    profiles: dict[str, Profile]  # node kind -> its profile

    @property
    def layers(self) -> tuple[LayerCost, ...]:
        return self.reference.layers


def _profile_kind(spec: Any, cache: ProfileCache, node: NodeInfo) -> Profile:
    """The spec's layers on ``node``'s kind: from the cache, or measured there and stored."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    model, mbs = spec.model_settings, spec.microbatch_size
    n = model_for(model).num_layers()
    key = profile_key(model, mbs, node.kind)
    cached = cache.get(key)
    if cached is not None and len(cached.layers) == n:
        return cached
    t0 = time.perf_counter()
    actor: Any = ray.remote(_ProfilerActor).options(
        num_cpus=1, num_gpus=1 if node.gpus >= 1 else 0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote()
    try:
        layers = ray.get(actor.profile.remote(model, mbs, spec.seed))
    finally:
        ray.kill(actor)
    if len(layers) != n:
        raise RuntimeError(f"profiler returned {len(layers)} layers, expected {n}")
    profile = Profile(key, node.kind, tuple(layers), time.time())
    cache.put(profile)
    logger.info("profiled %s on %s (microbatch %d) in %.1f s", model.kind, node.kind, mbs,
                time.perf_counter() - t0)
    return profile


def profile_cluster(spec: Any, cache: ProfileCache, nodes: Sequence[NodeInfo] | None = None,
                    cpus_per_stage: float = 1.0) -> ClusterProfile:
    """Profile the spec's layers once per node kind of the cluster (cached per kind) and derive
    each kind's speed from its total forward + backward time."""
    nodes = list(nodes) if nodes is not None else cluster_nodes()
    if not nodes:
        raise RuntimeError("the cluster has no node with CPUs to profile on")
    first: dict[str, NodeInfo] = {}
    for n in nodes:
        first.setdefault(n.kind, n)
    profiles = {kind: _profile_kind(spec, cache, node) for kind, node in first.items()}
    ref = reference_kind(nodes, cpus_per_stage)
    totals = {k: sum(c.forward_s + c.backward_s for c in p.layers) for k, p in profiles.items()}
    speeds = kind_speeds(totals, ref)
    if len(speeds) > 1:
        logger.info("node kind speeds (reference %s): %s", ref, speeds)
    return ClusterProfile(profiles[ref], speeds, profiles)
