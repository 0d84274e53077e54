"""Hugging Face transformers causal LMs as an implementation of the model contract
(``pipewave.workers.contract``): ``model: {kind: transformers, config: {...}, pretrained: PATH}``.

Architectures: ``llama``, ``mistral`` and ``qwen2`` (one code path: ``model.embed_tokens``,
``model.layers[i]``, ``model.norm``, ``model.rotary_emb``, ``lm_head``) and ``gpt2``
(``transformer.wte``/``wpe``/``h[i]``/``ln_f``, ``lm_head``). The config is built offline, from
the inline ``config`` fields, or from a local folder's ``config.json`` with the inline fields
overriding it; a folder's safetensors then give the initial weights.

Layers: ``embed`` (token embeddings; GPT-2 adds its learned positions), one per decoder layer,
and ``head`` (final norm + ``lm_head``). Each layer is transformers' own module (a deep copy of
the model built on the meta device, so the code that runs is transformers'), and each decoder
layer computes locally what the base model's ``forward`` computes for it (position ids, rotary
tables, the causal mask), so every boundary is the hidden states (b, T, hidden). Attention is
``sdpa``. Weights start as transformers' ``_init_weights`` draws them, from the layer's own seed.

Training must be deterministic and stages must own disjoint parameters: nonzero dropout and tied
input/output embeddings are refused with the config fields to set.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipewave.workers.builtin import cross_entropy
from pipewave.workers.contract import ModelSettings, PipelineModel
from pipewave.workers.hf_weights import Naming, WeightFolder, check_folder, one_line, write_folder


@dataclass(frozen=True)
class Family:
    """Where a ``*ForCausalLM`` keeps its parts."""

    causal_lm: str  # the transformers class
    base: str  # the base model's attribute
    stack: str  # the decoder layers' ModuleList in it
    norm: str  # the final norm in it
    dropout: tuple[str, ...]  # config fields the model reads as dropout probabilities


_LLAMA = ("model", "layers", "norm", ("attention_dropout",))
FAMILIES = {
    "gpt2": Family("GPT2LMHeadModel", "transformer", "h", "ln_f",
                   ("attn_pdrop", "embd_pdrop", "resid_pdrop")),
    "llama": Family("LlamaForCausalLM", *_LLAMA),
    "mistral": Family("MistralForCausalLM", *_LLAMA),
    "qwen2": Family("Qwen2ForCausalLM", *_LLAMA),
}
SUPPORTED = ", ".join(sorted(FAMILIES))


# ----------------------------------------------------------------------------- layers


class TokenEmbedding(nn.Module):
    """Llama-family layer 0: int64 (b, T) -> (b, T, hidden)."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)  # type: ignore[no-any-return]


