"""/api/v1/models: the models a job spec can name, each with the JSON schema of its spec section.

The built-ins (``gpt``, ``mlp``), Hugging Face ``transformers`` causal LMs (with the
architectures pipewave builds) and every installed model plugin (entry-point group
``pipewave.models``, ``pipewave.workers.plugins``) with its config's schema.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pipewave.service.spec import GPTSpec, MLPSpec, PluginSpec, TransformersSpec
from pipewave.workers.plugins import PluginInfo, installed_plugins

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/models", tags=["models"])


class ModelKindPublic(BaseModel):
    kind: str = Field(description="the job spec's model.kind: gpt, mlp, transformers or plugin")
    name: str = Field(description="the kind, or a plugin's name (model.name)")
    description: str
    spec_schema: dict[str, Any] = Field(description="JSON schema of the job spec's model section")
    config_schema: dict[str, Any] | None = Field(None, description="a plugin's: of model.config")
    architectures: list[str] = Field([], description="transformers: the model_type values it builds")
    distribution: str | None = Field(None, description="a plugin's: the package that installs it")
    version: str | None = None
    error: str | None = Field(None, description="a plugin that is installed but does not load: why")


class ModelList(BaseModel):
    items: list[ModelKindPublic]


@router.get("", response_model=ModelList)
def list_models() -> ModelList:
    return ModelList(items=[*_builtins(), *(_plugin(p) for p in installed_plugins().values())])


@functools.cache
def _builtins() -> tuple[ModelKindPublic, ...]:
    return (
        ModelKindPublic(kind="gpt", name="gpt", spec_schema=GPTSpec.model_json_schema(),
                        description="pipewave's byte-level GPT: pre-LN transformer blocks, each cut "
                                    "into its attention and MLP halves"),
        ModelKindPublic(kind="mlp", name="mlp", spec_schema=MLPSpec.model_json_schema(),
                        description="a residual MLP language model, tiny and fast"),
        ModelKindPublic(kind="transformers", name="transformers",
                        spec_schema=TransformersSpec.model_json_schema(),
                        description="a Hugging Face transformers causal LM, from an inline config or "
                                    "a pretrained folder", architectures=_architectures()),
    )


def _architectures() -> list[str]:
    """The transformers model types pipewave builds (``pipewave.workers.hf``), if it says."""
    try:
        from pipewave.workers import hf
    except ImportError as err:
        logger.warning("cannot list the transformers architectures: %s", err)
        return []
    for attr in ("SUPPORTED_MODEL_TYPES", "FAMILIES"):  # (a table by model_type)
        value = getattr(hf, attr, None)
        if isinstance(value, dict | list | tuple | set | frozenset):
            return sorted(str(v) for v in value)
    return []


def _plugin(p: PluginInfo) -> ModelKindPublic:
    """A plugin; its spec schema is PluginSpec's with its name and its own config schema."""
    config = dict(p.config_schema)
    defs = config.pop("$defs", {})  # (its "#/$defs/..." references resolve at the top)
    spec = {**PluginSpec.model_json_schema(), "title": f"plugin {p.name}", "description": p.description}
    spec["properties"] = {**spec["properties"], "name": {"const": p.name, "type": "string"},
                          "config": config or {"type": "object"}}
    if defs:
        spec["$defs"] = {**spec.get("$defs", {}), **defs}
    return ModelKindPublic(kind="plugin", name=p.name, description=p.description, spec_schema=spec,
                           config_schema=p.config_schema or None, distribution=p.distribution,
                           version=p.version, error=p.error)
