"""What each named schedule is, in one table: everything outside the generators that depends on
which schedule a job runs reads it here (validation, the planner, the controller, the service).

tests/unit/test_schedule_traits.py checks every row against what its generator produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Option = Literal["vertical_sync", "chunks", "waves"]


@dataclass(frozen=True)
class ScheduleTraits:
    """One schedule's traits.

    ``synchronous``: the pipeline flushes at the end of every step (all of a step's backwards and
    its one update per stage before the next step starts), so training matches unpipelined
    training and a run boundary costs nothing; the asynchronous schedules never flush.
    ``version_lag``: step t computes with weight version t - lag (None: versions follow the
    updates microbatch by microbatch instead of step by step, as in PipeDream).
    ``update_every_backward``: an optimizer step after every backward (gradient scale 1) instead
    of one per step averaging the step's microbatches (gradient scale 1 / M).
    ``carry_versions``: the latest weight versions a stage keeps when a run ends (2BW's next step
    computes with the version before the latest).
    ``chunked``: a stage holds several model chunks (virtual stages), placed by the schedule.
    ``option``: the ``make_schedule`` keyword argument only this schedule takes, if any.
    ``rank``: the planner's preference when predictions tie (lower first: 1F1B holds fewer
    activations than GPipe, one chunk per stage is simpler than several).
    """

    name: str
    synchronous: bool
    version_lag: int | None
    update_every_backward: bool
    carry_versions: int
    chunked: bool
    option: Option | None
    rank: int

    def grad_scale(self, num_microbatches: int) -> float:
        """The loss scale of one microbatch: an update averages the microbatches it covers."""
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        return 1.0 if self.update_every_backward else 1.0 / num_microbatches


def _row(name: str, *, synchronous: bool = True, version_lag: int | None = 0,
         update_every_backward: bool = False, carry_versions: int = 1, chunked: bool = False,
         option: Option | None = None, rank: int) -> ScheduleTraits:
    return ScheduleTraits(name, synchronous, version_lag, update_every_backward, carry_versions,
                          chunked, option, rank)


# in the order the schedules are listed to a user: the one-chunk ones, then the chunked ones
TRAITS: MappingProxyType[str, ScheduleTraits] = MappingProxyType({t.name: t for t in (
    _row("gpipe", rank=1),
    _row("1f1b", rank=0),
    _row("pipedream", synchronous=False, version_lag=None, update_every_backward=True,
         option="vertical_sync", rank=2),
    _row("2bw", synchronous=False, version_lag=1, carry_versions=2, rank=3),
    _row("interleaved-1f1b", chunked=True, option="chunks", rank=4),
    _row("hanayo", chunked=True, option="waves", rank=5),
)})

# one chunk per stage
SCHEDULE_NAMES = tuple(n for n, t in TRAITS.items() if not t.chunked)
# several chunks (virtual stages) per stage
CHUNKED_SCHEDULE_NAMES = tuple(n for n, t in TRAITS.items() if t.chunked)
ALL_SCHEDULE_NAMES = SCHEDULE_NAMES + CHUNKED_SCHEDULE_NAMES
SYNCHRONOUS_SCHEDULE_NAMES = tuple(n for n, t in TRAITS.items() if t.synchronous)


def schedule_traits(name: str) -> ScheduleTraits:
    """The named schedule's traits; ValueError for a name that is no schedule."""
    try:
        return TRAITS[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of "
                         f"{', '.join(ALL_SCHEDULE_NAMES)}") from None


def taking(option: Option) -> tuple[str, ...]:
    """The schedules that take the ``make_schedule`` keyword argument ``option``."""
    return tuple(n for n, t in TRAITS.items() if t.option == option)
