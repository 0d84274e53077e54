"""The API's public shapes (pydantic): what the routes return. See docs/api.md."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator


class ApiState(StrEnum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    REBALANCING = "REBALANCING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (ApiState.SUCCEEDED, ApiState.FAILED, ApiState.CANCELLED)


# the controller's finer states, as the API shows them
PHASE_TO_STATE = {
    "QUEUED": ApiState.QUEUED, "CREATED": ApiState.STARTING, "STARTING": ApiState.STARTING,
    "RUNNING": ApiState.RUNNING, "CHECKPOINTING": ApiState.RUNNING, "STOPPING": ApiState.RUNNING,
    "REBALANCING": ApiState.REBALANCING, "RECOVERING": ApiState.REBALANCING,
    "WAITING": ApiState.REBALANCING, "SUCCEEDED": ApiState.SUCCEEDED, "FAILED": ApiState.FAILED,
    "CANCELLED": ApiState.CANCELLED,
}


class _Chunked(BaseModel):
    """A stage worker's ``layers`` (the hull [first, end) of its chunks) and ``chunks`` (the
    [start, end) layer range of each chunk, in chunk order; one for single-chunk schedules).
    Data stored before chunks existed has none: then it is one chunk, ``layers``."""

    @model_validator(mode="before")
    @classmethod
    def _one_chunk_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("chunks") and "layers" in data:
            return {**data, "chunks": [list(data["layers"])]}
        return data


class StagePlacement(_Chunked):
    stage: int
    layers: list[int]  # [first, end)
    chunks: list[list[int]] = []  # [[start, end), ...] in chunk order
    layer_names: list[str] = []  # the names of all its layers, in chunk order
    node_id: str | None = None
    device: str | None = None


class ModelInfoPublic(BaseModel):
    """A job's model as the dashboard shows it (``PipelineModel.info``)."""

    kind: str  # gpt, mlp, transformers, plugin
    architecture: str  # e.g. "gpt", "LlamaForCausalLM", "mixer (plugin pipewave-mixer)"
    parameters: int
    layers: int


class JobPublic(BaseModel):
    id: str
    name: str
    state: ApiState
    phase: str
    reason: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    spec: dict[str, Any]
    stages: int | None
    microbatches: int | None
    step: int
    steps: int
    progress: float
    loss: float | None
    samples_per_s: float | None
    queue_position: int | None = None
    slots: int
    cancel_requested: bool
    placement: list[StagePlacement]
    checkpoint_step: int | None
    model_info: ModelInfoPublic | None = None  # one job's (GET /jobs/{id}); None in lists


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class StepPoint(BaseModel):
    step: int
    time: float
    loss: float | None
    samples_per_s: float | None
    time_s: float | None = None
    stage_busy_s: list[float] = []
    stage_idle_s: list[float] = []
    stage_cpu_s: list[float] = []
    predicted_stage_busy_s: list[float] = []


class MetricsList(BaseModel):
    items: list[StepPoint]


class EventPublic(BaseModel):
    seq: int
    time: float
    kind: str
    message: str
    data: dict[str, Any] = {}


class CheckpointPublic(BaseModel):
    step: int
    path: str
    time: float
    bytes: int


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]  # the checkpoints on disk, oldest first
    keep_last: int | None = None  # the job's checkpoint.keep_last: None keeps every one


class Span(BaseModel):
    stage: int
    kind: str
    microbatch: int
    step: int
    start: float
    end: float
    chunk: int = 0  # which of the stage's chunks (virtual stages) ran it


class Timeline(BaseModel):
    stages: int = 0
    chunks_per_stage: int = 1
    steps: list[int] = []
    t0: float = 0.0
    duration_s: float = 0.0
    spans: list[Span] = []


class NodePublic(BaseModel):
    node_id: str
    state: str  # ALIVE | DRAINING | DEAD
    address: str
    kind: str | None
    cpus: float
    available_cpus: float
    gpus: float
    memory_bytes: int | None
    slots: int
    labels: dict[str, str] = {}


class SlotSummary(BaseModel):
    total: int
    free: int
    cpus_per_stage: float


class StageOnNode(_Chunked):
    job_id: str
    job_name: str
    stage: int
    node_id: str | None
    layers: list[int]
    chunks: list[list[int]] = []


class ClusterPublic(BaseModel):
    nodes: list[NodePublic]
    slots: SlotSummary
    stages: list[StageOnNode]


class DrainRequest(BaseModel):
    model_config = {"extra": "forbid"}

    deadline_s: float | None = Field(None, ge=0, le=7 * 86400)


class DrainPublic(BaseModel):
    node_id: str
    draining: bool


class Health(BaseModel):
    status: str
    ray: bool
