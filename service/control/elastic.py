"""Elasticity: watch the cluster's membership and decide when a job should move.

``observe`` reads Ray's node table (alive, draining with its deadline, resources); ``Watcher``
turns raw observations into *stable* changes: a change counts only once the same view was seen
``confirm`` times in a row, so a node that flaps is never acted on. ``decide`` is the policy, a
pure function returning a frozen ``Decision`` with its reason; the controller acts on it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipewave.service.cluster import ray_private
from pipewave.service.cluster.nodes import draining_node_ids
from pipewave.service.planning.partition import InfeasibleError, LayerCost, Link, Slot
from pipewave.service.planning.planner import JobPlan, plan_job

if TYPE_CHECKING:
    from pipewave.service.spec import JobSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeState:
    node_id: str
    alive: bool
    draining: bool
    cpus: float

    def usable(self, cpus_per_stage: float) -> bool:
        """Offers at least one stage slot and is not on its way out."""
        return self.alive and not self.draining and self.cpus >= cpus_per_stage


View = Mapping[str, NodeState]  # node id -> state


def observe() -> dict[str, NodeState]:
    """The node table now: every node Ray knows, with draining ones marked."""
    import ray

    draining = draining_node_ids()
    out = {}
    for n in ray.nodes():
        node_id = str(n["NodeID"])
        alive = bool(n.get("Alive"))
        cpus = float((n.get("Resources") or {}).get("CPU", 0)) if alive else 0.0
        out[node_id] = NodeState(node_id, alive, node_id in draining, cpus)
    return out


def usable_nodes(view: View, cpus_per_stage: float) -> frozenset[str]:
    return frozenset(n for n, s in view.items() if s.usable(cpus_per_stage))


class Watcher:
    """Reports a change of the usable node set once it has held for ``confirm`` observations."""

    def __init__(self, initial: frozenset[str], confirm: int = 3) -> None:
        if confirm < 1:
            raise ValueError("confirm must be >= 1")
        self.current, self.confirm = initial, confirm
        self._candidate: frozenset[str] | None = None
        self._seen = 0

    def feed(self, usable: frozenset[str]) -> frozenset[str] | None:
        """The new stable set if this observation confirms a change, else None."""
        if usable == self.current:
            self._candidate, self._seen = None, 0
            return None
        if usable != self._candidate:
            self._candidate, self._seen = usable, 0
        self._seen += 1
        if self._seen < self.confirm:
            return None
        self.current, self._candidate, self._seen = usable, None, 0
        return usable

    def accept(self, nodes: frozenset[str]) -> None:
        """The job now runs on (or has settled for) ``nodes``: changes are relative to it."""
        self.current, self._candidate, self._seen = nodes, None, 0


@dataclass(frozen=True)
class Decision:
    action: Literal["stay", "move", "wait"]
    plan: JobPlan | None
    reason: str


def decide(spec: JobSpec, layers: Sequence[LayerCost], slots: Sequence[Slot], current: JobPlan,
           *, min_stages: int, max_stages: int, min_gain: float = 0.05,
           link: Link = Link()) -> Decision:
    """What a job should do on the cluster's usable ``slots``.

    - Its stages sit on nodes that are gone or leaving: move (the best plan with between
      ``min_stages`` and ``max_stages`` stages), or wait when fewer than ``min_stages`` fit.
    - Otherwise move only if the best plan on the slots beats the current one's predicted
      throughput by more than ``min_gain`` (a move pauses training); else stay.
    The microbatch count stays: it is part of what the job trains (updates per step)."""
    where = {s.node_id for s in slots}
    lost = sorted({sp.node_id for sp in current.plan.stages} - where)
    top = min(max_stages, len(slots))
    if top < min_stages:
        why = (f"{len(slots)} slot(s) usable, the job needs at least {min_stages} stages")
        return Decision("wait" if lost else "stay", None, why)
    try:
        best = plan_job(spec, layers, slots, microbatches=current.microbatches, max_stages=top,
                        link=link)
    except InfeasibleError as err:
        return Decision("wait" if lost else "stay", None, f"no plan fits the usable nodes: {err}")
    if best.stages < min_stages:
        try:
            best = plan_job(spec, layers, slots, stages=min_stages, microbatches=current.microbatches,
                            link=link)
        except InfeasibleError as err:
            return Decision("wait" if lost else "stay", None, f"{min_stages} stages do not fit: {err}")
    shape = f"{current.stages} -> {best.stages} stages"
    if lost:
        gone = ", ".join(n[:12] for n in lost)
        return Decision("move", best, f"node(s) {gone} left or are leaving: {shape}")
    gain = best.predicted_samples_per_s / current.predicted_samples_per_s \
        if current.predicted_samples_per_s > 0 else float("inf")
    if best.plan.partition == current.plan.partition and best.stages == current.stages:
        return Decision("stay", None, f"the best plan on {len(slots)} slots is the current one")
    if gain <= 1 + min_gain:
        return Decision("stay", None, f"{shape} would give {gain:.3f}x, not worth a pause "
                                      f"(needs > {1 + min_gain:.2f}x)")
    return Decision("move", best, f"{len(slots)} slots usable: {shape}, predicted {gain:.2f}x")


class DrainError(RuntimeError):
    """A drain request Ray refused or could not take; the message is one line."""


def drain_node(node_id: str, deadline_s: float | None = None,
               message: str = "drained with pipewave") -> None:
    """Ask Ray to drain ``node_id``: it takes no new work and running jobs move off it (pipewave
    jobs see it as draining and move their stages before it goes). ``deadline_s``: when the node
    will be gone (none: no deadline)."""
    import ray

    if not re.fullmatch(r"[0-9a-fA-F]{56}", node_id):  # 28 bytes, as `ray list nodes` shows
        raise DrainError(f"not a Ray node id (56 hex digits): {node_id!r}")
    node = ray.NodeID.from_hex(node_id.lower())
    nodes = {str(n["NodeID"]): n for n in ray.nodes()}
    if not nodes.get(node.hex(), {}).get("Alive"):
        raise DrainError(f"no alive node {node_id} in this cluster")
    if "node:__internal_head__" in nodes[node.hex()].get("Resources", {}):
        raise DrainError(f"{node_id} is the head node: it runs Ray's control plane and cannot be drained")
    deadline_ms = 0 if deadline_s is None else int((time.time() + deadline_s) * 1000)
    accepted, why = ray_private.drain_node(node.hex(), deadline_ms, message)
    if not accepted:
        raise DrainError(f"Ray refused to drain {node_id}: {why}")
