"""Structural and semantic checks of a schedule; every failure is a ScheduleError with the grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from pipewave.service.schedules.schedule import Schedule, ScheduleError
from pipewave.service.schedules.traits import TRAITS
from pipewave.workers.actions import Action, Key, Kind

_Fail = Callable[[str], NoReturn]


def validate(schedule: Schedule) -> None:
    """Check a schedule's actions, versions, slot dependencies and its named semantics.

    Versions: an action may use any version from -1 up to the number of updates its stage applied
    before it; a backward must use its forward's version (the same chunk's forward of the same
    microbatch). Dependencies follow the virtual stages of the schedule's placement. Per-name
    rules, from the schedule's traits (``traits.TRAITS``; a name not there has none): a schedule
    with a ``version_lag`` (gpipe/1f1b/interleaved-1f1b/hanayo 0, 2bw 1) applies one update per
    stage per step (covering all of the stage's chunks), right after the stage's last backward of
    the step, and computes step t with version t - lag; one that updates after every backward
    (pipedream) does so, and its forwards use the stage's latest version (stage 0's version of
    the microbatch under vertical sync).
    """

    def fail(message: str) -> NoReturn:
        raise ScheduleError(f"{schedule.name}: {message}", schedule.render())

    num_stages, chunks = schedule.num_stages, schedule.chunks_per_stage
    total = schedule.num_microbatches * schedule.num_steps
    name = schedule.label
    if set(schedule.grid) != set(range(num_stages)):
        fail(f"grid must have stages 0..{num_stages - 1}, got {sorted(schedule.grid)}")
    if schedule.placement is not None and schedule.placement.num_workers != num_stages:
        fail(f"placement has {schedule.placement.num_workers} workers, the grid {num_stages} stages")
    slots: dict[Key, int] = {}
    for s in range(num_stages):
        for slot, a in enumerate(schedule.grid[s]):
            if a is None:
                continue
            if a.stage != s:
                fail(f"{name(a)} sits in stage {s}'s row")
            if not 0 <= a.microbatch < total:
                fail(f"{name(a)}: microbatch out of range 0..{total - 1}")
            if not 0 <= a.chunk < chunks:
                fail(f"{name(a)}: chunk out of range 0..{chunks - 1}")
            if a.key in slots:
                fail(f"{name(a)} appears twice")
            if a.kind is Kind.F and a.update:
                fail(f"{name(a)}: only a backward may carry an update")
            slots[a.key] = slot
    for s in range(num_stages):
        for c in range(chunks):
            for m in range(total):
                for kind in Kind:
                    if (s, kind, m, c) not in slots:
                        fail(f"stage {s} lacks {name(Action(s, kind, m, chunk=c))}")
    for s in range(num_stages):
        _check_versions(schedule.stage_actions(s), fail, name)
    for key, slot in slots.items():
        stage, kind, m, c = key
        action = Action(stage, kind, m, chunk=c)
        for dep in schedule.dependencies(action):
            if slots[dep] >= slot:
                fail(f"{name(action)} in slot {slot} does not follow its input (slot {slots[dep]})")
    _check_semantics(schedule, fail)


def _check_versions(actions: list[Action], fail: _Fail, name: Callable[[Action], str]) -> None:
    updates = 0
    forward: dict[tuple[int, int], int] = {}  # (chunk, microbatch) -> version
    for a in actions:
        if not -1 <= a.version <= updates:
            fail(f"{name(a)} uses version {a.version}, but its stage has applied {updates} updates")
        if a.kind is Kind.F:
            forward[a.chunk, a.microbatch] = a.version
            continue
        if (a.chunk, a.microbatch) not in forward:
            fail(f"{name(a)} comes before its forward")
        if a.version != forward[a.chunk, a.microbatch]:
            fail(f"{name(a)} uses version {a.version}, its forward used {forward[a.chunk, a.microbatch]}")
        updates += a.update


def _check_semantics(schedule: Schedule, fail: _Fail) -> None:
    per_step = schedule.num_microbatches
    name = schedule.label
    stage0 = {a.microbatch: a.version for a in schedule.stage_actions(0)}
    traits = TRAITS.get(schedule.name)
    if traits is None:
        return
    for s in range(schedule.num_stages):
        actions = schedule.stage_actions(s)
        if traits.version_lag is not None:
            offset = -traits.version_lag
            last = {a.microbatch // per_step: i for i, a in enumerate(actions) if a.kind is Kind.B}
            for i, a in enumerate(actions):
                step = a.microbatch // per_step
                if a.version != step + offset:
                    fail(f"{name(a)} uses version {a.version}, step {step} uses {step + offset}")
                if a.kind is Kind.B and a.update != (i == last[step]):
                    fail(f"{name(a)}: the one update of step {step} follows its last backward")
        elif traits.update_every_backward:
            updates = 0
            for a in actions:
                if a.kind is Kind.B and not a.update:
                    fail(f"{name(a)}: {schedule.name} updates after every backward")
                sync = schedule.vertical_sync and s > 0
                expected = stage0[a.microbatch] if sync else updates
                if a.kind is Kind.F and a.version != expected:
                    fail(f"{name(a)} uses version {a.version}, expected {expected}")
                updates += a.update
