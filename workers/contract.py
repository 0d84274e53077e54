"""The model contract: what pipewave needs of a model to pipeline-train it.

A pipeline-trainable model is an ordered list of layers plus a loss, built from a validated
config. Layer 0 takes a microbatch's token ids, int64 (b, T); layer i > 0 takes layer i-1's
output; the loss takes the last layer's output and the targets, int64 (b, T). A layer's output
(a stage boundary) is a *tree* of tensors: one tensor, or a tuple / list / dict of trees, with
any shapes and dtypes. Nothing is assumed about it: a stage learns the boundaries it receives by
running the layers on the meta device (``boundaries``). What every stage can compute locally
(position ids, rotary tables, causal masks) belongs inside the layers, never in a boundary.

Layer ``i`` is initialised from ``(seed, i)`` alone (``build_layers`` seeds a forked RNG per
layer), so any subset of layers is bit-identical to the same layers of the whole model; a model
with weights in files (a pretrained folder) loads each layer's tensors instead.

Every parameter has a global name ``"<layer index>.<name inside the layer>"`` (the keys of
``build_model``'s ``nn.Sequential``): checkpoints, moves and exports use them.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

Tree = Any  # a Tensor, or a tuple / list / dict of trees


@dataclass(frozen=True)
class ModelSettings:
    """A model as the workers see it: its kind and its validated config as canonical JSON
    (``config``), and the sequence length it trains at (``seq_len``: from the model config when
    it fixes one, else from the data). Hashable: processes cache the built model by it."""

    kind: str  # "gpt" | "mlp" | "transformers" | "plugin"
    config: str  # canonical JSON of the model spec (``json.dumps(..., sort_keys=True)``)
    seq_len: int

    @property
    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.config))

    @classmethod
    def of(cls, kind: str, config: dict[str, Any], seq_len: int) -> ModelSettings:
        return cls(kind=kind, config=json.dumps(config, sort_keys=True), seq_len=seq_len)


@dataclass(frozen=True)
class ModelInfo:
    """What the API and the dashboard show of a model."""

    kind: str  # "gpt", "mlp", "transformers", "plugin"
    architecture: str  # e.g. "gpt", "LlamaForCausalLM", "mixer (plugin pipewave-mixer)"
    parameters: int
    layers: int
    vocab_size: int | None


class PipelineModel(ABC):
    """A model pipewave can cut into stages (see the module's docstring)."""

    kind: str = ""
    architecture: str = ""
    export_format: str = "pipewave"  # "pipewave" (safetensors of global names) | "transformers"

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings

    # -- what a subclass defines ----------------------------------------------------------------
    @abstractmethod
    def layer_names(self) -> list[str]:
        """One readable name per cuttable layer, in order (e.g. "embed", "layer3", "head")."""

    @abstractmethod
    def make_layer(self, index: int) -> nn.Module:
        """Layer ``index`` with fresh weights; ``build_layers`` calls it inside an RNG seeded
        from (seed, index), so it may draw its initialisation from the global torch RNG."""

    @abstractmethod
    def loss(self, output: Tree, targets: Tensor) -> Tensor:
        """The scalar training loss of the last layer's output for targets int64 (b, T)."""

    @property
    def vocab_size(self) -> int | None:
        """How many token ids layer 0 reads (None: any); the data's vocabulary must fit in it."""
        return None

    @property
    def max_seq_len(self) -> int | None:
        """The longest sequence the model can take (None: no limit)."""
        return None

    def pretrained_weights(self, names: Sequence[str]) -> dict[str, Tensor] | None:
        """The tensors of the global parameter names ``names`` from the model's own weight files
        (a pretrained folder), or None when the model starts from its seeded initialisation."""
        return None

    # -- derived --------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self.settings.seq_len

    def num_layers(self) -> int:
        return len(self.layer_names())

    def build_layers(self, seed: int, indices: Sequence[int] | None = None) -> list[nn.Module]:
        """The layers at ``indices`` (all if None), in the order given; each from (seed, index)
        in a forked RNG (the global RNG is left as it was), or from the pretrained weights."""
        n = self.num_layers()
        idx = list(range(n) if indices is None else indices)
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"layer index must be an int, got {i!r}")
            if not 0 <= i < n:
                raise IndexError(f"layer index {i} out of range for a {self.kind} with {n} layers")
        if len(set(idx)) != len(idx):
            raise ValueError(f"duplicate layer indices in {idx}")
        layers = []
        for i in idx:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(layer_seed(seed, i))
                layers.append(self.make_layer(i))
        names = [f"{i}.{n}" for i, layer in zip(idx, layers, strict=True)
                 for n, _ in layer.named_parameters()]
        loaded = self.pretrained_weights(names)
        if loaded is not None:
            load_into(layers, idx, loaded, "the pretrained weights")
        return layers

    def build_model(self, seed: int) -> nn.Sequential:
        """The whole model; its state_dict keys are the global parameter names."""
        return nn.Sequential(*self.build_layers(seed))

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's global name and shape (from layers built on the meta device)."""
        with torch.device("meta"):
            return {f"{i}.{n}": tuple(p.shape) for i in range(self.num_layers())
                    for n, p in self.make_layer(i).named_parameters()}

    def info(self) -> ModelInfo:
        with torch.device("meta"):
            layers = [self.make_layer(i) for i in range(self.num_layers())]
        params = sum(p.numel() for layer in layers for p in layer.parameters())
        return ModelInfo(self.kind, self.architecture or self.kind, params, len(layers),
                         self.vocab_size)

    def export(self, state: dict[str, Tensor], directory: Path) -> None:
        """Write the weights ``state`` (global names) as a folder other tools read: by default
        ``model.safetensors`` keyed by global names + ``pipewave.json`` (the model settings)."""
        save_pipewave_export(state, self.settings, directory)

    def read_export(self, directory: Path, names: Sequence[str]) -> dict[str, Tensor]:
        """The tensors of global names ``names`` from a folder ``export`` wrote (``init_from``)."""
        return read_safetensors(directory / "model.safetensors", {n: n for n in names})

    def boundaries(self, microbatch_size: int) -> list[Tree]:
        """Every layer's output at a (microbatch_size, seq_len) batch, as meta tensors (shapes,
        dtypes and tree structure only): ``boundaries[i]`` is what layer i sends to layer i+1."""
        return meta_boundaries(self, microbatch_size)


