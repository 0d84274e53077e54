"""The automatic planner: stage count, microbatches, placement and predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import pipewave
from pipewave.service.planning.partition import InfeasibleError, LayerCost, Link, Slot, uniform
from pipewave.service.planning.planner import (
    calibrated,
    decide_rebalance,
    microbatch_candidates,
    plan_job,
    render_plan,
)

ROOT = Path(__file__).resolve().parents[2]
GPT = {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 8, "n_heads": 2, "seq_len": 16}
NAMES = ["embed", *(f"block{i}" for i in range(8)), "head"]


def gpt_layers(head: float = 3.0) -> list[LayerCost]:
    """The GPT shape: a tiny embedding, 8 equal blocks (1 ms fwd + 2 ms bwd), a heavy head."""
    embed = LayerCost(1e-4, 2e-4, 4_000, 1_000, 1_000)
    block = LayerCost(1e-3, 2e-3, 50_000, 10_000, 1_000)
    last = LayerCost(head * 1e-3, head * 2e-3, 200_000, 40_000, 1_000)
    return [embed, *[block] * 8, last]


def slots(n: int, budget: int | None = None) -> list[Slot]:
    return [Slot(f"node{i}", 1.0, budget) for i in range(n)]


def stage_times(layers: list[LayerCost], bounds) -> list[float]:
    return [sum(c.forward_s + c.backward_s for c in layers[a:b]) for a, b in bounds]


def test_balanced_where_uniform_is_not(make_spec):
    spec = make_spec(model=GPT, schedule="1f1b", stages=4, microbatches=8, batch_size=32)
    layers = gpt_layers()
    jp = plan_job(spec, layers, slots(4), stages=4, microbatches=8, link=Link(1e12, 0.0))
    times = [sp.compute_s + sp.send_s for sp in jp.plan.stages]
    assert max(times) / (sum(times) / len(times)) <= 1.10
    naive = stage_times(layers, uniform(len(layers), 4))
    assert max(naive) / (sum(naive) / len(naive)) > 1.3
    assert jp.stages == 4 and jp.microbatches == 8 and len(jp.predicted_stage_busy_s) == 4
    assert "as given" in jp.reason
    # the simulated step: at least the bottleneck's work, at most fully serial work
    work = sum(c.forward_s + c.backward_s for c in layers) * 8
    assert max(times) * 8 <= jp.predicted_step_s <= work * 1.05
    assert 0 < jp.predicted_bubble < 0.5


def test_calibrated_scales_each_stage_layers():
    layers = gpt_layers()
    fixed = calibrated(layers, [(0, 5), (5, 10)], [1.0, 2.0])
    assert fixed[:5] == layers[:5]
    assert [c.forward_s for c in fixed[5:]] == [2 * c.forward_s for c in layers[5:]]
    assert [c.backward_s for c in fixed[5:]] == [2 * c.backward_s for c in layers[5:]]
    assert [c.param_bytes for c in fixed] == [c.param_bytes for c in layers]  # only times
    with pytest.raises(ValueError):
        calibrated(layers, [(0, 5), (5, 10)], [1.0])


def test_rebalance_follows_the_measurement(make_spec):
    """The profile underrates the head (1 block instead of 3): the plan is off, the stages'
    measured busy time shows it, and the re-plan on corrected costs moves the cuts."""
    spec = make_spec(model=GPT, schedule="1f1b", stages=4, microbatches=8, batch_size=32)
    true, wrong = gpt_layers(head=3.0), gpt_layers(head=1.0)
    link = Link(1e12, 0.0)
    jp = plan_job(spec, wrong, slots(4), stages=4, microbatches=8, link=link)
    # what the stages measure: the predicted busy time with the true costs
    truth = [t / w for t, w in zip(stage_times(true, jp.plan.partition),
                                    stage_times(wrong, jp.plan.partition), strict=True)]
    measured = [b * f for b, f in zip(jp.predicted_stage_busy_s, truth, strict=True)]
    d = decide_rebalance(spec, wrong, slots(4), jp, measured, link=link)
    assert d.plan is not None and d.plan.plan.partition != jp.plan.partition, d.reason
    assert d.factors[-1] > 1.5 and all(f == pytest.approx(1.0) for f in d.factors[:-1])
    assert (d.plan.stages, d.plan.microbatches) == (4, 8) and "cuts the bottleneck" in d.reason
    assert max(stage_times(true, d.plan.plan.partition)) < max(stage_times(true, jp.plan.partition))
    # each round corrects the costs it was planned from; within max_rebalances (3) rounds the
    # partition is the one planned from the true costs
    good = plan_job(spec, true, slots(4), stages=4, microbatches=8, link=link)
    rounds, current, costs = 1, d.plan, list(d.layers)
    while True:
        truth = [t / c for t, c in zip(stage_times(true, current.plan.partition),
                                        stage_times(costs, current.plan.partition), strict=True)]
        step = decide_rebalance(spec, costs, slots(4), current,
                                [b * f for b, f in zip(current.predicted_stage_busy_s, truth, strict=True)],
                                link=link)
        if step.plan is None:
            break
        rounds, current, costs = rounds + 1, step.plan, list(step.layers)
        assert rounds <= 3
    assert max(stage_times(true, current.plan.partition)) == pytest.approx(
        max(stage_times(true, good.plan.partition)))
    # a measurement that agrees with the plan (or is off everywhere alike) moves nothing
    for scale in (1.0, 1.3):
        keep = decide_rebalance(spec, true, slots(4), good, [b * scale for b in good.predicted_stage_busy_s],
                                link=link)
        assert keep.plan is None and "keeping" in keep.reason
    none = decide_rebalance(spec, true, slots(4), good, [0.0] * 4, link=link)
    assert none.plan is None


@pytest.mark.parametrize("schedule", ["1f1b", "pipedream", "2bw", "gpipe"])
def test_stage_count_follows_the_slots(make_spec, schedule):
    spec = make_spec(model=GPT, schedule=schedule, stages=2, microbatches=4, batch_size=32)
    chosen = {n: plan_job(spec, gpt_layers(), slots(n)) for n in (1, 2, 4)}
    assert chosen[1].stages == 1
    assert chosen[2].stages == 2
    assert chosen[4].stages in (3, 4)
    rates = [chosen[n].predicted_samples_per_s for n in (1, 2, 4)]
    assert rates[0] < rates[1] < rates[2]
    assert rates[2] > 2.0 * rates[0]
    for n, jp in chosen.items():
        assert jp.stages <= n and 32 % jp.microbatches == 0
        assert jp.microbatches in microbatch_candidates(32, jp.stages)
    assert "the throughput of" in chosen[4].reason


def test_max_stages_and_ties_prefer_fewer_stages(make_spec):
    spec = make_spec(model=GPT, schedule="1f1b", stages=2, microbatches=4, batch_size=32)
    assert plan_job(spec, gpt_layers(), slots(4), max_stages=2).stages == 2
    # one layer holds all the work: more stages cannot help
    heavy = [LayerCost(1e-2, 2e-2, 1000, 100, 100)] + [LayerCost(0.0, 0.0, 10, 10, 100)] * 3
    spec4 = make_spec(stages=2, microbatches=4, batch_size=8)  # 4 layers
    assert plan_job(spec4, heavy, slots(4)).stages == 1


def test_microbatches_are_divisors_of_the_batch(make_spec):
    spec = make_spec(model=GPT, schedule="1f1b", stages=2, microbatches=4, batch_size=24)
    jp = plan_job(spec, gpt_layers(), slots(4), stages=3)
    assert jp.stages == 3 and 24 % jp.microbatches == 0 and 3 <= jp.microbatches <= 12
    assert microbatch_candidates(24, 3) == [3, 4, 6, 8, 12]
    assert microbatch_candidates(2, 4) == [1, 2]  # none >= S: all divisors within 4S


def test_microbatch_size_scales_the_costs(make_spec):
    # layers measured at microbatch 8 (32 / 4); with 8 microbatches each one costs half as much
    spec = make_spec(model=GPT, schedule="1f1b", stages=1, microbatches=4, batch_size=32)
    four = plan_job(spec, gpt_layers(), slots(1), stages=1, microbatches=4)
    eight = plan_job(spec, gpt_layers(), slots(1), stages=1, microbatches=8)
    assert eight.plan.stages[0].compute_s == pytest.approx(four.plan.stages[0].compute_s / 2)
    assert eight.predicted_step_s == pytest.approx(four.predicted_step_s, rel=1e-6)


def test_a_layer_too_big_for_every_budget(make_spec):
    spec = make_spec(model=GPT, schedule="pipedream", stages=2, microbatches=4, batch_size=32)
    layers = gpt_layers()
    layers[-1] = LayerCost(1e-3, 2e-3, 10 * 2**20, 1000, 1000)
    with pytest.raises(InfeasibleError, match="layer 9"):
        plan_job(spec, layers, slots(4, budget=2**20))
    with pytest.raises(InfeasibleError, match="layer 9"):
        plan_job(spec, layers, slots(4, budget=2**20), stages=2, microbatches=4)
    with pytest.raises(InfeasibleError, match="slots"):
        plan_job(spec, layers, slots(2), stages=4)


def test_memory_limits_the_stage_count(make_spec):
    # 8 blocks of 1 MiB params under adam (x4 at least): one slot cannot hold them all
    spec = make_spec(model=GPT, schedule="1f1b", stages=2, microbatches=4, batch_size=32)
    layers = [LayerCost(1e-5, 2e-5, 2**20, 1000, 1000)] * 10
    jp = plan_job(spec, layers, slots(4, budget=20 * 2**20))
    assert jp.stages >= 3
    assert all(sp.memory_bytes <= 20 * 2**20 for sp in jp.plan.stages)
    assert jp.stage_budgets == (20 * 2**20,) * jp.stages


def test_to_dict_and_render(make_spec):
    spec = make_spec(model=GPT, schedule="2bw", stages=2, microbatches=4, batch_size=32)
    jp = plan_job(spec, gpt_layers(), slots(4, budget=2**30))
    data = json.loads(json.dumps(jp.to_dict()))
    assert data["stages"] == jp.stages == len(data["partition"]) == len(data["stage_plans"])
    assert data["partition"][0][0] == 0 and data["partition"][-1][1] == 10
    assert data["predicted_samples_per_s"] > 0 and data["stage_plans"][0]["budget_bytes"] == 2**30
    text = render_plan(jp, spec, NAMES)
    assert "embed" in text and "head" in text and "samples/s" in text and "reason:" in text
    # every field is the plan's, through JSON
    assert (data["schedule"], data["chunks"], data["waves"]) == ("2bw", None, None)
    assert data["microbatches"] == jp.microbatches and data["reason"] == jp.reason
    assert data["partition"] == [list(b) for b in jp.plan.partition]
    assert data["placement_reason"] == jp.plan.reason and data["bottleneck_s"] == jp.plan.bottleneck_s
    for i, (row, sp) in enumerate(zip(data["stage_plans"], jp.plan.stages, strict=True)):
        assert row == {"stage": i, "layers": list(sp.layers), "node_id": sp.node_id,
                       "compute_s": sp.compute_s, "send_s": sp.send_s, "memory_bytes": sp.memory_bytes,
                       "limited_by": sp.limited_by, "worker": i, "busy_s": jp.predicted_stage_busy_s[i],
                       "budget_bytes": 2**30}
    # a header, a column row, a row per stage naming its layers and node, the figures, the reason
    lines = text.splitlines()
    assert lines[0] == f"plan for {spec.name}: 2bw, {jp.stages} stages, {jp.microbatches} microbatches " \
                       f"of {32 // jp.microbatches}"
    assert len(lines) == 2 + jp.stages + 2 and lines[-1] == f"reason: {jp.reason}"
    for sp, line in zip(jp.plan.stages, lines[2:-2], strict=True):
        a, b = sp.layers
        names = NAMES[a] if b - a == 1 else f"{NAMES[a]}..{NAMES[b - 1]}"
        assert line.split()[:3] == [str(sp.stage), names, sp.node_id] and line.endswith(sp.limited_by)


# ----------------------------------------------------------------------------- CLI






def test_cli_plan_bad_spec(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {kind: gpt}\nstages: 0\n")
    proc = pipewave("plan", str(bad), home=tmp_path)
    assert proc.returncode == 2 and "invalid job spec" in proc.stderr and "Traceback" not in proc.stderr
