"""Pipeline schedules as plain data: generators, validation, simulation and reports."""

from pipewave.service.schedules.registry import make_schedule, placement_for
from pipewave.service.schedules.schedule import Schedule, ScheduleError
from pipewave.service.schedules.simulate import Costs, SimResult, simulate, steady_state_bubble
from pipewave.service.schedules.traits import (
    ALL_SCHEDULE_NAMES,
    CHUNKED_SCHEDULE_NAMES,
    SCHEDULE_NAMES,
    SYNCHRONOUS_SCHEDULE_NAMES,
    TRAITS,
    ScheduleTraits,
    schedule_traits,
)
from pipewave.service.schedules.validate import validate
from pipewave.workers.actions import Action, Kind
from pipewave.workers.placement import Placement

__all__ = [
    "ALL_SCHEDULE_NAMES",
    "CHUNKED_SCHEDULE_NAMES",
    "SCHEDULE_NAMES",
    "SYNCHRONOUS_SCHEDULE_NAMES",
    "TRAITS",
    "Action",
    "Costs",
    "Kind",
    "Placement",
    "Schedule",
    "ScheduleError",
    "ScheduleTraits",
    "SimResult",
    "make_schedule",
    "placement_for",
    "schedule_traits",
    "simulate",
    "steady_state_bubble",
    "validate",
]
