"""The cluster's nodes, grouped into kinds, and the stage slots they offer the planner.

A node's *kind* names its hardware: nodes of one kind run a layer equally fast, so the layers
are profiled once per kind (``profiler.profile_cluster``) and each kind's speed is its measured
time relative to the reference kind. The kind is, in order:

1. the node's Ray label ``pipewave.io/node-kind`` (set it per KubeRay worker group);
2. the GPU model, where the node has GPUs (Ray's ``accelerator_type:<model>`` resource);
3. ``cpu:<processor model>``, probed by a tiny task on the node.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipewave.service.cluster import ray_private
from pipewave.service.planning.partition import Slot

logger = logging.getLogger(__name__)

KIND_LABEL = "pipewave.io/node-kind"


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    kind: str
    cpus: float
    gpus: float
    memory_bytes: int | None  # Ray's "memory" resource of the node


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def draining_node_ids() -> set[str]:
    """Nodes Ray is draining (autoscaler scale-down, preemption notice, ``pipewave drain``).
    Raises ``ray_private.RayApiChanged`` where Ray no longer answers as pipewave expects: drain
    detection never switches itself off in silence."""
    return set(ray_private.draining_nodes())


def static_kind(labels: Mapping[str, Any], resources: Mapping[str, Any]) -> str | None:
    """A node's kind where Ray's node table tells it (its label, else its GPU model); None for
    a CPU node without the label (its kind needs a probe on the node)."""
    label = labels.get(KIND_LABEL)
    if label:
        return str(label)
    gpu_models = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
    if resources.get("GPU", 0) > 0 and gpu_models:
        return f"gpu:{gpu_models[0]}"
    return None


def cluster_nodes(probe_timeout_s: float = 30.0, exclude: set[str] | None = None) -> list[NodeInfo]:
    """The alive, not draining nodes with CPUs, each with its kind (see the module docstring);
    ``exclude``: nodes known to be gone that Ray may not have marked dead yet (never probed)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    leaving = draining_node_ids() | set(exclude or ())
    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0
             and str(n["NodeID"]) not in leaving]
    kinds: dict[str, str] = {}
    probes: dict[str, Any] = {}
    probe = ray.remote(num_cpus=0)(_cpu_model)
    for n in alive:
        node_id = str(n["NodeID"])
        kind = static_kind(n.get("Labels") or {}, n.get("Resources", {}))
        if kind is not None:
            kinds[node_id] = kind
        else:
            probes[node_id] = probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    if probes:
        ready, _ = ray.wait(list(probes.values()), num_returns=len(probes), timeout=probe_timeout_s)
        done = set(ready)
        for node_id, ref in probes.items():
            try:
                kinds[node_id] = f"cpu:{ray.get(ref)}" if ref in done else "cpu:unknown"
            except Exception:  # the node went away meanwhile
                logger.info("cannot probe node %s", node_id, exc_info=True)
                kinds[node_id] = "cpu:unknown"
    out = []
    for n in alive:
        res = n.get("Resources", {})
        memory = res.get("memory")
        out.append(NodeInfo(str(n["NodeID"]), kinds[str(n["NodeID"])], float(res.get("CPU", 0)),
                            float(res.get("GPU", 0)), int(memory) if memory else None))
    return out


def kind_speeds(kind_times: Mapping[str, float], reference: str) -> dict[str, float]:
    """Speed of each kind: the reference kind's total layer time over its own (1.0 = reference)."""
    if kind_times.get(reference, 0) <= 0:
        raise ValueError(f"no positive time for the reference kind {reference!r}")
    return {k: (kind_times[reference] / t if t > 0 else 1.0) for k, t in kind_times.items()}


def reference_kind(nodes: Sequence[NodeInfo], cpus_per_stage: float = 1.0) -> str:
    """The kind offering the most slots (ties: the first seen): its profile is the plan's."""
    slots: dict[str, int] = {}
    for n in nodes:
        slots[n.kind] = slots.get(n.kind, 0) + int(n.cpus // cpus_per_stage)
    if not slots:
        raise ValueError("the cluster has no node with CPUs")
    return max(slots, key=lambda k: slots[k])


def slots_of(nodes: Sequence[NodeInfo], speeds: Mapping[str, float] | None = None,
             cpus_per_stage: float = 1.0, memory_fraction: float = 0.8) -> list[Slot]:
    """One slot per ``cpus_per_stage`` CPUs of each node, with its kind's speed; each slot's
    memory budget is ``memory_fraction`` of the node's Ray memory shared by its slots."""
    if cpus_per_stage <= 0 or not 0 < memory_fraction <= 1:
        raise ValueError("cpus_per_stage must be > 0 and memory_fraction in (0, 1]")
    slots: list[Slot] = []
    for n in nodes:
        count = int(n.cpus // cpus_per_stage)
        if count < 1:
            continue
        budget = int(memory_fraction * n.memory_bytes / count) if n.memory_bytes else None
        speed = (speeds or {}).get(n.kind, 1.0)
        slots += [Slot(n.node_id, speed, budget)] * count
    return slots
