"""Every private Ray API pipewave uses, in one place, each checked for the shape pipewave expects.

Ray (2.60) has no public Python API for these reads and requests, so pipewave calls Ray's own
internals, which may change in any Ray release. Each wrapper here calls one of them and checks
what comes back; where the call is missing, takes other arguments or returns another shape, it
raises ``RayApiChanged`` naming the call and the Ray version, never an empty answer that would
quietly switch a feature off (drain detection, free slots). ``tests/ray/test_ray_private.py``
runs every wrapper against a real cluster, so a Ray upgrade that changes one fails there first.

Errors Ray raises for other reasons (the cluster is unreachable, not connected) pass through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# the private calls, by the names the errors give
AVAILABLE_RESOURCES = "ray._private.state.available_resources_per_node()"
DRAINING_NODES = "ray._private.state.state.get_draining_nodes()"
DRAIN_NODE = "ray._raylet.GcsClient(address).drain_node(node_id, reason, message, deadline_ms)"
DRAIN_REASON = "ray.core.generated.autoscaler_pb2.DrainNodeReason"
SHAPE_ERRORS: tuple[type[Exception], ...] = (AttributeError, ImportError, TypeError)


class RayApiChanged(RuntimeError):
    """A private Ray API pipewave relies on is missing or answers in another shape."""

    def __init__(self, api: str, problem: str) -> None:
        import ray

        super().__init__(f"Ray {ray.__version__} changed {api}: {problem} (pipewave is built against "
                         f"ray==2.60.0; see pipewave/service/cluster/ray_private.py)")
        self.api = api


def _call(api: str, fn: Callable[[], T], errors: tuple[type[Exception], ...] = SHAPE_ERRORS) -> T:
    """``fn()``; the errors a missing or changed API raises become ``RayApiChanged``."""
    try:
        return fn()
    except errors as err:
        raise RayApiChanged(api, f"{type(err).__name__}: {err}") from err


def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Each live node's unreserved resources now: {node id hex: {resource: amount}}."""
    import ray

    def read() -> Any:
        return ray._private.state.available_resources_per_node()

    raw = _call(AVAILABLE_RESOURCES, read)
    if not isinstance(raw, Mapping):
        raise RayApiChanged(AVAILABLE_RESOURCES, f"expected a dict by node, got {type(raw).__name__}")
    out: dict[str, dict[str, float]] = {}
    for node, res in raw.items():
        if not isinstance(node, str) or not isinstance(res, Mapping):
            raise RayApiChanged(AVAILABLE_RESOURCES, f"expected {{node id: {{resource: amount}}}}, "
                                f"got an entry {type(node).__name__}: {type(res).__name__}")
        try:
            out[node] = {str(k): float(v) for k, v in res.items()}
        except (TypeError, ValueError) as err:
            raise RayApiChanged(AVAILABLE_RESOURCES, f"a resource amount is not a number ({err})") from err
    return out


def draining_nodes() -> dict[str, int]:
    """The nodes Ray is draining: {node id hex: deadline in ms since the epoch, 0 for none}."""
    import ray

    def read() -> Any:
        return ray._private.state.state.get_draining_nodes()

    raw = _call(DRAINING_NODES, read)
    if not isinstance(raw, Mapping):
        raise RayApiChanged(DRAINING_NODES, f"expected a dict by node, got {type(raw).__name__}")
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in raw.items()):
        raise RayApiChanged(DRAINING_NODES, "expected {node id hex: deadline ms}, got "
                            f"{sorted({(type(k).__name__, type(v).__name__) for k, v in raw.items()})}")
    return dict(raw)


def drain_node(node_id: str, deadline_ms: int, message: str) -> tuple[bool, str]:
    """Ask Ray's GCS to drain the node ``node_id`` (hex) as for a preemption notice, what
    ``ray drain-node`` does: it takes no new work and leaves by ``deadline_ms`` (0: no deadline).
    Returns (accepted, Ray's reason when it refuses)."""
    import ray

    def reason() -> int:
        from ray.core.generated import autoscaler_pb2

        return int(autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"))  # type: ignore[attr-defined]

    why = _call(DRAIN_REASON, reason, (*SHAPE_ERRORS, ValueError, KeyError))

    def call() -> Any:
        gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)  # type: ignore[attr-defined]
        return gcs.drain_node(node_id, why, message, deadline_ms)

    answer = _call(DRAIN_NODE, call)
    if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], bool)):
        raise RayApiChanged(DRAIN_NODE, f"expected (accepted, reason), got {answer!r}")
    return answer[0], str(answer[1])
