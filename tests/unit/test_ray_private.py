"""The wrappers of Ray's private APIs (service/cluster/ray_private.py) fail loudly, without a
cluster: a missing call, other arguments or another answer shape raise ``RayApiChanged`` naming
the call; nothing comes back empty."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import ray

from pipewave.service.cluster import nodes, ray_private
from pipewave.service.cluster.ray_private import RayApiChanged


def _raise(err: Exception) -> Any:
    def fn(*_: Any, **__: Any) -> Any:
        raise err

    return fn


def test_a_missing_draining_call_raises_instead_of_switching_drains_off(monkeypatch) -> None:
    monkeypatch.setattr(ray._private.state.state, "get_draining_nodes",
                        _raise(AttributeError("'GlobalState' object has no attribute 'get_draining_nodes'")))
    with pytest.raises(RayApiChanged, match=r"get_draining_nodes\(\).*AttributeError") as info:
        nodes.draining_node_ids()
    assert f"Ray {ray.__version__} changed" in str(info.value) and "ray==2.60.0" in str(info.value)
    assert info.value.api == ray_private.DRAINING_NODES


@pytest.mark.parametrize("answer", [["a" * 56], {"a" * 56: "soon"}, None])
def test_draining_nodes_in_another_shape(monkeypatch, answer: Any) -> None:
    monkeypatch.setattr(ray._private.state.state, "get_draining_nodes", lambda: answer)
    with pytest.raises(RayApiChanged, match="get_draining_nodes"):
        ray_private.draining_nodes()


def test_draining_nodes_as_expected(monkeypatch) -> None:
    monkeypatch.setattr(ray._private.state.state, "get_draining_nodes", lambda: {"a" * 56: 0})
    assert nodes.draining_node_ids() == {"a" * 56}


def test_other_errors_pass_through(monkeypatch) -> None:
    """An unreachable cluster is not an API change: Ray's own error comes through."""
    monkeypatch.setattr(ray._private.state.state, "get_draining_nodes", _raise(ConnectionError("gone")))
    with pytest.raises(ConnectionError, match="gone"):
        ray_private.draining_nodes()


def test_available_resources(monkeypatch) -> None:
    monkeypatch.delattr(ray._private.state, "available_resources_per_node")
    with pytest.raises(RayApiChanged, match=r"available_resources_per_node\(\).*AttributeError"):
        ray_private.available_resources_per_node()
    for bad in ([{"CPU": 1.0}], {"n": [1.0]}, {"n": {"CPU": "many"}}):
        monkeypatch.setattr(ray._private.state, "available_resources_per_node", lambda b=bad: b,
                            raising=False)
        with pytest.raises(RayApiChanged, match="available_resources_per_node"):
            ray_private.available_resources_per_node()
    monkeypatch.setattr(ray._private.state, "available_resources_per_node", lambda: {"n": {"CPU": 2}},
                        raising=False)
    assert ray_private.available_resources_per_node() == {"n": {"CPU": 2.0}}


class FakeGcs:
    answer: Any = (True, "")
    calls: list[tuple[Any, ...]] = []

    def __init__(self, address: str) -> None:
        self.address = address

    def drain_node(self, *args: Any) -> Any:
        FakeGcs.calls.append((self.address, *args))
        return FakeGcs.answer


def test_drain_node(monkeypatch) -> None:
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(gcs_address="gcs:1"))
    monkeypatch.setattr(ray._raylet, "GcsClient", FakeGcs)
    monkeypatch.setattr(FakeGcs, "calls", [])
    assert ray_private.drain_node("a" * 56, 0, "why") == (True, "")
    ((address, node, reason, message, deadline),) = FakeGcs.calls
    assert (address, node, message, deadline) == ("gcs:1", "a" * 56, "why", 0) and isinstance(reason, int)
    monkeypatch.setattr(FakeGcs, "answer", (False, "busy"))
    assert ray_private.drain_node("a" * 56, 5, "why") == (False, "busy")
    monkeypatch.setattr(FakeGcs, "answer", "accepted")
    with pytest.raises(RayApiChanged, match=r"drain_node.*expected \(accepted, reason\)"):
        ray_private.drain_node("a" * 56, 0, "why")
    monkeypatch.delattr(FakeGcs, "drain_node")
    with pytest.raises(RayApiChanged, match=r"drain_node.*AttributeError"):
        ray_private.drain_node("a" * 56, 0, "why")


def test_a_missing_drain_reason(monkeypatch) -> None:
    from ray.core.generated import autoscaler_pb2

    monkeypatch.delattr(autoscaler_pb2, "DrainNodeReason")
    with pytest.raises(RayApiChanged, match="DrainNodeReason"):
        ray_private.drain_node("a" * 56, 0, "why")
