"""Build a schedule by name."""

from __future__ import annotations

from pipewave.service.schedules import gpipe, hanayo, interleaved, one_f_one_b, pipedream, two_bw
from pipewave.service.schedules.schedule import Schedule
from pipewave.service.schedules.traits import Option, schedule_traits, taking
from pipewave.service.schedules.validate import validate
from pipewave.workers.placement import Placement, looped, single
from pipewave.workers.placement import waves as wave_placement

DEFAULT_CHUNKS = 2  # interleaved-1f1b: chunks per stage
DEFAULT_WAVES = 1  # hanayo: waves (2 chunks per stage per wave)


def make_schedule(
    name: str,
    num_stages: int,
    num_microbatches: int,
    num_steps: int = 1,
    *,
    vertical_sync: bool = False,
    chunks: int | None = None,
    waves: int | None = None,
) -> Schedule:
    """Generate and validate the named schedule; ValueError on a bad name or argument.

    ``chunks`` (interleaved-1f1b only, default 2): chunks per stage; the microbatches must be a
    multiple of the stages. ``waves`` (hanayo only, default 1): waves, 2 chunks per stage each.
    """
    traits = schedule_traits(name)
    given: tuple[tuple[Option, bool], ...] = (
        ("vertical_sync", vertical_sync), ("chunks", chunks is not None), ("waves", waves is not None))
    for option, used in given:
        if used and traits.option != option:
            only = " or ".join(repr(n) for n in taking(option))
            raise ValueError(f"{option} applies only to {only}, not {name!r}")
    for arg, value in (
        ("num_stages", num_stages),
        ("num_microbatches", num_microbatches),
        ("num_steps", num_steps),
        ("chunks", 1 if chunks is None else chunks),
        ("waves", 1 if waves is None else waves),
    ):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    if name == "pipedream":
        schedule = pipedream.generate(
            num_stages, num_microbatches, num_steps, vertical_sync=vertical_sync
        )
    elif name == "interleaved-1f1b":
        schedule = interleaved.generate(
            num_stages, num_microbatches, num_steps, DEFAULT_CHUNKS if chunks is None else chunks
        )
    elif name == "hanayo":
        schedule = hanayo.generate(
            num_stages, num_microbatches, num_steps, DEFAULT_WAVES if waves is None else waves
        )
    else:
        generate = {"gpipe": gpipe, "1f1b": one_f_one_b, "2bw": two_bw}[name].generate
        schedule = generate(num_stages, num_microbatches, num_steps)
    validate(schedule)
    return schedule


def placement_for(
    name: str,
    num_stages: int,
    *,
    vertical_sync: bool = False,
    chunks: int | None = None,
    waves: int | None = None,
) -> Placement:
    """The chunk placement the named schedule runs on (one chunk per stage for the classic ones);
    takes ``make_schedule``'s keyword arguments."""
    if name == "interleaved-1f1b":
        return looped(num_stages, DEFAULT_CHUNKS if chunks is None else chunks)
    if name == "hanayo":
        return wave_placement(num_stages, DEFAULT_WAVES if waves is None else waves)
    return single(num_stages)
