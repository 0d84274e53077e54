"""Build a schedule by name."""

from __future__ import annotations

from service.schedules import gpipe, one_f_one_b, pipedream, two_bw
from service.schedules.schedule import Schedule
from service.schedules.validate import validate

SCHEDULE_NAMES = ("gpipe", "1f1b", "pipedream", "2bw")


def make_schedule(
    name: str,
    num_stages: int,
    num_microbatches: int,
    num_steps: int = 1,
    *,
    vertical_sync: bool = False,
) -> Schedule:
    """Generate and validate the named schedule; ValueError on a bad name or argument."""
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
    if vertical_sync and name != "pipedream":
        raise ValueError(f"vertical_sync applies only to 'pipedream', not {name!r}")
    for arg, value in (
        ("num_stages", num_stages),
        ("num_microbatches", num_microbatches),
        ("num_steps", num_steps),
    ):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    if name == "pipedream":
        schedule = pipedream.generate(
            num_stages, num_microbatches, num_steps, vertical_sync=vertical_sync
        )
    else:
        generate = {"gpipe": gpipe, "1f1b": one_f_one_b, "2bw": two_bw}[name].generate
        schedule = generate(num_stages, num_microbatches, num_steps)
    validate(schedule)
    return schedule
