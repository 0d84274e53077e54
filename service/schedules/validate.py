"""Structural and semantic checks of a schedule; every failure is a ScheduleError with the grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from service.schedules.action import Action, Kind
from service.schedules.schedule import Schedule, ScheduleError

_Fail = Callable[[str], NoReturn]


def validate(schedule: Schedule) -> None:
    """Check a schedule's actions, versions, slot dependencies and its named semantics.

    Versions: an action may use any version from -1 up to the number of updates its stage applied
    before it; a backward must use its forward's version. Per-name rules: gpipe/1f1b/2bw apply one
    update per stage per step, right after the step's last backward, and compute step t with
    version t (t - 1 for 2bw); pipedream updates after every backward and its forwards use the
    stage's latest version (stage 0's version of the microbatch under vertical sync).
    """

    def fail(message: str) -> NoReturn:
        raise ScheduleError(f"{schedule.name}: {message}", schedule.render())

    num_stages = schedule.num_stages
    total = schedule.num_microbatches * schedule.num_steps
    if set(schedule.grid) != set(range(num_stages)):
        fail(f"grid must have stages 0..{num_stages - 1}, got {sorted(schedule.grid)}")
    slots: dict[tuple[int, Kind, int], int] = {}
    for s in range(num_stages):
        for slot, a in enumerate(schedule.grid[s]):
            if a is None:
                continue
            if a.stage != s:
                fail(f"{a} sits in stage {s}'s row")
            if not 0 <= a.microbatch < total:
                fail(f"{a}: microbatch out of range 0..{total - 1}")
            if a.key in slots:
                fail(f"{a} appears twice")
            if a.kind is Kind.F and a.update:
                fail(f"{a}: only a backward may carry an update")
            slots[a.key] = slot
    for s in range(num_stages):
        for m in range(total):
            for kind in Kind:
                if (s, kind, m) not in slots:
                    fail(f"stage {s} lacks {s}{kind.value}{m}")
    for s in range(num_stages):
        _check_versions(schedule.stage_actions(s), fail)
    for key, slot in slots.items():
        stage, kind, m = key
        for dep in Action(stage, kind, m).dependencies(num_stages):
            if slots[dep] >= slot:
                name = f"{stage}{kind.value}{m}"
                fail(f"{name} in slot {slot} does not follow its input (slot {slots[dep]})")
    _check_semantics(schedule, fail)


def _check_versions(actions: list[Action], fail: _Fail) -> None:
    updates = 0
    forward: dict[int, int] = {}
    for a in actions:
        if not -1 <= a.version <= updates:
            fail(f"{a} uses version {a.version}, but its stage has applied {updates} updates")
        if a.kind is Kind.F:
            forward[a.microbatch] = a.version
            continue
        if a.microbatch not in forward:
            fail(f"{a} comes before its forward")
        if a.version != forward[a.microbatch]:
            fail(f"{a} uses version {a.version}, its forward used {forward[a.microbatch]}")
        updates += a.update


def _check_semantics(schedule: Schedule, fail: _Fail) -> None:
    per_step = schedule.num_microbatches
    stage0 = {a.microbatch: a.version for a in schedule.stage_actions(0)}
    for s in range(schedule.num_stages):
        actions = schedule.stage_actions(s)
        if schedule.name in ("gpipe", "1f1b", "2bw"):
            offset = -1 if schedule.name == "2bw" else 0
            last = {a.microbatch // per_step: i for i, a in enumerate(actions) if a.kind is Kind.B}
            for i, a in enumerate(actions):
                step = a.microbatch // per_step
                if a.version != step + offset:
                    fail(f"{a} uses version {a.version}, step {step} uses {step + offset}")
                if a.kind is Kind.B and a.update != (i == last[step]):
                    fail(f"{a}: the one update of step {step} follows its last backward")
        elif schedule.name == "pipedream":
            updates = 0
            for a in actions:
                if a.kind is Kind.B and not a.update:
                    fail(f"{a}: pipedream updates after every backward")
                sync = schedule.vertical_sync and s > 0
                expected = stage0[a.microbatch] if sync else updates
                if a.kind is Kind.F and a.version != expected:
                    fail(f"{a} uses version {a.version}, expected {expected}")
                updates += a.update