def layer_seed(seed: int, index: int) -> int:
    """A 63-bit seed derived from (seed, layer index) alone."""
    digest = hashlib.blake2b(f"pipewave/layer/{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def load_into(layers: Sequence[nn.Module], indices: Sequence[int], tensors: dict[str, Tensor],
              source: str) -> None:
    """Copy ``tensors`` (global names) into ``layers``; every parameter must be there with its
    shape, else one readable error."""
    for i, layer in zip(indices, layers, strict=True):
        for name, p in layer.named_parameters():
            key = f"{i}.{name}"
            t = tensors.get(key)
            if t is None:
                raise ValueError(f"{source} have no tensor for parameter {key}")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{source}: parameter {key} has shape {tuple(t.shape)}, the model "
                                 f"config makes it {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(t.to(p.dtype))


_META_CACHE: dict[tuple[ModelSettings, int], list[Tree]] = {}


def meta_boundaries(model: PipelineModel, microbatch_size: int) -> list[Tree]:
    key = (model.settings, microbatch_size)
    if key not in _META_CACHE:
        with torch.device("meta"):
            layers = [model.make_layer(i) for i in range(model.num_layers())]
            x: Tree = torch.zeros(microbatch_size, model.seq_len, dtype=torch.long)
            out = []
            with torch.no_grad():
                for layer in layers:
                    x = layer(x)
                    out.append(x)
        _META_CACHE[key] = out
    return _META_CACHE[key]


def save_pipewave_export(state: dict[str, Tensor], settings: ModelSettings, directory: Path) -> None:
    """The default export: ``model.safetensors`` keyed by global names + ``pipewave.json``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt", "producer": "pipewave"})
    meta = {"format": "pipewave-export/1", "kind": settings.kind, "config": settings.options,
            "seq_len": settings.seq_len}
    (directory / "pipewave.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_safetensors(path: Path, keys: dict[str, str]) -> dict[str, Tensor]:
    """``{ours: tensor}`` for ``keys`` (ours -> the file's name), reading only those tensors;
    a missing file or tensor is one readable error."""
    from safetensors import safe_open

    if not path.is_file():
        raise ValueError(f"no weights file {path}")
    out: dict[str, Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            have = set(f.keys())
            missing = [theirs for theirs in keys.values() if theirs not in have]
            if missing:
                raise ValueError(f"{path.name} has no tensor {missing[0]!r} "
                                 f"({len(missing)} of {len(keys)} missing)")
            for ours, theirs in keys.items():
                out[ours] = f.get_tensor(theirs)
    except (OSError, RuntimeError) as err:  # (safetensors' own error for a damaged file)
        raise ValueError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    return out
