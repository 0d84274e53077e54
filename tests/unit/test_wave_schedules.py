"""Schedules with several chunks (virtual stages) per stage: interleaved-1f1b and hanayo (pure Python).

Costs: with ``Costs(forward=V * f, backward=V * b)`` a stage holding V chunks spends f per chunk
forward and b per chunk backward, integers, so makespans are exact in floating point. The derived
makespans (docs/schedules.md), with equal chunks, no transfer cost, P stages, M microbatches:

    interleaved-1f1b (V chunks, P | M):   (V M + P - 1) (f + b)
    hanayo (W waves, V = 2W, M >= P):     V M (f + b) + 2 (P - 1) max(f, b)
    1f1b (one chunk of cost V f, V b):    (M + P - 1) V (f + b)
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipewave.service.schedules import (
    ALL_SCHEDULE_NAMES,
    CHUNKED_SCHEDULE_NAMES,
    SCHEDULE_NAMES,
    Action,
    Costs,
    Kind,
    Schedule,
    ScheduleError,
    make_schedule,
    simulate,
    validate,
)
from pipewave.service.schedules import hanayo as hanayo_module
from pipewave.service.schedules.report import describe, render_report
from pipewave.service.schedules.schedule import place
from pipewave.service.spec import JobSpec
from pipewave.workers.placement import Placement, looped, single, waves

WAVES = range(1, 5)
CHUNKS = range(2, 5)


def spec_with(schedule: str) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "data": {"kind": "synthetic"}, "schedule": schedule,
                                   "stages": 2, "microbatches": 4, "batch_size": 8,
                                   "model": {"kind": "gpt", "vocab_size": 256, "d_model": 16,
                                             "n_layers": 2, "n_heads": 2, "seq_len": 8}})


def hanayo_makespan(P: int, M: int, W: int, f: float, b: float) -> float:
    return 2 * W * M * (f + b) + 2 * (P - 1) * max(f, b)


def interleaved_makespan(P: int, M: int, V: int, f: float, b: float) -> float:
    return (V * M + P - 1) * (f + b)


def rows(schedule: Schedule) -> list[str]:
    return [" ".join(map(schedule.label, schedule.stage_actions(s))) for s in range(schedule.num_stages)]


# 1. the IR stays backward compatible ------------------------------------------------------------


def test_action_chunk_is_optional_and_shown_only_when_set() -> None:
    a = Action(1, Kind.F, 0)
    assert a.chunk == 0 and str(a) == "1F0" and a.key == (1, Kind.F, 0, 0)
    assert str(Action(0, Kind.B, 7, 0, True, 1)) == "0B7c1+"
    assert Action(0, Kind.B, 7, 0, True).label(show_chunk=True) == "0B7c0+"
    for text in ("1F0", "0B7+", "1F0c1", "0B7c2+", "3F12c0"):
        parsed = Action.parse(text)
        assert parsed.label(show_chunk="c" in text) == text
    assert Action.parse("0B7c2+") == Action(0, Kind.B, 7, 0, True, 2)
    with pytest.raises(ValueError, match="not an action"):
        Action.parse("0F1c")


def test_single_chunk_dependencies_unchanged() -> None:
    assert Action(0, Kind.F, 3).dependencies(3) == []
    assert Action(1, Kind.F, 3).dependencies(3) == [(0, Kind.F, 3, 0)]
    assert Action(1, Kind.B, 3).dependencies(3) == [(1, Kind.F, 3, 0), (2, Kind.B, 3, 0)]
    assert Action(2, Kind.B, 3).dependencies(3) == [(2, Kind.F, 3, 0)]
    # the single placement is the same thing
    for s in range(3):
        for kind in Kind:
            a = Action(s, kind, 5)
            assert a.dependencies(3, single(3)) == a.dependencies(3)


def test_dependencies_follow_the_virtual_stages() -> None:
    wave = waves(2, 1)  # stage 0: virtual 0, 3; stage 1: virtual 1, 2
    assert Action(1, Kind.F, 4, chunk=1).dependencies(2, wave) == [(1, Kind.F, 4, 0)]  # the turn
    assert Action(0, Kind.F, 4, chunk=1).dependencies(2, wave) == [(1, Kind.F, 4, 1)]
    assert Action(0, Kind.B, 4, chunk=1).dependencies(2, wave) == [(0, Kind.F, 4, 1)]  # the loss
    assert Action(1, Kind.B, 4, chunk=1).dependencies(2, wave) == [
        (1, Kind.F, 4, 1),
        (0, Kind.B, 4, 1),
    ]
    assert Action(1, Kind.B, 4, chunk=0).dependencies(2, wave) == [
        (1, Kind.F, 4, 0),
        (1, Kind.B, 4, 1),
    ]
    loop = looped(2, 2)  # stage 0: virtual 0, 2; stage 1: virtual 1, 3
    assert Action(0, Kind.F, 0, chunk=1).dependencies(2, loop) == [(1, Kind.F, 0, 0)]
    assert Action(1, Kind.B, 0, chunk=0).dependencies(2, loop) == [
        (1, Kind.F, 0, 0),
        (0, Kind.B, 0, 1),
    ]


def test_placements() -> None:
    assert looped(3, 2).workers == ((0, 3), (1, 4), (2, 5))
    assert waves(3, 1).workers == ((0, 5), (1, 4), (2, 3))
    assert waves(2, 2).workers == ((0, 3, 4, 7), (1, 2, 5, 6))
    for P in range(2, 9):
        for W in WAVES:
            wave = waves(P, W)
            assert wave.num_virtual_stages == 2 * W * P and wave.chunks_per_worker == 2 * W
            for k in range(W):
                # the turn (P-1 -> P) and the change of wave (2P-1 -> 2P) stay on one stage
                assert wave.locate(2 * k * P + P - 1)[0] == wave.locate(2 * k * P + P)[0] == P - 1
                if k + 1 < W:
                    assert wave.locate(2 * k * P + 2 * P - 1)[0] == wave.locate(2 * (k + 1) * P)[0] == 0
            for v in range(wave.num_virtual_stages):
                assert wave.virtual(*wave.locate(v)) == v
    with pytest.raises(ValueError, match="exactly one worker"):
        Placement(((0, 1), (1, 2)))
    with pytest.raises(ValueError, match="increasing"):
        Placement(((3, 0), (1, 2)))
    with pytest.raises(ValueError, match="every worker must hold"):
        Placement(((0, 1, 2), (3,)))


# 2. every generator validates, no deadlock ------------------------------------------------------


@pytest.mark.parametrize("P", range(2, 9))
def test_hanayo_validates(P: int) -> None:
    for W in WAVES:
        for M in range(P, 4 * P + 1):
            schedule = make_schedule("hanayo", P, M, waves=W)
            validate(schedule)
            assert schedule.chunks_per_stage == 2 * W and schedule.placement == waves(P, W)
            assert {len(row) for row in schedule.grid.values()} == {len(schedule.grid[0])}
            simulate(schedule)  # raises on deadlock
            simulate(schedule, Costs(forward=1.0, backward=2.0, update=0.5, comm=0.25))


@pytest.mark.parametrize("P", range(2, 9))
def test_interleaved_validates(P: int) -> None:
    for V in CHUNKS:
        for M in range(P, 4 * P + 1, P):
            schedule = make_schedule("interleaved-1f1b", P, M, chunks=V)
            validate(schedule)
            assert schedule.chunks_per_stage == V and schedule.placement == looped(P, V)
            simulate(schedule)
            simulate(schedule, Costs(forward=1.0, backward=2.0, update=0.5, comm=0.25))


def test_edge_sizes_validate() -> None:
    """Fewer microbatches than stages (hanayo), one stage, one chunk, several steps."""
    for P in range(1, 7):
        for M in range(1, P + 1):
            for W in (1, 2):
                make_schedule("hanayo", P, M, waves=W)
        make_schedule("interleaved-1f1b", P, P, chunks=1)
        make_schedule("interleaved-1f1b", P, 2 * P, chunks=3)


@pytest.mark.parametrize(("name", "chunks", "waves_"), [("hanayo", None, 2), ("interleaved-1f1b", 3, None)])
def test_several_steps_flush_between_steps(name: str, chunks: int | None, waves_: int | None) -> None:
    for P in (2, 3, 4):
        one = make_schedule(name, P, 2 * P, chunks=chunks, waves=waves_)
        three = make_schedule(name, P, 2 * P, 3, chunks=chunks, waves=waves_)
        validate(three)
        assert simulate(three).makespan == pytest.approx(3 * simulate(one).makespan, abs=1e-9)
        for s in range(P):
            actions = three.stage_actions(s)
            assert [a.version for a in actions] == [a.microbatch // (2 * P) for a in actions]
            updates = [a for a in actions if a.update]
            assert [a.microbatch // (2 * P) for a in updates] == [0, 1, 2]
            assert all(a.chunk == 0 for a in updates)  # the last backward is the earliest chunk's


def test_every_chunk_runs_every_microbatch_once() -> None:
    schedule = make_schedule("hanayo", 3, 5, waves=2)
    for s in range(3):
        keys = sorted((a.chunk, a.kind.value, a.microbatch) for a in schedule.stage_actions(s))
        assert keys == sorted((c, k, m) for c in range(4) for k in "FB" for m in range(5))


# 3. golden grids --------------------------------------------------------------------------------


def test_golden_interleaved_2x2() -> None:
    assert make_schedule("interleaved-1f1b", 2, 2).render() == (
        "stage 0 | 0F0c0  0F1c0  0F0c1  0F1c1  .      0B0c1  .      0B1c1  0B0c0  0B1c0+\n"
        "stage 1 | .      1F0c0  1F1c0  1F0c1  1B0c1  1F1c1  1B1c1  1B0c0  1B1c0+ ."
    )


def test_golden_interleaved_2x4() -> None:
    # groups of P microbatches chunk by chunk; stage 0 warms up with (V-1)P + 2(P-1) + 1 = 5
    assert rows(make_schedule("interleaved-1f1b", 2, 4)) == [
        "0F0c0 0F1c0 0F0c1 0F1c1 0F2c0 0B0c1 0F3c0 0B1c1 0F2c1 0B0c0 0F3c1 0B1c0 0B2c1 0B3c1 0B2c0"
        " 0B3c0+",
        "1F0c0 1F1c0 1F0c1 1B0c1 1F1c1 1B1c1 1F2c0 1B0c0 1F3c0 1B1c0 1F2c1 1B2c1 1F3c1 1B3c1 1B2c0"
        " 1B3c0+",
    ]


def test_golden_hanayo_2x2() -> None:
    # stage 0 holds virtual stages 0 and 3 (first and last), stage 1 holds 1 and 2 (the turn)
    assert make_schedule("hanayo", 2, 2).render() == (
        "stage 0 | 0F0c0  0F1c0  .      0F0c1  0B0c1  0F1c1  0B1c1  0B0c0  .      0B1c0+\n"
        "stage 1 | .      1F0c0  1F0c1  1F1c0  1F1c1  1B0c1  1B0c0  1B1c1  1B1c0+ ."
    )


def test_golden_hanayo_3x4() -> None:
    # M = P + 1: one group of 4; the turn stage 2 runs both chunks of a microbatch back to back
    assert make_schedule("hanayo", 3, 4).render() == (
        "stage 0 | 0F0c0  0F1c0  0F2c0  .      .      0F0c1  0F3c0  0B0c1  0F1c1  0B1c1  0F2c1  0B2c1"
        "  0F3c1  0B0c0  0B3c1  0B1c0  .      0B2c0  .      0B3c0+\n"
        "stage 1 | .      1F0c0  1F1c0  .      1F0c1  1F2c0  1F1c1  1F3c0  1B0c1  1F2c1  1B1c1  1F3c1"
        "  1B0c0  1B2c1  1B1c0  1B3c1  1B2c0  .      1B3c0+ .\n"
        "stage 2 | .      .      2F0c0  2F0c1  2F1c0  2F1c1  2F2c0  2F2c1  2F3c0  2B0c1  2F3c1  2B0c0"
        "  2B1c1  2B1c0  2B2c1  2B2c0  2B3c1  2B3c0+ .      ."
    )


def test_golden_hanayo_2x2_two_waves() -> None:
    # stage 0: virtual stages 0, 3, 4, 7; stage 1: 1, 2, 5, 6
    assert make_schedule("hanayo", 2, 2, waves=2).render() == (
        "stage 0 | 0F0c0  0F1c0  .      0F0c1  0F0c2  0F1c1  0F1c2  0F0c3  0B0c3  0F1c3  0B1c3  0B0c2"
        "  0B0c1  0B1c2  0B1c1  0B0c0  .      0B1c0+\n"
        "stage 1 | .      1F0c0  1F0c1  1F1c0  1F1c1  1F0c2  1F0c3  1F1c2  1F1c3  1B0c3  1B0c2  1B1c3"
        "  1B1c2  1B0c1  1B0c0  1B1c1  1B1c0+ ."
    )


# 4. bubbles: the derived formulas, below 1f1b ---------------------------------------------------


@pytest.mark.parametrize("P", range(2, 9))
def test_hanayo_bubble_formula(P: int) -> None:
    for W in WAVES:
        V = 2 * W
        for M in range(P, 4 * P + 1):
            schedule = make_schedule("hanayo", P, M, waves=W)
            one_f_one_b = simulate(make_schedule("1f1b", P, M), Costs(forward=V, backward=V))
            for f, b in ((1, 1), (1, 2), (2, 1), (1, 3)):
                result = simulate(schedule, Costs(forward=V * f, backward=V * b))
                assert result.makespan == hanayo_makespan(P, M, W, f, b), (P, W, M, f, b)
                assert result.busy == (V * M * (f + b),) * P
            # equal forward and backward: every stage idles (P - 1)/(VM + P - 1) of the time
            result = simulate(schedule, Costs(forward=V, backward=V))
            expected = (P - 1) / (V * M + P - 1)
            assert result.bubble == pytest.approx((expected,) * P, abs=1e-12)
            assert result.bubble_mean < one_f_one_b.bubble_mean == pytest.approx((P - 1) / (M + P - 1))
            # the default unit costs (1 per stage, 1/V per chunk) give the same fractions
            assert simulate(schedule).bubble_mean == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("P", range(2, 9))
def test_interleaved_bubble_formula(P: int) -> None:
    for V in CHUNKS:
        for M in range(P, 4 * P + 1, P):
            schedule = make_schedule("interleaved-1f1b", P, M, chunks=V)
            one_f_one_b = simulate(make_schedule("1f1b", P, M), Costs(forward=V, backward=V))
            for f, b in ((1, 1), (1, 2), (2, 1), (1, 3)):
                result = simulate(schedule, Costs(forward=V * f, backward=V * b))
                assert result.makespan == interleaved_makespan(P, M, V, f, b), (P, V, M, f, b)
            result = simulate(schedule, Costs(forward=V, backward=V))
            assert result.bubble_mean == pytest.approx((P - 1) / (V * M + P - 1), abs=1e-12)
            assert result.bubble_mean < one_f_one_b.bubble_mean


def test_hanayo_below_1f1b_with_fewer_microbatches_than_stages() -> None:
    for P in range(3, 9):
        for W in (1, 2):
            for M in range(2, P):
                V = 2 * W
                result = simulate(make_schedule("hanayo", P, M, waves=W), Costs(forward=V, backward=V))
                assert result.makespan == (V * M + P - 1 + (V - 1) * (P - M)) * 2
                assert result.bubble_mean < (P - 1) / (M + P - 1)


def test_turns_need_no_transfer() -> None:
    """One microbatch, 2 stages, 2 chunks each: hanayo crosses stages 4 times, interleaved 6."""
    costs = Costs(forward=2.0, backward=2.0, comm=0.5)  # 1 per chunk
    assert simulate(make_schedule("hanayo", 2, 1), costs).makespan == 8 + 4 * 0.5
    one = make_schedule("interleaved-1f1b", 1, 1, chunks=2)  # one stage: no transfer at all
    assert simulate(one, Costs(comm=0.5)).makespan == 2.0
    loop_orders = {
        0: [Action(0, Kind.F, 0), Action(0, Kind.F, 0, chunk=1), Action(0, Kind.B, 0, chunk=1),
            Action(0, Kind.B, 0, 0, True)],
        1: [Action(1, Kind.F, 0), Action(1, Kind.F, 0, chunk=1), Action(1, Kind.B, 0, chunk=1),
            Action(1, Kind.B, 0, 0, True)],
    }
    loop = place("x", 2, 1, 1, loop_orders, placement=looped(2, 2))
    assert simulate(loop, costs).makespan == 8 + 6 * 0.5


# 5. memory --------------------------------------------------------------------------------------


def test_peak_activations() -> None:
    for P in range(2, 7):
        for W in (1, 2, 3):
            for M in (P, 2 * P, 2 * P + 1, 3 * P):
                result = simulate(make_schedule("hanayo", P, M, waves=W))
                warmups = tuple(hanayo_module.warmup(P, M, W, s) for s in range(P))
                assert result.peak_activations == warmups
                assert result.peak_activation_memory == tuple(w / (2 * W) for w in warmups)
                if M % P == 0 and M >= 2 * P:  # 2WP + s chunks: P + s/2W of a whole stage's
                    assert result.peak_activation_memory == tuple(P + s / (2 * W) for s in range(P))
        for V in CHUNKS:
            result = simulate(make_schedule("interleaved-1f1b", P, 2 * P, chunks=V))
            assert result.peak_activations == tuple((V - 1) * P + 2 * (P - 1 - s) + 1 for s in range(P))
    # one chunk per stage: the memory figure is the count
    result = simulate(make_schedule("1f1b", 4, 8))
    assert result.peak_activation_memory == tuple(float(p) for p in result.peak_activations)


def test_costs_per_virtual_stage() -> None:
    schedule = make_schedule("hanayo", 2, 2)  # virtual stages: stage 0 holds 0, 3; stage 1 holds 1, 2
    even = simulate(schedule, Costs(forward=2.0, backward=2.0))
    per_virtual = simulate(schedule, Costs(forward=(1.0, 1.0, 1.0, 1.0), backward=(1.0, 1.0, 1.0, 1.0)))
    assert per_virtual.makespan == even.makespan
    heavy_last = simulate(schedule, Costs(forward=(1.0, 1.0, 1.0, 3.0), backward=1.0))
    assert heavy_last.busy == (2 * (1 + 3) + 2, 2 * (1 + 1) + 2)  # backward 1 per stage = 0.5 per chunk
    with pytest.raises(ValueError, match="need 2 values \\(or 4, one per virtual stage\\), got 3"):
        simulate(schedule, Costs(forward=(1.0, 1.0, 1.0)))


# 6. validator: chunks, versions, dependencies ---------------------------------------------------


def chunked(
    rows_: list[str], name: str = "hanayo", m: int = 1, placement: Placement | None = None
) -> Schedule:
    """A one-step schedule from rows like ``"0F0c0 . 0B0c0+"``; a suffix ``v1`` sets a version."""
    cells: dict[int, list[Action | None]] = {}
    for s, row in enumerate(rows_):
        cells[s] = []
        for text in row.split():
            action, _, version = text.partition("v")
            cells[s].append(None if text == "." else Action.parse(action, int(version or 0)))
    return Schedule(name, len(rows_), m, 1, cells, placement=placement or waves(len(rows_), 1))


GOOD = ["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ ."]


def test_hand_made_wave_is_valid() -> None:
    validate(chunked(GOOD))


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ 1F0c2"], "chunk out of range"),
        (["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c1+ ."], "lacks 1B0c0"),
        (["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c0 1B0c1+ ."], "does not follow"),
        (["0F0c0 . 0F0c1 . 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ ."], "does not follow"),
        (["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1B0c1 1F0c1 . . 1B0c0+ ."], "before its forward"),
        (["0F0c0 . . 0F0c1 0B0c1+ . . 0B0c0", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ ."], "follows its last"),
        (["0F0c0 . . 0F0c1 0B0c1+ . . 0B0c0+v1", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ ."], "forward used 0"),
        (["0F0c0 . . 0F0c1 0B0c1 . . 0B0c0+", ". 1F0c0 1F0c1 . . 1B0c1 1B0c0+ 1F0c0"], "appears twice"),
    ],
)
def test_validator_rejects_chunked(grid: list[str], message: str) -> None:
    schedule = chunked(grid)
    with pytest.raises(ScheduleError, match=message) as err:
        validate(schedule)
    assert schedule.render() in str(err.value)


def test_validator_backward_uses_its_own_chunks_forward_version() -> None:
    # microbatch 1: chunk 0's forward before the update (version 0), chunk 1's after (version 1);
    # each backward must use its own chunk's version
    rows_ = ["0F0c0 0F1c0 0F0c1 0B0c1 0B0c0+ 0F1c1v1 0B1c1v1 0B1c0v1"]
    schedule = chunked(rows_, "custom", 2, Placement(((0, 1),)))
    with pytest.raises(ScheduleError, match="0B1c0 uses version 1, its forward used 0"):
        validate(schedule)
    rows_[0] = rows_[0].replace("0B1c0v1", "0B1c0v0")
    validate(chunked(rows_, "custom", 2, Placement(((0, 1),))))


def test_validator_rejects_a_placement_of_other_size() -> None:
    schedule = Schedule("hanayo", 2, 1, 1, chunked(GOOD).grid, placement=waves(3, 1))
    with pytest.raises(ScheduleError, match="placement has 3 workers"):
        validate(schedule)


def test_place_reports_chunked_deadlock() -> None:
    # stage 1 wants the turn's chunk 1 before chunk 0 of the same microbatch
    orders = {
        0: [Action(0, Kind.F, 0), Action(0, Kind.F, 0, chunk=1), Action(0, Kind.B, 0, chunk=1),
            Action(0, Kind.B, 0, 0, True)],
        1: [Action(1, Kind.F, 0, chunk=1), Action(1, Kind.F, 0), Action(1, Kind.B, 0, chunk=1),
            Action(1, Kind.B, 0, 0, True)],
    }
    with pytest.raises(ScheduleError, match="deadlock at slot 1: stage 0 waits at 0F0c1, stage 1 waits"
                       " at 1F0c1") as err:
        place("hanayo", 2, 1, 1, orders, placement=waves(2, 1))
    assert err.value.grid == "stage 0 | 0F0c0\nstage 1 | ."


# 7. registry, reports ---------------------------------------------------------------------------


def test_registry_names() -> None:
    """Each name builds its own schedule, one chunk per stage or several as its list says; the
    job spec takes every name and no other; make_schedule refuses another, listing them all."""
    for name in ALL_SCHEDULE_NAMES:
        schedule = make_schedule(name, 2, 4)
        chunks = {a.chunk for s in range(2) for a in schedule.stage_actions(s)}
        assert schedule.name == name
        if name in CHUNKED_SCHEDULE_NAMES:
            assert schedule.placement is not None and schedule.chunks_per_stage == 2 == len(chunks)
        else:
            assert name in SCHEDULE_NAMES and schedule.placement is None and chunks == {0}
        assert spec_with(name).schedule == name
    with pytest.raises(ValidationError) as err:
        spec_with("zero-bubble")
    assert [e["loc"] for e in err.value.errors()] == [("schedule",)]
    with pytest.raises(ValueError, match="unknown schedule 'zero-bubble'; choose one of "
                       + ", ".join(ALL_SCHEDULE_NAMES) + "$"):
        make_schedule("zero-bubble", 2, 4)


def test_make_schedule_chunk_arguments() -> None:
    assert make_schedule("hanayo", 2, 2).chunks_per_stage == 2  # one wave by default
    assert make_schedule("interleaved-1f1b", 2, 2).chunks_per_stage == 2  # two chunks by default
    assert make_schedule("hanayo", 2, 2, waves=3).chunks_per_stage == 6
    with pytest.raises(ValueError, match="multiple of the stages \\(6 microbatches, 4 stages\\)"):
        make_schedule("interleaved-1f1b", 4, 6)
    with pytest.raises(ValueError, match="waves applies only to 'hanayo'"):
        make_schedule("1f1b", 2, 2, waves=2)
    with pytest.raises(ValueError, match="chunks applies only to 'interleaved-1f1b'"):
        make_schedule("hanayo", 2, 2, chunks=2)
    with pytest.raises(ValueError, match="waves must be >= 1"):
        make_schedule("hanayo", 2, 2, waves=0)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        make_schedule("interleaved-1f1b", 2, 2, chunks=0)
    with pytest.raises(ValueError, match="vertical_sync"):
        make_schedule("hanayo", 2, 2, vertical_sync=True)
    with pytest.raises(ValueError, match=r"choose one of .*interleaved-1f1b, hanayo"):
        make_schedule("zb", 2, 2)


def test_reports() -> None:
    schedule = make_schedule("hanayo", 2, 2)
    info = json.loads(json.dumps(describe(schedule)))
    assert info["chunks"] == 2 and info["placement"] == [[0, 3], [1, 2]]
    assert info["grid"][0][:3] == ["0F0c0", "0F1c0", None]
    assert info["peak_activations"] == [3, 4] and info["peak_activation_memory"] == [1.5, 2.0]
    assert info["bubble_mean"] == pytest.approx(1 / 5)  # (P-1)/(2WM + P-1)
    text = render_report(schedule)
    assert text.startswith("hanayo: 2 stages x 2 chunks, 2 microbatches x 1 steps")
    assert "stage 0 holds virtual stages 0, 3" in text and schedule.render() in text
    assert "4 (2)" in text
    plain = describe(make_schedule("1f1b", 2, 2))
    assert plain["chunks"] == 1 and plain["placement"] == [[0], [1]]
    assert plain["grid"][0][0] == "0F0"
