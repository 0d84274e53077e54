"""The job spec: what a user submits. Data only, every number bounded, unknown fields rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, TypedDict, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from pipewave.service.schedules import (
    ALL_SCHEDULE_NAMES,
    Placement,
    ScheduleTraits,
    placement_for,
    schedule_traits,
)
from pipewave.service.schedules.registry import DEFAULT_CHUNKS, DEFAULT_WAVES
from pipewave.service.schedules.traits import Option, taking
from pipewave.workers.config import DataSettings, OptimizerSettings, StageConfig
from pipewave.workers.contract import ModelSettings
from pipewave.workers.models import num_layers

# the names of pipewave.service.schedules.TRAITS (spelled out for the type checker; checked below)
ScheduleName = Literal["gpipe", "1f1b", "pipedream", "2bw", "interleaved-1f1b", "hanayo"]
# "auto": the planner picks among the synchronous schedules (pipewave.service.planning.planner.AUTO_SCHEDULES)
ScheduleChoice = Literal[ScheduleName, "auto"]
if get_args(ScheduleName) != ALL_SCHEDULE_NAMES:
    raise ImportError(f"the job spec's schedule names {get_args(ScheduleName)} are not the "
                      f"schedule table's {ALL_SCHEDULE_NAMES}")


class ScheduleArgs(TypedDict, total=False):
    """``make_schedule``'s keyword arguments beyond the counts."""

    vertical_sync: bool
    chunks: int
    waves: int


