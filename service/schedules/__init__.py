"""Pipeline schedules as plain data: generators, validation, simulation and reports."""

from service.schedules.action import Action, Kind
from service.schedules.placement import Placement
from service.schedules.registry import (
    ALL_SCHEDULE_NAMES,
    CHUNKED_SCHEDULE_NAMES,
    SCHEDULE_NAMES,
    make_schedule,
    placement_for,
)
from service.schedules.schedule import Schedule, ScheduleError
from service.schedules.simulate import Costs, SimResult, simulate, steady_state_bubble
from service.schedules.validate import validate

__all__ = [
    "ALL_SCHEDULE_NAMES",
    "CHUNKED_SCHEDULE_NAMES",
    "SCHEDULE_NAMES",
    "Action",
    "Costs",
    "Kind",
    "Placement",
    "Schedule",
    "ScheduleError",
    "SimResult",
    "make_schedule",
    "placement_for",
    "simulate",
    "steady_state_bubble",
    "validate",
]
