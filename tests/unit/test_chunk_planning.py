"""Planning schedules with several chunks per stage (pure: no Ray, no torch): the chunk
partitioner, the planner's chunk-aware predictions, schedule / waves / chunks "auto", and the
spec's rules for them."""

from __future__ import annotations

import pytest

from pipewave.service.planning.chunk_partition import plan_chunked
from pipewave.service.planning.partition import InfeasibleError, LayerCost, Link, Slot, worker_layout
from pipewave.service.planning.planner import (
    AUTO_SCHEDULES,
    UPDATE_S_PER_PARAM_BYTE,
    plan_job,
    render_plan,
    schedule_variants,
)
from pipewave.service.schedules import Costs, make_schedule, simulate
from pipewave.service.spec import JobSpec, SpecError, parse_spec
from pipewave.workers.placement import looped, waves

GPT = {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 7, "n_heads": 2, "seq_len": 16}
FAST = Link(1e12, 0.0)


def block(t: float = 1e-3) -> LayerCost:
    return LayerCost(t, 2 * t, 50_000, 10_000, 1_000)


def slots(n: int, budget: int | None = None) -> list[Slot]:
    return [Slot(f"node{i}", 1.0, budget) for i in range(n)]


def spec_of(**kw) -> JobSpec:
    data = {"name": "t", "model": GPT, "data": {"kind": "synthetic"}, "batch_size": 16,
            "optimizer": {"kind": "adam", "lr": 1e-3}, **kw}
    return JobSpec.model_validate(data)


# ----------------------------------------------------------------------------- the partitioner


def test_equal_layers_cut_into_equal_chunks() -> None:
    layers = [block()] * 8
    pl = plan_chunked(layers, slots(2), "hanayo", 4, waves(2, 1), link=FAST, waves=1)
    assert pl.partition == ((0, 2), (2, 4), (4, 6), (6, 8))
    # the wave: worker 0 holds chunks 0 and 3, worker 1 chunks 1 and 2
    assert worker_layout(pl.partition, pl.placement) == (((0, 2), (6, 8)), ((2, 4), (4, 6)))
    assert pl.worker_nodes == ["node0", "node1"]
    assert [pl.worker_of(i) for i in range(4)] == [0, 1, 1, 0]


def test_chunks_balance_uneven_layers() -> None:
    """A heavy last layer: the cut gives it a chunk of its own and spreads the rest."""
    layers = [block()] * 7 + [block(3e-3)]
    pl = plan_chunked(layers, slots(2), "interleaved-1f1b", 4, looped(2, 2), link=FAST, chunks=2)
    assert pl.partition[-1] == (7, 8)
    times = [sp.compute_s for sp in pl.stages]
    assert max(times) == pytest.approx(9e-3)  # the head alone; no cut does better
    assert pl.bottleneck_s == pytest.approx(9e-3)


def test_the_turn_of_a_wave_sends_nothing() -> None:
    """Chunks 1 and 2 of a 2-worker wave sit on worker 1: the cut between them costs no send."""
    layers = [block()] * 8
    link = Link(1e9, 1e-3)
    pl = plan_chunked(layers, slots(2), "hanayo", 4, waves(2, 1), link=link, waves=1)
    sends = [sp.send_s for sp in pl.stages]
    hop = 1e-3 + 1_000 / 1e9
    # chunk 0 sends forward only; chunk 1 receives from 0 (sends its gradient back) and hands
    # on to chunk 2 in memory; chunk 2 sends to chunk 3; chunk 3 sends its gradient to chunk 2
    assert sends == pytest.approx([hop, hop, hop, hop])
    pl1 = plan_chunked(layers, slots(2), "interleaved-1f1b", 4, looped(2, 2), link=link, chunks=2)
    assert [sp.send_s for sp in pl1.stages] == pytest.approx([hop, 2 * hop, 2 * hop, hop])


def test_memory_budgets_bind_per_chunk() -> None:
    layers = [block()] * 8
    with pytest.raises(InfeasibleError, match="no cut of 8 layers into 4 chunks"):
        plan_chunked(layers, slots(2, budget=10_000), "hanayo", 4, waves(2, 1), waves=1)
    with pytest.raises(InfeasibleError, match="needs 8 chunks"):
        plan_chunked(layers[:6], slots(4), "hanayo", 4, waves(4, 1), waves=1)
    with pytest.raises(InfeasibleError, match="need 3 slots"):
        plan_chunked(layers, slots(2), "hanayo", 4, waves(3, 1), waves=1)


# ----------------------------------------------------------------------------- the planner


def test_planner_predicts_per_worker_for_chunked_schedules() -> None:
    spec = spec_of(schedule="hanayo", waves=2, stages=2, microbatches=4)
    layers = [block()] * 16
    jp = plan_job(spec, layers, slots(2), stages=2, microbatches=4, link=FAST)
    assert (jp.schedule, jp.waves, jp.chunks) == ("hanayo", 2, None)
    assert len(jp.plan.stages) == 8 and jp.plan.num_workers == 2
    assert len(jp.predicted_stage_busy_s) == 2 and len(jp.stage_budgets) == 2
    # equal chunks of 2 layers: the predicted step is the simulated makespan of the schedule with
    # those chunk costs and one update per worker over its 8 layers' parameters
    assert jp.plan.partition == tuple((2 * i, 2 * i + 2) for i in range(8))
    sched = make_schedule("hanayo", 2, 4, 1, waves=2)
    update = UPDATE_S_PER_PARAM_BYTE["adam"] * 8 * 50_000
    want = simulate(sched, Costs((2e-3,) * 8, (4e-3,) * 8, (update, update), 0.0))
    assert jp.predicted_step_s == pytest.approx(want.makespan)
    assert jp.predicted_stage_busy_s == pytest.approx(want.busy)
    d = jp.to_dict()
    assert d["schedule"] == "hanayo" and d["waves"] == 2
    assert [row["worker"] for row in d["stage_plans"]] == [0, 1, 1, 0, 0, 1, 1, 0]
    text = render_plan(jp, spec, [f"l{i}" for i in range(16)])
    assert "hanayo (2 waves)" in text and "chunk/stage" in text and "\n  7/0 " in text


