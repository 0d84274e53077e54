"""The schedule traits table against what the generators and the simulator actually do."""

from __future__ import annotations

from typing import get_args

import pytest

from pipewave.service.planning.planner import AUTO_SCHEDULES
from pipewave.service.schedules import (
    ALL_SCHEDULE_NAMES,
    CHUNKED_SCHEDULE_NAMES,
    SCHEDULE_NAMES,
    SYNCHRONOUS_SCHEDULE_NAMES,
    TRAITS,
    Kind,
    Schedule,
    make_schedule,
    schedule_traits,
    simulate,
)
from pipewave.service.spec import JobSpec, ScheduleName

NAMES = list(TRAITS)
SHAPES = [(2, 2), (2, 4), (3, 3), (3, 6), (4, 4), (4, 8)]  # (stages, microbatches)


def _actions(schedule: Schedule) -> list:
    return [a for s in range(schedule.num_stages) for a in schedule.stage_actions(s)]


def _step_windows(schedule: Schedule) -> list[tuple[float, float]]:
    """Per step, (earliest start, latest end) of its actions over all stages (unit costs)."""
    spans = simulate(schedule).spans
    M = schedule.num_microbatches
    return [(min(st for row in spans.values() for a, st, _ in row if a.microbatch // M == t),
             max(en for row in spans.values() for a, _, en in row if a.microbatch // M == t))
            for t in range(schedule.num_steps)]


def test_the_table_lists_every_schedule_once_in_the_spec_order() -> None:
    assert ALL_SCHEDULE_NAMES == tuple(TRAITS) == get_args(ScheduleName)
    assert all(name == t.name for name, t in TRAITS.items())
    assert set(SCHEDULE_NAMES) | set(CHUNKED_SCHEDULE_NAMES) == set(TRAITS)
    assert not set(SCHEDULE_NAMES) & set(CHUNKED_SCHEDULE_NAMES)
    with pytest.raises(ValueError, match=r"unknown schedule 'zb'; choose one of gpipe, 1f1b"):
        schedule_traits("zb")


@pytest.mark.parametrize("name", NAMES)
def test_synchronous_ones_flush_every_step_per_the_simulator(name: str) -> None:
    traits = schedule_traits(name)
    for P, M in SHAPES:
        sched = make_schedule(name, P, M, 3)
        windows = _step_windows(sched)
        flushed = all(windows[t][1] <= windows[t + 1][0] for t in range(2))
        assert flushed is traits.synchronous, (P, M, windows)
        one = simulate(make_schedule(name, P, M, 1)).makespan
        if traits.synchronous:  # (steps back to back: a run boundary costs nothing)
            assert simulate(sched).makespan == pytest.approx(3 * one)
        else:
            assert simulate(sched).makespan < 3 * one
    assert (name in SYNCHRONOUS_SCHEDULE_NAMES) is traits.synchronous


@pytest.mark.parametrize("name", NAMES)
def test_version_lag_and_updates_match_the_generated_actions(name: str) -> None:
    traits = schedule_traits(name)
    for P, M in SHAPES:
        steps = 3
        sched = make_schedule(name, P, M, steps)
        for s in range(P):
            actions = sched.stage_actions(s)
            updates = sum(a.update for a in actions)
            backwards = sum(a.kind is Kind.B for a in actions)
            if traits.update_every_backward:
                assert updates == backwards == M * steps
            else:
                assert updates == steps and backwards == M * steps * sched.chunks_per_stage
            # one update averages the microbatches it covers: the loss scale is their inverse
            assert traits.grad_scale(M) == pytest.approx(updates / (M * steps))
            lagged = all(a.version == a.microbatch // M - (traits.version_lag or 0)
                         for a in actions)
            if traits.version_lag is not None:
                assert lagged, (P, M, s)
            elif s == 0 and P > 1:  # versions move within a step (PipeDream's weight stashing)
                assert not lagged and len({a.version for a in actions[:2 * M]}) > 1


@pytest.mark.parametrize("name", NAMES)
def test_versions_carried_match_the_generators_and_simulated_peaks(name: str) -> None:
    traits = schedule_traits(name)
    for P, M in SHAPES:
        sched = make_schedule(name, P, M, 3)
        assert sched.carry_versions == traits.carry_versions
        # a run reaches back to version 1 - carry: the ones kept past the previous run's end
        assert min(a.version for a in _actions(sched)) == 1 - traits.carry_versions
        peaks = simulate(sched).peak_versions
        if traits.update_every_backward:  # (stashed versions in flight, none carried)
            assert traits.carry_versions == 1 and peaks[0] == min(P, M * 3)
        else:
            assert max(peaks) == traits.carry_versions


@pytest.mark.parametrize("name", NAMES)
def test_chunked_ones_place_several_chunks_on_every_worker(name: str) -> None:
    traits = schedule_traits(name)
    for P, M in SHAPES:
        sched = make_schedule(name, P, M, 1)
        assert (sched.chunks_per_stage > 1) is traits.chunked
        if traits.chunked:
            assert sched.placement is not None
            assert {len(chunks) for chunks in sched.placement.workers} == {sched.chunks_per_stage}
            assert {a.chunk for a in sched.stage_actions(P - 1)} == set(range(sched.chunks_per_stage))
    assert (name in CHUNKED_SCHEDULE_NAMES) is traits.chunked


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("option", "value"), [("vertical_sync", True), ("chunks", 2), ("waves", 1)])
def test_each_option_is_taken_by_the_schedule_the_table_names(name: str, option: str,
                                                             value: object) -> None:
    if schedule_traits(name).option == option:
        make_schedule(name, 2, 4, 1, **{option: value})
    else:
        with pytest.raises(ValueError, match=f"{option} applies only to"):
            make_schedule(name, 2, 4, 1, **{option: value})


def test_auto_weighs_the_synchronous_ones_simplest_first() -> None:
    assert len({t.rank for t in TRAITS.values()}) == len(TRAITS)
    assert set(AUTO_SCHEDULES) == set(SYNCHRONOUS_SCHEDULE_NAMES)
    assert AUTO_SCHEDULES == ("1f1b", "gpipe", "interleaved-1f1b", "hanayo")
    # 1f1b before gpipe: the same bubble, fewer activations held
    for P, M in SHAPES:
        a, b = simulate(make_schedule("1f1b", P, M, 1)), simulate(make_schedule("gpipe", P, M, 1))
        assert a.makespan == b.makespan and max(a.peak_activations) <= max(b.peak_activations)


def test_the_job_spec_reads_its_schedule_traits() -> None:
    base = {"name": "t", "model": {"kind": "mlp", "n_layers": 4}, "stages": 2, "microbatches": 4}
    auto = JobSpec.model_validate({**base, "schedule": "auto"})
    assert auto.synchronous
    with pytest.raises(ValueError, match="schedule 'auto' is not resolved yet"):
        _ = auto.traits
    for name in NAMES:
        spec = JobSpec.model_validate({**base, "schedule": name})
        assert spec.traits is TRAITS[name] and spec.synchronous is TRAITS[name].synchronous
    with pytest.raises(ValueError, match="num_microbatches must be >= 1"):
        TRAITS["1f1b"].grad_scale(0)
