"""A job's states and the transitions between them: the controller's state machine as data.

::

    CREATED -> STARTING -> RUNNING
    RUNNING -> CHECKPOINTING -> RUNNING              (a checkpoint boundary, steps remain)
                             -> STOPPING -> SUCCEEDED (all steps done)
    RUNNING -> REBALANCING -> RUNNING                (a live move: calibration, membership)
    RUNNING -> RECOVERING -> RUNNING                 (elastic: stages died; restart at once)
                          -> WAITING -> RUNNING      (too few usable nodes: wait for more)
    any state but SUCCEEDED, FAILED, CANCELLED -> FAILED | CANCELLED

``TRANSITIONS`` says which state may follow which; ``check_transition`` raises
``IllegalTransitionError`` for any other, so a controller cannot slip into a state its handlers
do not expect. FAILED and CANCELLED may follow every non-terminal state (an error, a cancel, a
Ctrl-C); nothing follows a terminal state.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class JobState(StrEnum):
    CREATED = "CREATED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    REBALANCING = "REBALANCING"  # a live move to another partition (calibration, elasticity)
    RECOVERING = "RECOVERING"  # a stage's node died: rebuild from the latest surviving state
    WAITING = "WAITING"  # too few nodes for min_stages: wait for more
    CHECKPOINTING = "CHECKPOINTING"
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class IllegalTransitionError(RuntimeError):
    """A controller tried to move to a state that may not follow its current one."""


_ENDS: Final = frozenset({JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = MappingProxyType({
    JobState.CREATED: frozenset({JobState.STARTING}) | _ENDS,
    JobState.STARTING: frozenset({JobState.RUNNING}) | _ENDS,
    JobState.RUNNING: frozenset({JobState.CHECKPOINTING, JobState.REBALANCING,
                                 JobState.RECOVERING}) | _ENDS,
    JobState.CHECKPOINTING: frozenset({JobState.RUNNING, JobState.STOPPING}) | _ENDS,
    JobState.REBALANCING: frozenset({JobState.RUNNING}) | _ENDS,
    JobState.RECOVERING: frozenset({JobState.RUNNING, JobState.WAITING}) | _ENDS,
    JobState.WAITING: frozenset({JobState.RUNNING}) | _ENDS,
    JobState.STOPPING: frozenset({JobState.SUCCEEDED}) | _ENDS,
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
})
"""For each state, the states that may follow it."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise ``IllegalTransitionError`` unless ``new`` may follow ``old``."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none (it is terminal)"
        raise IllegalTransitionError(f"internal: a job in {old.value} cannot move to {new.value} "
                                     f"(allowed: {allowed})")
