"""Node kinds, their speeds and the slots they offer (pure, plus the test cluster's one node)."""

from __future__ import annotations

import pytest

from pipewave.service.cluster.nodes import NodeInfo, kind_speeds, reference_kind, slots_of
from pipewave.service.planning.partition import LayerCost, Link
from pipewave.service.planning.planner import plan_job

NODES = [NodeInfo("n1", "cpu:old", 2.0, 0.0, 8 * 2**30), NodeInfo("n2", "cpu:old", 2.0, 0.0, None),
         NodeInfo("n3", "cpu:new", 1.0, 0.0, 4 * 2**30)]


def test_speeds_are_relative_to_the_reference_kind() -> None:
    assert kind_speeds({"a": 2.0, "b": 1.0, "c": 4.0}, "a") == {"a": 1.0, "b": 2.0, "c": 0.5}
    with pytest.raises(ValueError, match="reference"):
        kind_speeds({"a": 0.0}, "a")


def test_reference_is_the_kind_with_most_slots() -> None:
    assert reference_kind(NODES) == "cpu:old"
    assert reference_kind(NODES, cpus_per_stage=2.0) == "cpu:old"
    assert reference_kind([NODES[2], *NODES[:2]], cpus_per_stage=4.0) == "cpu:new"  # 0-0-0: first
    with pytest.raises(ValueError):
        reference_kind([])


def test_slots_carry_speed_and_a_share_of_memory() -> None:
    slots = slots_of(NODES, {"cpu:new": 2.0}, memory_fraction=0.5)
    assert [(s.node_id, s.speed) for s in slots] == [("n1", 1.0), ("n1", 1.0), ("n2", 1.0),
                                                     ("n2", 1.0), ("n3", 2.0)]
    assert slots[0].memory_bytes == 2 * 2**30 and slots[2].memory_bytes is None
    assert slots[4].memory_bytes == 2 * 2**30
    assert len(slots_of(NODES, cpus_per_stage=2.0)) == 2  # n3 has 1 CPU: no 2-CPU slot
    with pytest.raises(ValueError):
        slots_of(NODES, cpus_per_stage=0)


def test_the_fast_kind_gets_twice_the_work(make_spec) -> None:
    """Speeds from the profiles reach the plan: the node twice as fast takes twice the layers."""
    nodes = [NodeInfo("slow1", "cpu:old", 1.0, 0.0, None), NodeInfo("slow2", "cpu:old", 1.0, 0.0, None),
             NodeInfo("fast", "cpu:new", 1.0, 0.0, None)]
    speeds = kind_speeds({"cpu:old": 2.0, "cpu:new": 1.0}, reference_kind(nodes))
    spec = make_spec(model={"kind": "mlp", "n_layers": 14, "d_model": 8, "seq_len": 4},
                     stages=3, microbatches=4, batch_size=8)
    layers = [LayerCost(1e-3, 2e-3, 100, 100, 100)] * 16
    jp = plan_job(spec, layers, slots_of(nodes, speeds), stages=3, microbatches=4,
                  link=Link(1e12, 0.0))
    work = {sp.node_id: sp.layers[1] - sp.layers[0] for sp in jp.plan.stages}
    assert work["fast"] == 8 and sorted(work.values()) == [4, 4, 8]
