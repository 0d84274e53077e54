"""Hugging Face weight folders for ``pipewave.workers.hf``: names, safetensors, export.

A transformers causal LM's state-dict names map one to one to pipewave's global names
(``"<layer index>.<name inside the layer>"``); for a Llama with N decoder layers::

    0.embed_tokens.weight            <-> model.embed_tokens.weight
    3.layer.self_attn.q_proj.weight  <-> model.layers.2.self_attn.q_proj.weight
    {N+1}.norm.weight                <-> model.norm.weight
    {N+1}.lm_head.weight             <-> lm_head.weight

(GPT-2: ``transformer.`` instead of ``model.``, ``h`` instead of ``layers``, ``wte``/``wpe`` in
layer 0 and ``ln_f`` in the head). A folder holds ``model.safetensors`` or a sharded
``model.safetensors.index.json``; files saved from the bare base model (no ``model.`` /
``transformer.`` prefix) read as well. Only the tensors asked for are read; ``check`` reads the
headers alone.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"


@dataclass(frozen=True)
class Naming:
    """Global names <-> a ``*ForCausalLM``'s state-dict names."""

    base: str  # the base model's attribute: "model" | "transformer"
    stack: str  # its decoder layers' ModuleList: "layers" | "h"
    decoders: int  # how many decoder layers (pipewave layers 1..decoders)

    def hf_name(self, name: str) -> str:
        index, _, rest = name.partition(".")
        i = int(index) if index.isdigit() else -1
        if i == 0:
            return f"{self.base}.{rest}"
        if 1 <= i <= self.decoders and rest.startswith("layer."):
            return f"{self.base}.{self.stack}.{i - 1}.{rest.removeprefix('layer.')}"
        if i == self.decoders + 1:
            return rest if rest.startswith("lm_head.") else f"{self.base}.{rest}"
        raise ValueError(f"{name!r} is not a parameter name of this model")

    def hf_names(self, names: Iterable[str]) -> dict[str, str]:
        return {n: self.hf_name(n) for n in names}


class WeightFolder:
    """The safetensors of one folder, by tensor name (headers only until ``read``)."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = folder, what
        try:
            if (folder / INDEX).is_file():
                weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
                self.files = {str(k): folder / str(v) for k, v in weight_map.items()}
            elif (folder / SINGLE).is_file():
                self.files = dict.fromkeys(_keys(folder / SINGLE), folder / SINGLE)
            else:
                raise ValueError(f"{what} {folder} has no {SINGLE} or {INDEX}")
        except (OSError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"{what} {folder}: cannot read its weight index: {one_line(err)}") from None

    def locate(self, hf_names: Mapping[str, str], base: str, tied: Mapping[str, str]) -> dict[str, str]:
        """``{ours: the folder's key}``: the HF name, else the name without the base model's
        prefix, else (for an untied head in a folder whose config ties it) the tensor it is tied to."""
        out = {}
        for ours, theirs in hf_names.items():
            for cand in (theirs, theirs.removeprefix(base + "."), *_tied(theirs, tied, base)):
                if cand in self.files:
                    out[ours] = cand
                    break
            else:
                raise ValueError(f"{self.what} {self.folder} has no tensor {theirs!r} (the model "
                                 "config needs it)")
        return out

    def shapes(self, keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Each key's shape, from the file headers (no tensor data)."""
        return self._open(keys, lambda f, k: tuple(f.get_slice(k).get_shape()))

    def read(self, keys: Mapping[str, str]) -> dict[str, Tensor]:
        """``{ours: tensor}`` for ``keys`` (ours -> the folder's key), reading only those."""
        by_key = self._open(keys.values(), lambda f, k: f.get_tensor(k))
        return {ours: by_key[theirs] for ours, theirs in keys.items()}

    def _open(self, keys: Iterable[str], get: Any) -> dict[str, Any]:
        from safetensors import SafetensorError, safe_open

        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.files[k], []).append(k)
        out: dict[str, Any] = {}
        for path, names in by_file.items():
            try:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    have = set(f.keys())
                    for k in names:
                        if k not in have:
                            raise ValueError(f"{self.what} {self.folder}: {path.name} has no tensor "
                                             f"{k!r} (its index names it)")
                        out[k] = get(f, k)
            except (OSError, RuntimeError, SafetensorError) as err:
                raise ValueError(f"{self.what} {self.folder}: cannot read {path.name}: "
                                 f"{one_line(err)}") from None
        return out


def check_folder(folder: WeightFolder, naming: Naming, expected: Mapping[str, tuple[int, ...]],
                 tied: Mapping[str, str]) -> None:
    """Every parameter of ``expected`` (global name -> shape) is in the folder with that shape."""
    keys = folder.locate(naming.hf_names(expected), naming.base, tied)
    shapes = folder.shapes(keys.values())
    for ours, want in expected.items():
        got = shapes[keys[ours]]
        if got != tuple(want):
            raise ValueError(f"{folder.what} {folder.folder}: tensor {keys[ours]!r} has shape {got}, "
                             f"the model config makes it {tuple(want)}")


def write_folder(state: Mapping[str, Tensor], naming: Naming, config: Any, architecture: str,
                 directory: Path) -> None:
    """``config.json`` + ``model.safetensors`` (HF names): what ``from_pretrained`` loads."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {naming.hf_name(k): v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / SINGLE), metadata={"format": "pt"})
    out = copy.deepcopy(config)
    out.architectures = [architecture]
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    out.dtype = floats.pop() if len(floats) == 1 else torch.float32
    out.save_pretrained(str(directory))


def _keys(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except SafetensorError as err:
        raise OSError(one_line(err)) from None


def _tied(name: str, tied: Mapping[str, str], base: str) -> tuple[str, ...]:
    target = tied.get(name)
    return () if target is None else (target, target.removeprefix(base + "."))


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's, the bare key, names its type)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    # a config class's validator wraps the reason: "Class validation error for validator
    # 'validate_architecture': ValueError: The hidden size (64) is not a multiple of ..."
    text = re.sub(r"^Class validation error for validator '\w+': \w+: ", "", text)
    if isinstance(err, KeyError) or not text:
        return f"{type(err).__name__} {text}".strip()
    return text
