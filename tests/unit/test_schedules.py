"""Pipeline schedules: generators, validator, placement, simulator and reports (pure Python)."""

from __future__ import annotations

import json

import pytest

from pipewave.service.schedules import (
    SCHEDULE_NAMES,
    Action,
    Costs,
    Schedule,
    ScheduleError,
    make_schedule,
    simulate,
    steady_state_bubble,
    validate,
)
from pipewave.service.schedules.report import describe, render_report
from pipewave.service.schedules.schedule import place

VARIANTS = [(name, False) for name in SCHEDULE_NAMES] + [("pipedream", True)]


def rows(schedule: Schedule) -> list[str]:
    return [" ".join(map(str, schedule.stage_actions(s))) for s in range(schedule.num_stages)]


def versions(schedule: Schedule) -> list[list[int]]:
    return [[a.version for a in schedule.stage_actions(s)] for s in range(schedule.num_stages)]


def hand_made(grid: list[str], name: str = "custom", m: int = 1) -> Schedule:
    """A one-step schedule from rows like ``"0F0 . 0B0+"``; a suffix ``v1`` sets a version."""
    cells: dict[int, list[Action | None]] = {}
    for s, row in enumerate(grid):
        cells[s] = []
        for text in row.split():
            action, _, version = text.partition("v")
            cells[s].append(None if text == "." else Action.parse(action, int(version or 0)))
    return Schedule(name, len(grid), m, 1, cells)


# 1. every generator validates -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "sync"), VARIANTS)
@pytest.mark.parametrize("num_steps", [1, 3])
def test_generators_validate(name: str, sync: bool, num_steps: int) -> None:
    for stages in range(1, 9):
        for m in range(1, 17):
            schedule = make_schedule(name, stages, m, num_steps, vertical_sync=sync)
            validate(schedule)  # make_schedule validates too; keep the check explicit
            assert schedule.name == name and schedule.vertical_sync is sync
            assert {len(row) for row in schedule.grid.values()} == {len(schedule.grid[0])}


def test_2bw_validates_for_more_step_counts() -> None:
    for stages in range(1, 9):
        for m in range(1, 17):
            for num_steps in (2, 5):
                assert make_schedule("2bw", stages, m, num_steps).carry_versions == 2


# 2. golden grids --------------------------------------------------------------------------------


def test_golden_gpipe_2x3() -> None:
    assert make_schedule("gpipe", 2, 3).render() == (
        "stage 0 | 0F0  0F1  0F2  .    .    0B0  0B1  0B2+\n"
        "stage 1 | .    1F0  1F1  1F2  1B0  1B1  1B2+ ."
    )


def test_golden_1f1b_3x4() -> None:
    # stage s warms up with S - s forwards, then alternates; the last stage runs F0 B0 F1 B1 ...
    assert make_schedule("1f1b", 3, 4).render() == (
        "stage 0 | 0F0  0F1  0F2  .    .    0B0  0F3  0B1  .    0B2  .    0B3+\n"
        "stage 1 | .    1F0  1F1  .    1B0  1F2  1B1  1F3  1B2  .    1B3+ .\n"
        "stage 2 | .    .    2F0  2B0  2F1  2B1  2F2  2B2  2F3  2B3+ .    ."
    )


def test_golden_pipedream_2x4() -> None:
    schedule = make_schedule("pipedream", 2, 4)
    assert rows(schedule) == [
        "0F0 0F1 0B0+ 0F2 0B1+ 0F3 0B2+ 0B3+",
        "1F0 1B0+ 1F1 1B1+ 1F2 1B2+ 1F3 1B3+",
    ]
    # weight stashing: F(m) takes the latest version, B(m) reuses it
    assert versions(schedule) == [[0, 0, 0, 1, 0, 2, 1, 2], [0, 0, 1, 1, 2, 2, 3, 3]]
    assert schedule.render().splitlines()[0] == (
        "stage 0 | 0F0  0F1  .    0B0+ 0F2  0B1+ 0F3  0B2+ .    0B3+"
    )


def test_golden_2bw_2x2_two_steps() -> None:
    schedule = make_schedule("2bw", 2, 2, 2)
    assert schedule.render() == (
        "stage 0 | 0F0  0F1  .    0B0  0F2  0B1+ 0F3  0B2  .    0B3+\n"
        "stage 1 | .    1F0  1B0  1F1  1B1+ 1F2  1B2  1F3  1B3+ ."
    )
    # step 0 uses version -1 (before the start), step 1 version 0
    assert versions(schedule) == [[-1, -1, -1, 0, -1, 0, 0, 0], [-1, -1, -1, -1, 0, 0, 0, 0]]


