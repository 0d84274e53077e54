"""What a stage actor is told about its job: a small frozen config the service builds from the
job spec (``JobSpec.stage_config``), holding only what a stage reads, in plain worker-side types
(so an actor never needs the service's or the API's classes)."""

from __future__ import annotations

from dataclasses import dataclass

from pipewave.workers.contract import ModelSettings
from pipewave.workers.placement import Placement


@dataclass(frozen=True)
class DataSettings:
    """The corpus (a ``pipewave.workers.data.DataConfig``); ``path``: text data (a file) and
    tokens data (a dataset folder ``pipewave prepare`` wrote)."""

    kind: str
    path: str | None = None


@dataclass(frozen=True)
class OptimizerSettings:
    """``pipewave.workers.optim.OutOfPlaceOptimizer``'s kind and hyperparameters."""

    kind: str
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0


@dataclass(frozen=True)
class StageConfig:
    """A job as its stages see it: model, data, optimizer and seed; the global batch split in
    ``num_microbatches``; the schedule's name (for messages) and its chunk placement over the
    job's stage workers (``placement.num_workers`` of them)."""

    model: ModelSettings
    data: DataSettings
    optimizer: OptimizerSettings
    seed: int
    batch_size: int
    num_microbatches: int
    schedule: str
    placement: Placement
    init_from: str | None = None  # a checkpoint or exported model folder to take weights from

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_microbatches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"stage config {name} must be a positive int, got {value!r}")
        if self.batch_size % self.num_microbatches:
            raise ValueError(f"stage config batch_size ({self.batch_size}) must be divisible by "
                             f"num_microbatches ({self.num_microbatches})")

    @property
    def num_stages(self) -> int:
        return self.placement.num_workers

    @property
    def microbatch_size(self) -> int:
        """Samples per microbatch."""
        return self.batch_size // self.num_microbatches
