"""GPipe: per step, all forwards then all backwards, one optimizer step at the step's end."""

from __future__ import annotations

from pipewave.service.schedules.one_f_one_b import flushed
from pipewave.service.schedules.schedule import Schedule


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1) -> Schedule:
    """Steps run back to back with a flush between them; step t computes with version t.
    GPipe is 1F1B whose warm-up is the whole step: every forward before the first backward."""
    return flushed("gpipe", num_stages, num_microbatches, num_steps, lambda s: num_microbatches)