# 3. bubbles with unit costs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_flush_bubble_is_textbook(name: str) -> None:
    for stages in range(1, 9):
        for m in range(1, 17):
            result = simulate(make_schedule(name, stages, m))
            assert result.makespan == 2 * (m + stages - 1)
            assert result.busy == (2.0 * m,) * stages
            assert result.bubble_mean == pytest.approx((stages - 1) / (m + stages - 1), abs=1e-12)
            assert simulate(make_schedule(name, stages, m, 3)).makespan == 3 * result.makespan


# 4. pipedream has no steady-state bubble --------------------------------------------------------


def test_pipedream_steady_state() -> None:
    assert steady_state_bubble(make_schedule("pipedream", 4, 8, 8)) == 0.0
    bubbles = [
        simulate(make_schedule("pipedream", 4, 8, steps)).bubble_mean for steps in (1, 4, 16)
    ]
    assert bubbles == sorted(bubbles, reverse=True) and bubbles[-1] < 0.03
    assert bubbles[0] == pytest.approx(3 / (8 + 3))  # (S-1)/(N+S-1) over N microbatches


def test_steady_state_window() -> None:
    with pytest.raises(ValueError, match="no steady state"):
        steady_state_bubble(make_schedule("gpipe", 2, 3))
    # 1f1b is bubble-free between warmup and cooldown
    assert steady_state_bubble(make_schedule("1f1b", 3, 4)) == 0.0
    # gpipe S=2 M=3, 2 steps: window [5, 11) from 0B0 to the end of 0F5; stage 1 idles 2 of 6
    assert steady_state_bubble(make_schedule("gpipe", 2, 3, 2)) == pytest.approx(1 / 6)


# 5. weight versions held ------------------------------------------------------------------------


def test_version_peaks() -> None:
    for stages in range(1, 9):
        for m in (1, 3, 8, 16):
            total = 2 * m
            for name in ("gpipe", "1f1b"):
                assert simulate(make_schedule(name, stages, m, 2)).peak_versions == (1,) * stages
            assert max(simulate(make_schedule("2bw", stages, m, 2)).peak_versions) == 2
            peaks = simulate(make_schedule("pipedream", stages, m, 2)).peak_versions
            for s, peak in enumerate(peaks):
                lag = stages - s
                assert peak <= lag
                assert (peak == lag) == (total >= 2 * lag - 2)


def test_vertical_sync_version_peaks() -> None:
    """Vertical sync: stage s keeps every version from stage 0's version of its oldest in-flight
    microbatch up to its own latest, S versions at every stage (once N >= 2S - 2), vs S - s."""
    for stages in range(1, 9):
        for m in (1, 3, 8, 16):
            total = 2 * m
            peaks = simulate(make_schedule("pipedream", stages, m, 2, vertical_sync=True))
            assert max(peaks.peak_versions) <= stages
            if total >= 2 * stages - 2:
                assert peaks.peak_versions == (stages,) * stages


# 6. validator negatives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "name", "m", "message"),
    [
        (["0B0+ 0F0"], "custom", 1, "comes before its forward"),
        (["0F0 0F1 0B0+ 0B1+v1"], "custom", 2, "its forward used 0"),
        (["0F0 0F1 0B0"], "custom", 2, "lacks 0B1"),
        (["0F0v1 0B0+v1"], "custom", 1, "applied 0 updates"),
        (["0F0v-2 0B0+v-2"], "custom", 1, "applied 0 updates"),
        (["0F0+ 0B0"], "custom", 1, "only a backward"),
        (["0F0 0B0+ 0F1 0B1+"], "custom", 1, "out of range"),
        (["0F0 0B0", "0F0 1B0"], "custom", 1, "sits in stage 1"),
        (["0F0 0F0 0B0"], "custom", 1, "appears twice"),
        (["0F0 . 0B0+", "1F0 1B0+"], "custom", 1, "does not follow its input"),
        (["0F0 0F1 0B0+ 0B1"], "gpipe", 2, "follows its last backward"),
        (["0F0 0F1 0B0 0B1+"], "2bw", 2, "step 0 uses -1"),
        (["0F0 0B0 0F1 0B1+v0"], "pipedream", 2, "updates after every backward"),
        (["0F0 0B0+ 0F1 0B1+"], "pipedream", 2, "expected 1"),
    ],
)
def test_validator_rejects(grid: list[str], name: str, m: int, message: str) -> None:
    schedule = hand_made(grid, name, m)
    with pytest.raises(ScheduleError, match=message) as err:
        validate(schedule)
    assert schedule.render() in str(err.value)