class GPT2Embedding(nn.Module):
    """GPT-2 layer 0, token + learned position embeddings: int64 (b, T) -> (b, T, hidden)."""

    def __init__(self, wte: nn.Module, wpe: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe = wte, wpe

    def forward(self, input_ids: Tensor) -> Tensor:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # (1, T)
        return self.wte(input_ids) + self.wpe(position_ids)  # type: ignore[no-any-return]


class DecoderLayer(nn.Module):
    """One transformers decoder layer with what the base model's forward gives it, computed
    here: (b, T, hidden) -> (b, T, hidden). ``rotary`` holds buffers only (no parameters)."""

    def __init__(self, layer: nn.Module, rotary: nn.Module | None, config: Any,
                 mask: Callable[..., Any]) -> None:
        super().__init__()
        self.layer, self.rotary = layer, rotary
        self.config, self.mask = config, mask

    def forward(self, hidden_states: Tensor) -> Tensor:
        position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        # position_ids=None: the positions are always 0..T-1 (no packed sequences), which is what
        # the mask would learn from them with a data-dependent check (a device sync; no meta run)
        mask = self.mask(config=self.config, inputs_embeds=hidden_states, attention_mask=None,
                         past_key_values=None, position_ids=None)
        kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": position_ids}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self.rotary(hidden_states, position_ids)  # (cos, sin)
        return self.layer(hidden_states, **kwargs)  # type: ignore[no-any-return]


class Head(nn.Module):
    """Final norm + lm_head: (b, T, hidden) -> logits (b, T, vocab); the norm keeps its
    transformers name (Llama family: ``norm``)."""

    norm_name = "norm"

    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.add_module(self.norm_name, norm)
        self.lm_head = lm_head

    def forward(self, hidden_states: Tensor) -> Tensor:
        norm = self._modules[self.norm_name]
        assert norm is not None
        return self.lm_head(norm(hidden_states))  # type: ignore[no-any-return]


class GPT2Head(Head):
    """GPT-2's: the final LayerNorm is ``ln_f``."""

    norm_name = "ln_f"


# ----------------------------------------------------------------------------- the model


class TransformersModel(PipelineModel):
    """A transformers causal LM cut at its decoder layers (see the module's docstring)."""

    kind = "transformers"
    export_format = "transformers"

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        options = settings.options
        overrides, folder = _options(options)
        self.folder = folder
        self.config, self.folder_tied = build_config(overrides, folder)  # transformers' config
        self.model_type: str = self.config.model_type
        self.family = FAMILIES[self.model_type]
        self.architecture = self.family.causal_lm
        _refuse_untrainable(self.config, self.family)
        if settings.seq_len > self.max_seq_len:
            raise ValueError(f"sequence length {settings.seq_len} exceeds the model's "
                             f"max_position_embeddings {self.max_seq_len}")
        self.meta = _meta_model(self.config, self.family)  # holds self.config, attention: sdpa
        self.decoders: int = self.config.num_hidden_layers
        self.naming = Naming(self.family.base, self.family.stack, self.decoders)
        try:
            self.boundaries(1)
        except Exception as err:  # whatever transformers raises on a bad config
            raise ValueError(f"model.config: {one_line(err)}") from None

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_seq_len(self) -> int:
        return int(self.config.max_position_embeddings)  # GPT-2: n_positions

    def layer_names(self) -> list[str]:
        """["embed", "layer0", ..., "layer{N-1}", "head"]."""
        return ["embed", *[f"layer{i}" for i in range(self.decoders)], "head"]

    def loss(self, output: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(output, targets)

    # -- layers ---------------------------------------------------------------------------------
    def make_layer(self, index: int) -> nn.Module:
        layer = self._layer_on_meta(index)
        device = torch.empty(0).device  # the ambient default device (meta inside `with meta`)
        if device.type != "meta":
            _materialise(layer, device, self.meta._init_weights)
        return layer

    def _layer_on_meta(self, index: int) -> nn.Module:
        base, fam = getattr(self.meta, self.family.base), self.family

        def part(module: nn.Module) -> nn.Module:  # a deep copy sharing the config
            return copy.deepcopy(module, memo={id(self.config): self.config})

        if index == 0:
            if self.model_type == "gpt2":
                return GPT2Embedding(part(base.wte), part(base.wpe))
            return TokenEmbedding(part(base.embed_tokens))
        if index == self.decoders + 1:
            norm, head = part(getattr(base, fam.norm)), part(self.meta.lm_head)
            return GPT2Head(norm, head) if self.model_type == "gpt2" else Head(norm, head)
        if not 1 <= index <= self.decoders:
            raise IndexError(f"layer index {index} out of range for a {self.architecture} with "
                             f"{self.num_layers()} layers")
        i = index - 1
        rotary = getattr(base, "rotary_emb", None)
        return DecoderLayer(part(getattr(base, fam.stack)[i]), None if rotary is None else part(rotary),
                            self.config, self._mask_function(i))

    def _mask_function(self, i: int) -> Callable[..., Any]:
        """The mask the base model's forward gives decoder layer i."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        if self.model_type == "mistral" and self.config.sliding_window is not None:
            return create_sliding_window_causal_mask
        if self.model_type == "qwen2" and self.config.layer_types[i] == "sliding_attention":
            return create_sliding_window_causal_mask
        return create_causal_mask

    # -- weights in files -----------------------------------------------------------------------
    def _tied_keys(self) -> dict[str, str]:
        """For a folder whose own config ties the embeddings: lm_head -> the embedding's name."""
        return dict(getattr(type(self.meta), "_tied_weights_keys", None) or {}) if self.folder_tied else {}

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            layers = [self._layer_on_meta(i) for i in range(self.num_layers())]
        return {f"{i}.{n}": tuple(p.shape) for i, layer in enumerate(layers)
                for n, p in layer.named_parameters()}

    def pretrained_weights(self, names: Sequence[str]) -> dict[str, Tensor] | None:
        if self.folder is None:
            return None
        folder = WeightFolder(self.folder, "pretrained folder")
        return folder.read(folder.locate(self.naming.hf_names(names), self.naming.base, self._tied_keys()))

    def check_weights(self) -> None:
        """The pretrained folder's safetensors hold every parameter with the config's shape
        (headers only: no tensor data is read); one-line ValueError otherwise."""
        if self.folder is not None:
            check_folder(WeightFolder(self.folder, "pretrained folder"), self.naming, self._shapes(),
                         self._tied_keys())

    def export(self, state: dict[str, Tensor], directory: Path) -> None:
        """``config.json`` + ``model.safetensors`` (HF names), loadable with
        ``AutoModelForCausalLM.from_pretrained(directory)`` and usable as ``pretrained:``."""
        write_folder(state, self.naming, self.config, self.architecture, directory)

    def read_export(self, directory: Path, names: Sequence[str]) -> dict[str, Tensor]:
        folder = WeightFolder(directory, "export")
        return folder.read(folder.locate(self.naming.hf_names(names), self.naming.base, {}))


# ----------------------------------------------------------------------------- the config


def _options(options: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    overrides, pretrained = options.get("config"), options.get("pretrained")
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"model.config must be a mapping of transformers config fields, got "
                         f"{type(overrides).__name__}")
    if pretrained is None:
        if not overrides:
            raise ValueError("a transformers model needs model.config (with model_type) or "
                             "model.pretrained (a folder with config.json)")
        return dict(overrides), None
    if not isinstance(pretrained, str) or not Path(pretrained).is_absolute():
        raise ValueError(f"model.pretrained must be an absolute folder path, got {pretrained!r}")
    folder = Path(pretrained)
    if not folder.is_dir():
        raise ValueError(f"pretrained folder {folder} does not exist")
    return dict(overrides or {}), folder


def build_config(overrides: dict[str, Any], folder: Path | None) -> tuple[Any, bool]:
    """The transformers config (offline) and whether the folder's own config ties the input and
    output embeddings (False without a folder)."""
    from transformers import AutoConfig

    fields: dict[str, Any] = {}
    if folder is not None:
        path = folder / "config.json"
        try:
            fields = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"pretrained folder {folder} has no config.json") from None
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path}: {one_line(err)}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path} is not a JSON object")
    model_type = overrides.get("model_type", fields.get("model_type"))
    if folder is not None and fields.get("model_type") not in (None, model_type):
        raise ValueError(f"model.config: model_type {model_type!r} does not match the pretrained "
                         f"folder's {fields.get('model_type')!r}")
    if model_type is None:
        raise ValueError(f"model.config needs a model_type (one of {SUPPORTED})")
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported transformers model_type {model_type!r}; supported: {SUPPORTED}")
    file_fields = {k: v for k, v in fields.items() if k != "model_type"}
    merged = {**file_fields, **{k: v for k, v in overrides.items() if k != "model_type"}}
    try:
        defaults = AutoConfig.for_model(model_type)
        config = AutoConfig.for_model(model_type, **merged)
    except Exception as err:  # transformers' validation errors have many types
        raise ValueError(f"model.config: {one_line(err)}") from None
    known = set(defaults.to_dict()) | set(getattr(defaults, "attribute_map", {}))
    built = config.to_dict()
    unknown = [k for k in overrides if k != "model_type" and k not in known and k in built]
    if unknown:  # kept as a bare attribute: transformers reads no such field
        raise ValueError(f"model.config: {unknown[0]!r} is not a {type(config).__name__} field")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.config: {name} must be a positive int, got {value!r}")
    folder_tied = bool(file_fields.get("tie_word_embeddings", defaults.tie_word_embeddings))
    return config, folder is not None and folder_tied


