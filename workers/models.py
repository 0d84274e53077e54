"""The model zoo's front door: any model config -> its ``PipelineModel`` (the contract in
``pipewave.workers.contract``), and the functions the rest of pipewave calls on models.

Kinds: the built-in ``gpt`` and ``mlp`` (``pipewave.workers.builtin``), ``transformers``
(Hugging Face causal LMs, ``pipewave.workers.hf``) and ``plugin`` (installed packages that
register models under the entry-point group ``pipewave.models``, ``pipewave.workers.plugins``).
A config is a ``ModelSettings`` (what stage actors get) or any object with ``model_dump`` or the
built-ins' attributes (the job spec's model section, tests' namespaces).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from pipewave.workers.builtin import GPTModel, MLPModel, cross_entropy
from pipewave.workers.contract import ModelSettings, PipelineModel

logger = logging.getLogger(__name__)

KINDS = ("gpt", "mlp", "transformers", "plugin")


@functools.lru_cache(maxsize=32)
def _model(settings: ModelSettings) -> PipelineModel:
    if settings.kind == "gpt":
        return GPTModel(settings)
    if settings.kind == "mlp":
        return MLPModel(settings)
    if settings.kind == "transformers":
        from pipewave.workers.hf import TransformersModel

        return TransformersModel(settings)
    if settings.kind == "plugin":
        from pipewave.workers.plugins import plugin_model

        return plugin_model(settings)
    raise ValueError(f"unknown model kind {settings.kind!r}; expected one of {KINDS}")


def settings_of(cfg: Any) -> ModelSettings:
    """``cfg`` as ``ModelSettings``: itself, or built from its fields (``seq_len`` from them)."""
    if isinstance(cfg, ModelSettings):
        return cfg
    if hasattr(cfg, "model_dump"):
        fields = cfg.model_dump(mode="json")
    else:
        fields = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    kind = fields.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    seq_len = fields.get("seq_len")
    if not isinstance(seq_len, int):
        raise ValueError(f"a {kind} model takes its sequence length from the data: give the "
                         "job spec's model settings (JobSpec.model_settings)")
    return ModelSettings.of(str(kind), fields, seq_len)


def model_for(cfg: Any) -> PipelineModel:
    """The (cached, immutable) model of a config."""
    return _model(settings_of(cfg))


def num_layers(cfg: Any) -> int:
    """Number of cuttable layers."""
    return model_for(cfg).num_layers()


def layer_names(cfg: Any) -> list[str]:
    """Human-readable layer names, one per cuttable layer."""
    return model_for(cfg).layer_names()


def build_layers(cfg: Any, seed: int, indices: Sequence[int] | None = None) -> list[nn.Module]:
    """The layers at ``indices`` (all if None): layer i from (seed, i) alone, so any subset is
    bit-identical to the same layers of a full build; the global torch RNG is left untouched."""
    return model_for(cfg).build_layers(seed, indices)


def build_model(cfg: Any, seed: int) -> nn.Sequential:
    """The whole model; state_dict keys are "<layer index>.<param name>"."""
    return model_for(cfg).build_model(seed)


def loss_fn(output: Tensor, targets: Tensor) -> Tensor:
    """The built-in models' loss: mean cross-entropy, logits (B, T, V), targets int64 (B, T)."""
    return cross_entropy(output, targets)