def test_validator_vertical_sync_needs_stage0_versions() -> None:
    good = make_schedule("pipedream", 2, 3, vertical_sync=True)
    grid = {s: list(row) for s, row in good.grid.items()}
    for i, a in enumerate(grid[1]):  # stage 1's own count for microbatch 2, not stage 0's (1)
        if a is not None and a.microbatch == 2:
            grid[1][i] = Action(1, a.kind, 2, 2, a.update)
    bad = Schedule("pipedream", 2, 3, 1, grid, vertical_sync=True)
    with pytest.raises(ScheduleError, match="expected 1"):
        validate(bad)


def test_place_reports_deadlock_with_partial_grid() -> None:
    # stage 0's B0 waits for 1B0, which waits for 1F1, which waits for 0F1, queued after 0B0
    rows_ = ["0F0 0B0 0F1 0B1", "1F0 1F1 1B0 1B1"]
    orders = {s: [Action.parse(t) for t in row.split()] for s, row in enumerate(rows_)}
    with pytest.raises(ScheduleError, match="deadlock at slot 2") as err:
        place("custom", 2, 2, 1, orders)
    assert err.value.grid == "stage 0 | 0F0 .\nstage 1 | .   1F0"
    assert err.value.grid in str(err.value)


def test_simulate_reports_deadlock() -> None:
    schedule = hand_made(["0F0 0B0", "1B0 1F0"])
    with pytest.raises(ScheduleError, match="deadlock") as err:
        simulate(schedule)
    assert schedule.render() in str(err.value)


def test_make_schedule_arguments() -> None:
    with pytest.raises(ValueError, match="unknown schedule 'zb'"):
        make_schedule("zb", 2, 2)
    with pytest.raises(ValueError, match="vertical_sync"):
        make_schedule("2bw", 2, 2, vertical_sync=True)
    for args in ((0, 2, 1), (2, 0, 1), (2, 2, 0)):
        with pytest.raises(ValueError, match=">= 1"):
            make_schedule("gpipe", *args)


# 7. activations, costs, reports -----------------------------------------------------------------


def test_peak_activations() -> None:
    for stages in range(1, 9):
        for m in range(1, 17):
            assert simulate(make_schedule("gpipe", stages, m)).peak_activations[0] == m
            peaks = simulate(make_schedule("1f1b", stages, m, 2)).peak_activations
            assert peaks == tuple(min(stages - s, m) for s in range(stages))


def test_costs() -> None:
    gpipe = make_schedule("gpipe", 2, 1)
    # 0F0 [0, 1], 1F0 [1.5, 2.5], 1B0 [2.5, 4.5] + update, 0B0 [5, 7] + update
    result = simulate(gpipe, Costs(forward=1.0, backward=(2.0, 2.0), update=0.5, comm=0.5))
    assert result.makespan == 7.5
    assert result.busy == (3.5, 3.5)
    assert [(str(a), st, en) for a, st, en in result.spans[1]] == [
        ("1F0", 1.5, 2.5),
        ("1B0+", 2.5, 5.0),
    ]
    with pytest.raises(ValueError, match="need 2 values"):
        simulate(gpipe, Costs(forward=(1.0,)))


def test_report() -> None:
    schedule = make_schedule("1f1b", 2, 2)
    info = json.loads(json.dumps(describe(schedule)))
    assert info["name"] == "1f1b" and info["stages"] == 2 and info["microbatches"] == 2
    assert info["grid"][1][0] is None and info["grid"][0][0] == "0F0"
    assert info["makespan"] == 6 and info["bubble_mean"] == pytest.approx(1 / 3)
    assert info["peak_activations"] == [2, 1] and info["peak_versions"] == [1, 1]
    text = render_report(schedule, Costs())
    assert schedule.render() in text and "makespan 6" in text