class SpecError(ValueError):
    """A job spec that cannot run; the message is one readable line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GPTSpec(_Strict):
    kind: Literal["gpt"]
    vocab_size: int = Field(256, ge=2, le=1_048_576)
    d_model: int = Field(256, ge=8, le=16_384)
    n_layers: int = Field(8, ge=1, le=512)
    n_heads: int = Field(4, ge=1, le=256)
    seq_len: int = Field(128, ge=2, le=65_536)

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTSpec:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self


class MLPSpec(_Strict):
    kind: Literal["mlp"]
    vocab_size: int = Field(256, ge=2, le=1_048_576)
    d_model: int = Field(64, ge=4, le=16_384)
    n_layers: int = Field(4, ge=1, le=512)
    seq_len: int = Field(32, ge=2, le=65_536)


MAX_CONFIG_JSON = 65_536  # bytes of an inline model config (JSON): a config, not a payload
PathField = Annotated[str, Field(min_length=1, max_length=4096)]
SeqLen = Annotated[int, Field(ge=2, le=65_536)]


def _bounded_config(config: dict[str, JsonValue] | None, what: str) -> None:
    if config is not None and len(json.dumps(config)) > MAX_CONFIG_JSON:
        raise ValueError(f"{what} is larger than {MAX_CONFIG_JSON} bytes of JSON")


class TransformersSpec(_Strict):
    """A Hugging Face transformers causal LM (``pipewave.workers.hf``): ``config`` inline
    (``model_type`` and the config class's fields), ``pretrained`` a folder with ``config.json``
    and ``*.safetensors`` (inside the data root), or both (``config`` overrides the folder's)."""

    kind: Literal["transformers"]
    config: dict[str, JsonValue] | None = None
    pretrained: PathField | None = None

    @model_validator(mode="after")
    def _source(self) -> TransformersSpec:
        if self.config is None and self.pretrained is None:
            raise ValueError("a transformers model needs config (with model_type) or pretrained")
        _bounded_config(self.config, "model.config")
        if self.pretrained is None and "model_type" not in (self.config or {}):
            raise ValueError("model.config needs model_type (e.g. llama, gpt2)")
        return self


class PluginSpec(_Strict):
    """A model an installed plugin package registers (entry-point group ``pipewave.models``);
    ``config`` is validated by the plugin's own schema."""

    kind: Literal["plugin"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    config: dict[str, JsonValue] = {}

    @model_validator(mode="after")
    def _checked(self) -> PluginSpec:
        """The config as the plugin's own schema makes it (defaults filled in); the plugin must
        be installed (``pipewave.workers.plugins``: looked up by name, nothing else imported)."""
        from pipewave.workers.plugins import validate_plugin_config

        _bounded_config(self.config, "model.config")
        object.__setattr__(self, "config", validate_plugin_config(self.name, self.config))
        return self


class StdlibData(_Strict):
    kind: Literal["stdlib"]
    seq_len: SeqLen | None = None


class TextData(_Strict):
    kind: Literal["text"]
    path: PathField
    seq_len: SeqLen | None = None


class SyntheticData(_Strict):
    kind: Literal["synthetic"]
    seq_len: SeqLen | None = None


class TokensData(_Strict):
    """A dataset folder ``pipewave prepare`` wrote (inside the data root)."""

    kind: Literal["tokens"]
    path: PathField
    seq_len: SeqLen | None = None


BYTE_DATA = ("stdlib", "text", "synthetic")  # data whose tokens are bytes (256 ids)


class OptimizerSpec(_Strict):
    kind: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-4, gt=0, le=10)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    eps: float = Field(1e-8, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)


class ElasticSpec(_Strict):
    """Grow and shrink with the cluster: the stage count stays within [min_stages, max_stages]."""

    min_stages: int = Field(1, ge=1, le=64)
    max_stages: int = Field(64, ge=1, le=64)
    wait_timeout_s: float = Field(600.0, gt=0, le=7 * 86400)  # below min_stages: wait this long

    @model_validator(mode="after")
    def _ordered(self) -> ElasticSpec:
        if self.min_stages > self.max_stages:
            raise ValueError(f"min_stages ({self.min_stages}) exceeds max_stages ({self.max_stages})")
        return self


class CheckpointSpec(_Strict):
    every_steps: int | None = Field(None, ge=1, le=10_000_000)
    # keep this many of the newest complete checkpoints (older ones are deleted once a newer one
    # is complete; the newest is never deleted); None keeps them all
    keep_last: int | None = Field(None, ge=1, le=10_000)


ModelSpec = Annotated[GPTSpec | MLPSpec | TransformersSpec | PluginSpec, Field(discriminator="kind")]
DataSpec = Annotated[StdlibData | TextData | SyntheticData | TokensData, Field(discriminator="kind")]
BuiltinModel = GPTSpec | MLPSpec


Auto = Literal["auto"]
StageCount = Annotated[int, Field(ge=1, le=64)] | Auto
MicrobatchCount = Annotated[int, Field(ge=1, le=1024)] | Auto


def _divisors_up_to(n: int, top: int) -> list[int]:
    return [d for d in range(1, min(n, top) + 1) if n % d == 0]


class JobSpec(_Strict):
    """``stages`` / ``microbatches`` "auto": the planner chooses them (``max_stages`` bounds the
    stage count); ``partition`` "auto": the planner places the layers from their profile, and
    "uniform" splits them by count (it needs a given ``stages``)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ModelSpec
    data: DataSpec = StdlibData(kind="stdlib")
    schedule: ScheduleChoice = "1f1b"
    vertical_sync: bool = False
    chunks: Annotated[int, Field(ge=2, le=16)] | Auto | None = None  # interleaved-1f1b (default 2)
    waves: Annotated[int, Field(ge=1, le=8)] | Auto | None = None  # hanayo (default 1)
    partition: Literal["uniform", "auto"] = "auto"
    stages: StageCount = "auto"
    max_stages: int | None = Field(None, ge=1, le=64)
    microbatches: MicrobatchCount = "auto"
    batch_size: int = Field(32, ge=1, le=65_536)
    steps: int = Field(100, ge=1, le=10_000_000)
    optimizer: OptimizerSpec = OptimizerSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    elastic: ElasticSpec | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # start from these weights: a checkpoint folder (step-N, with manifest.json) or an exported
    # model folder (``pipewave export``), inside the data root
    init_from: PathField | None = None

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        m = self.model
        if isinstance(m, BuiltinModel):
            if self.data.kind in BYTE_DATA and m.vocab_size < 256:
                raise ValueError(f"model.vocab_size ({m.vocab_size}) must be at least 256: "
                                 f"the data are bytes")
            if self.data.seq_len is not None and self.data.seq_len > m.seq_len:
                raise ValueError(f"data.seq_len ({self.data.seq_len}) exceeds the model's seq_len "
                                 f"({m.seq_len})")
        elif self.data.seq_len is None and not (
                isinstance(m, PluginSpec) and isinstance(m.config.get("seq_len"), int)):
            raise ValueError(f"data.seq_len is needed: a {m.kind} model's config does not fix the "
                             f"sequence length it trains at")
        if isinstance(m, BuiltinModel):  # (other models' layers are counted by check_job)
            self.check_layers(num_layers(m))
        if self.partition == "uniform" and "auto" in (self.stages, self.microbatches):
            raise ValueError("partition 'uniform' needs stages and microbatches given as numbers "
                             "(or use partition 'auto')")
        if self.max_stages is not None and self.stages != "auto":
            raise ValueError("max_stages bounds stages 'auto'; with a given stages leave it out")
        if self.elastic is not None:
            if self.partition != "auto":
                raise ValueError("elastic jobs need partition 'auto' (the planner re-plans them)")
            if self.max_stages is not None:
                raise ValueError("an elastic job's bounds are elastic.min_stages and max_stages")
            if self.stages != "auto" and not (self.elastic.min_stages <= self.stages
                                              <= self.elastic.max_stages):
                raise ValueError(f"stages ({self.stages}) is outside elastic [{self.elastic.min_stages}, "
                                 f"{self.elastic.max_stages}]")
        if self.microbatches != "auto" and self.batch_size % self.microbatches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by microbatches "
                f"({self.microbatches})"
            )
        given: tuple[tuple[Option, bool], ...] = (("vertical_sync", self.vertical_sync),
                                                  ("chunks", self.chunks is not None),
                                                  ("waves", self.waves is not None))
        for option, used in given:
            if used and (self.schedule == "auto" or schedule_traits(self.schedule).option != option):
                only = " or ".join(repr(n) for n in taking(option))
                raise ValueError(f"{option} applies only to schedule {only}")
        if self.partition == "uniform" and "auto" in (self.schedule, self.chunks, self.waves):
            raise ValueError("partition 'uniform' needs the schedule (and its chunks or waves) given "
                             "(or use partition 'auto')")
        return self

    def check_layers(self, layers: int) -> None:
        """The counts against the model's ``layers``: a stage (a chunk) needs at least one."""
        if self.stages != "auto" and self.stages > layers:
            raise ValueError(
                f"stages ({self.stages}) exceeds the model's {layers} layers "
                f"(a stage needs at least one layer)"
            )
        v = self._chunks_known
        if self.stages != "auto" and v is not None:
            if self.stages * v > layers:
                raise ValueError(
                    f"{self.schedule} with {self.stages} stages cuts the model into "
                    f"{self.stages * v} chunks ({v} per stage), more than its {layers} layers"
                )
            if self.schedule == "interleaved-1f1b" and self.microbatches != "auto" \
                    and self.microbatches % self.stages:
                raise ValueError(f"interleaved-1f1b needs microbatches ({self.microbatches}) to be "
                                 f"a multiple of stages ({self.stages})")

    @property
    def _chunks_known(self) -> int | None:
        """Chunks per stage, or None while the planner has still to choose them."""
        if self.schedule == "auto" or "auto" in (self.chunks, self.waves):
            return None
        if self.schedule == "interleaved-1f1b":
            return int(self.chunks or DEFAULT_CHUNKS)
        if self.schedule == "hanayo":
            return 2 * int(self.waves or DEFAULT_WAVES)
        return 1

    @property
    def chunks_per_stage(self) -> int:
        """Model chunks (virtual stages) each stage worker holds under the schedule."""
        v = self._chunks_known
        if v is None:
            raise ValueError(f"job {self.name}: the schedule is not resolved yet")
        return v

    @property
    def schedule_args(self) -> ScheduleArgs:
        """Keyword arguments of ``make_schedule`` beyond the counts (vertical sync, chunks, waves)."""
        args: ScheduleArgs = {"vertical_sync": self.vertical_sync}
        if self.schedule == "interleaved-1f1b":
            args["chunks"] = self.chunks_per_stage
        elif self.schedule == "hanayo":
            args["waves"] = self.chunks_per_stage // 2
        return args

    def placement(self, num_stages: int | None = None) -> Placement:
        """Which virtual stages each stage worker holds (of a resolved spec, or ``num_stages``)."""
        return placement_for(self.schedule, num_stages or self.num_stages, **self.schedule_args)

    @property
    def traits(self) -> ScheduleTraits:
        """The schedule's traits (``pipewave.service.schedules.TRAITS``) of a resolved schedule."""
        if self.schedule == "auto":
            raise ValueError(f"job {self.name}: schedule 'auto' is not resolved yet")
        return schedule_traits(self.schedule)

    @property
    def synchronous(self) -> bool:
        """Whether the schedule flushes every step (schedule "auto" picks only such ones)."""
        return self.schedule == "auto" or self.traits.synchronous

    def stage_config(self) -> StageConfig:
        """What the stage actors of this resolved spec need to know (``StageWorker``'s config)."""
        d, o = self.data, self.optimizer
        return StageConfig(
            model=self.model_settings,
            data=DataSettings(kind=d.kind, path=d.path if isinstance(d, TextData | TokensData) else None),
            optimizer=OptimizerSettings(kind=o.kind, lr=o.lr, betas=o.betas, eps=o.eps,
                                        weight_decay=o.weight_decay, momentum=o.momentum),
            seed=self.seed, batch_size=self.batch_size, num_microbatches=self.num_microbatches,
            schedule=self.traits.name, placement=self.placement(), init_from=self.init_from)

    @property
    def seq_len(self) -> int:
        """The sequence length the job trains at: ``data.seq_len``, else the model's own (gpt and
        mlp fix one; a plugin's config may)."""
        if self.data.seq_len is not None:
            return self.data.seq_len
        m = self.model
        if isinstance(m, BuiltinModel):
            return m.seq_len
        fixed = m.config.get("seq_len") if isinstance(m, PluginSpec) else None
        if isinstance(fixed, int):
            return fixed
        raise ValueError(f"job {self.name}: data.seq_len is needed for a {m.kind} model")

    @property
    def model_settings(self) -> ModelSettings:
        """The model as the workers build it (``pipewave.workers.models.model_for``)."""
        return ModelSettings.of(self.model.kind, self.model.model_dump(mode="json"), self.seq_len)

    @property
    def is_resolved(self) -> bool:
        return "auto" not in (self.stages, self.microbatches, self.schedule, self.chunks, self.waves)

    @property
    def num_stages(self) -> int:
        """The stage count of a resolved spec (see ``resolve``)."""
        if self.stages == "auto":
            raise ValueError(f"job {self.name}: stages 'auto' is not resolved yet")
        return self.stages

    @property
    def num_microbatches(self) -> int:
        if self.microbatches == "auto":
            raise ValueError(f"job {self.name}: microbatches 'auto' is not resolved yet")
        return self.microbatches

    @property
    def microbatch_size(self) -> int:
        """Samples per microbatch; with microbatches "auto", that of the profiling shape (the
        batch split in the largest divisor count up to 4; the planner rescales per candidate)."""
        if self.microbatches == "auto":
            return self.batch_size // max(_divisors_up_to(self.batch_size, 4))
        return self.batch_size // self.microbatches

    def resolve(self, stages: int, microbatches: int, keep_bounds: bool = False,
                schedule: str | None = None, chunks: int | None = None,
                waves: int | None = None) -> JobSpec:
        """This spec with the planner's choices filled in (validated again); ``schedule`` (with
        its ``chunks`` or ``waves``) replaces the schedule when given."""
        data = self.model_dump(mode="json")
        data.update(stages=stages, microbatches=microbatches)
        if schedule is not None:
            data.update(schedule=schedule, chunks=chunks, waves=waves)
        if not keep_bounds:
            data.update(max_stages=None)
        try:
            return JobSpec.model_validate(data)
        except ValidationError as err:
            raise SpecError(f"invalid job spec: {_one_line(err)}") from None


_KIND_TAGS = ("gpt", "mlp", "transformers", "plugin", "stdlib", "text", "synthetic", "tokens")
_UNION_TAGS = ("int", "constrained-int", "float", "constrained-float", "str", "none")


def field_path(loc: list[str]) -> list[str]:
    """A validation error's location as the user wrote it: without the model's or data's kind
    (the tag pydantic puts in the path of a discriminated union)."""
    if len(loc) >= 2 and loc[0] in ("model", "data") and loc[1] in _KIND_TAGS:
        return [loc[0], *loc[2:]]
    return loc


def _one_line(err: ValidationError) -> str:
    """The errors in one line; a field whose value fails every member of a union (a number or
    "auto") gets one entry: ``waves: Input should be less than or equal to 8 or 'auto'``."""
    fields: dict[str, list[str]] = {}
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        while len(loc) > 1 and (loc[-1] in _UNION_TAGS or loc[-1].startswith("literal[")):
            loc.pop()  # (the union member pydantic tried)
        where = ".".join(field_path(loc))
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(f"{where}."):
            where = ""  # (the message names its field itself: model.config.depth: ...)
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        seen = fields.setdefault(where, [])
        seen.append(msg.removeprefix("Input should be ") if seen and msg.startswith("Input should be")
                    else msg)
    return "; ".join(f"{where}: {' or '.join(msgs)}" if where else " or ".join(msgs)
                     for where, msgs in fields.items())


def parse_spec(data: object, base_dir: Path | None = None, root: Path | None = None) -> JobSpec:
    """Validate a mapping into a JobSpec and check what it names (``pipewave.service.inputs``):
    paths made absolute (relative ones against ``base_dir``; with ``root``, confined to it),
    the model built from its config against the data and its weight files."""
    from pipewave.service.inputs import check_job, resolve_paths

    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"invalid job spec: {_one_line(err)}") from None
    spec = resolve_paths(spec, base_dir, root)
    check_job(spec)
    return spec


def load_spec(path: str | Path, overrides: dict[str, object] | None = None) -> JobSpec:
    """Read a YAML or JSON job file; raise SpecError with one readable line on any problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"job file not found: {path}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"cannot read job file {path}: {first}") from None
    if not isinstance(data, dict):
        raise SpecError(f"job file {path} must hold a mapping of fields, not {type(data).__name__}")
    data.update(overrides or {})
    return parse_spec(data, base_dir=p.parent)