def _refuse_untrainable(config: Any, family: Family) -> None:
    if config.tie_word_embeddings:
        raise ValueError("tied input/output embeddings are not supported across pipeline stages; "
                         "set tie_word_embeddings: false in model.config")
    dropout = [f for f in family.dropout if getattr(config, f, 0)]
    if dropout:
        raise ValueError(f"dropout makes training nondeterministic; set {', '.join(dropout)}: 0 in "
                         "model.config")
    if getattr(config, "add_cross_attention", False):
        raise ValueError("a causal LM takes no cross-attention; set add_cross_attention: false in "
                         "model.config")


def _meta_model(config: Any, family: Family) -> Any:
    """The whole ``*ForCausalLM`` on the meta device (no memory): the modules layers copy."""
    import transformers

    config._attn_implementation = "sdpa"
    try:
        with torch.device("meta"):
            model = getattr(transformers, family.causal_lm)(config)
    except Exception as err:
        raise ValueError(f"model.config: {one_line(err)}") from None
    assert model.config is config
    return model


@torch.no_grad()
def _materialise(layer: nn.Module, device: torch.device, init: Callable[[nn.Module], None]) -> None:
    """Real storage for a meta layer, initialised by transformers' ``_init_weights`` (children
    before parents, as ``PreTrainedModel.initialize_weights`` does) from the ambient RNG, and
    non-persistent buffers (rotary tables) recomputed; NaN first, so nothing is left unset."""
    layer.to_empty(device=device)
    tensors = [*layer.named_parameters(), *layer.named_buffers()]
    for _, t in tensors:
        if t.is_floating_point():
            t.fill_(float("nan"))
    for child in layer.children():
        child.apply(init)
    unset = [n for n, t in tensors if t.is_floating_point() and bool(torch.isnan(t).any())]
    if unset:
        raise RuntimeError(f"transformers' _init_weights left {unset[0]} unset")