def test_interleaved_needs_microbatches_a_multiple_of_stages() -> None:
    spec = spec_of(schedule="interleaved-1f1b", stages="auto", microbatches="auto")
    jp = plan_job(spec, [block()] * 16, slots(3), link=FAST)
    assert jp.microbatches % jp.stages == 0
    with pytest.raises(InfeasibleError, match="multiple of stages"):
        plan_job(spec, [block()] * 16, slots(3), stages=3, microbatches=4, link=FAST)


def test_schedule_auto_weighs_the_synchronous_schedules_only() -> None:
    names = {(v.schedule, v.chunks, v.waves) for v in schedule_variants(spec_of(schedule="auto"))}
    assert {n for n, _, _ in names} == set(AUTO_SCHEDULES)
    assert not {"pipedream", "2bw"} & {n for n, _, _ in names}
    assert ("hanayo", None, 3) in names and ("interleaved-1f1b", 4, None) in names
    only_waves = schedule_variants(spec_of(schedule="hanayo", waves="auto"))
    assert [v.waves for v in only_waves] == [1, 2, 3, 4]


def test_schedule_auto_picks_a_wave_when_it_predicts_more_throughput() -> None:
    """Free transfers, few microbatches per stage: the chunked schedules' smaller bubble wins."""
    spec = spec_of(schedule="auto", stages=4, microbatches=4)
    jp = plan_job(spec, [block()] * 16, slots(4), stages=4, microbatches=4, link=FAST)
    assert jp.schedule in ("hanayo", "interleaved-1f1b")
    one = plan_job(spec_of(schedule="1f1b", stages=4, microbatches=4), [block()] * 16, slots(4),
                   stages=4, microbatches=4, link=FAST)
    assert jp.predicted_samples_per_s > one.predicted_samples_per_s * 1.1
    assert "predicts" in jp.reason and "the best other schedule" in jp.reason


def test_schedule_auto_keeps_one_chunk_per_stage_when_transfers_dominate() -> None:
    """Slow transfers: every extra chunk crossing costs more than the bubble it saves."""
    spec = spec_of(schedule="auto", stages=2, microbatches=8)
    jp = plan_job(spec, [block()] * 16, slots(2), stages=2, microbatches=8, link=Link(1e9, 5e-3))
    assert jp.schedule in ("1f1b", "gpipe") and jp.plan.placement is None


def test_schedule_auto_respects_memory() -> None:
    """A budget that only a one-chunk schedule's cut fits keeps the chunked ones out."""
    layers = [block()] * 4
    spec = spec_of(schedule="auto", stages=2, microbatches=4)
    jp = plan_job(spec, layers, slots(2), stages=2, microbatches=4, link=FAST)
    assert jp.schedule in AUTO_SCHEDULES
    with pytest.raises(InfeasibleError):
        plan_job(spec, layers, slots(2, budget=1_000), stages=2, microbatches=4, link=FAST)


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(("fields", "message"), [
    ({"schedule": "hanayo", "chunks": 2}, "chunks applies only to schedule 'interleaved-1f1b'"),
    ({"schedule": "1f1b", "waves": 2}, "waves applies only to schedule 'hanayo'"),
    ({"schedule": "hanayo", "waves": 3, "stages": 3, "microbatches": 4},
     "hanayo with 3 stages cuts the model into 18 chunks (6 per stage), more than its 16 layers"),
    ({"schedule": "interleaved-1f1b", "stages": 3, "microbatches": 4},
     "interleaved-1f1b needs microbatches (4) to be a multiple of stages (3)"),
    ({"schedule": "auto", "partition": "uniform", "stages": 2, "microbatches": 4},
     "partition 'uniform' needs the schedule"),
    ({"schedule": "hanayo", "waves": 9}, "waves"),
    ({"schedule": "hanayo", "waves": 0}, "waves"),
    ({"schedule": "wave"}, "schedule"),
])
def test_bad_chunk_fields_are_one_line_errors(fields, message) -> None:
    data = {"name": "t", "model": GPT, "data": {"kind": "synthetic"}, "batch_size": 16, **fields}
    with pytest.raises(SpecError, match="invalid job spec") as err:
        parse_spec(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resolve_fills_the_planned_schedule() -> None:
    spec = spec_of(schedule="auto")
    assert not spec.is_resolved
    with pytest.raises(ValueError, match="not resolved"):
        spec.chunks_per_stage  # noqa: B018
    done = spec.resolve(2, 4, schedule="hanayo", waves=2)
    assert done.is_resolved and done.schedule == "hanayo" and done.chunks_per_stage == 4
    assert done.placement().workers == ((0, 3, 4, 7), (1, 2, 5, 6))
    assert spec_of(schedule="interleaved-1f1b", stages=2, microbatches=4).placement().workers == \
        ((0, 2), (1, 3))
