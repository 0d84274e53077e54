"""What a job spec names outside itself, checked before a job is accepted.

A spec is data: it names files and folders (a text corpus, a tokenized dataset, a pretrained
model, weights to start from) and a model (a built-in, a transformers config, an installed
plugin). ``resolve_paths`` makes every path absolute and, for the service, confines it to the
data root; ``check_job`` builds the model from its config (on the meta device: no weights) and
checks it against the data and the weight files. Both raise ``SpecError`` with one readable
line, so ``pipewave train`` exits 2 and ``POST /jobs`` answers 422 before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipewave.service.spec import (
    BYTE_DATA,
    JobSpec,
    SpecError,
    TextData,
    TokensData,
    TransformersSpec,
)
from pipewave.workers.contract import PipelineModel


def _checked_path(raw: str, field: str, base_dir: Path | None, root: Path | None) -> Path:
    """``raw`` made absolute (relative: to ``base_dir``, or to ``root`` when confined)."""
    if "\x00" in raw:
        raise SpecError(f"invalid job spec: {field}: a path cannot hold a NUL character")
    given = Path(raw).expanduser()
    if root is not None:
        if ".." in given.parts:
            raise SpecError(f"invalid job spec: {field}: '..' is not allowed")
        base: Path | None = root
    else:
        base = base_dir
    path = given if given.is_absolute() or base is None else base / given
    try:
        path = path.resolve()
        if root is not None and not path.is_relative_to(root.resolve()):
            raise SpecError(f"invalid job spec: {field}: must lie inside the data root {root}")
        path.stat()
    except FileNotFoundError:
        where = " in the data root" if root is not None else ""
        raise SpecError(f"invalid job spec: {field}: no such file or folder{where}: {raw}") from None
    except OSError as err:  # a name too long, a loop of links, no permission
        raise SpecError(f"invalid job spec: {field}: cannot use {raw[:80]!r}: "
                        f"{err.strerror or type(err).__name__}") from None
    return path


def _need(path: Path, field: str, raw: str, what: str, test: Callable[[Path], bool]) -> None:
    if not test(path):
        raise SpecError(f"invalid job spec: {field}: {raw} is not {what}")


def resolve_paths(spec: JobSpec, base_dir: Path | None = None, root: Path | None = None) -> JobSpec:
    """``spec`` with its paths absolute and existing: ``data.path`` (a text file or a dataset
    folder with meta.json), ``model.pretrained`` (a folder with config.json) and ``init_from``
    (a checkpoint or an exported model folder). With ``root`` (the service's data root) every
    path must lie inside it, relative ones are taken from it and '..' is refused."""
    update: dict[str, Any] = {}
    d = spec.data
    if isinstance(d, TextData | TokensData):
        path = _checked_path(d.path, "data.path", base_dir, root)
        if isinstance(d, TextData):
            _need(path, "data.path", d.path, "a file", Path.is_file)
        else:
            _need(path, "data.path", d.path, "a dataset folder with meta.json (make one with "
                  "`pipewave prepare`)", lambda p: (p / "meta.json").is_file())
        update["data"] = d.model_copy(update={"path": str(path)})
    m = spec.model
    if isinstance(m, TransformersSpec) and m.pretrained is not None:
        path = _checked_path(m.pretrained, "model.pretrained", base_dir, root)
        _need(path, "model.pretrained", m.pretrained, "a model folder with config.json",
              lambda p: (p / "config.json").is_file())
        update["model"] = m.model_copy(update={"pretrained": str(path)})
    if spec.init_from is not None:
        path = _checked_path(spec.init_from, "init_from", base_dir, root)
        _need(path, "init_from", spec.init_from, "a checkpoint folder (manifest.json) or an exported "
              "model folder (model.safetensors)",
              lambda p: (p / "manifest.json").is_file() or (p / "model.safetensors").is_file())
        update["init_from"] = str(path)
    return spec.model_copy(update=update) if update else spec


def _data_tokens(spec: JobSpec) -> tuple[int, int | None, str]:
    """(vocabulary size, tokens in the corpus if known, what the tokens are) of the spec's data."""
    d = spec.data
    if isinstance(d, TokensData):
        from pipewave.workers.tokens import read_meta

        try:
            meta = read_meta(d.path)
        except (OSError, ValueError) as err:
            raise SpecError(f"invalid job spec: data.path: {_first_line(err)}") from None
        return meta.vocab_size, meta.train_tokens, f"tokens of dataset {d.path}"
    size = Path(d.path).stat().st_size if isinstance(d, TextData) else None
    assert d.kind in BYTE_DATA
    return 256, size, "bytes"


def check_job(spec: JobSpec) -> PipelineModel:
    """Build the spec's model from its config and check it against the data and the weights;
    returns the model (its ``info()`` is what the dashboard shows)."""
    from pipewave.workers.models import model_for

    try:
        model = model_for(spec.model_settings)
        layers = model.num_layers()
        spec.check_layers(layers)
    except (ValueError, TypeError, KeyError, OSError) as err:
        line = _first_line(err)  # (one that names its field, model.config..., keeps its own)
        raise SpecError(f"invalid job spec: {'' if line.startswith('model.') else 'model: '}{line}") from None
    if model.max_seq_len is not None and spec.seq_len > model.max_seq_len:
        raise SpecError(f"invalid job spec: seq_len {spec.seq_len} exceeds the model's maximum "
                        f"{model.max_seq_len}")
    vocab, tokens, what = _data_tokens(spec)
    if model.vocab_size is not None and model.vocab_size < vocab:
        raise SpecError(f"invalid job spec: the model's vocabulary ({model.vocab_size} ids) does not "
                        f"cover the data's ({vocab} ids: {what})")
    if tokens is not None and tokens < spec.seq_len + 1:
        raise SpecError(f"invalid job spec: data.path: {getattr(spec.data, 'path', '')} is shorter "
                        f"than seq_len + 1 = {spec.seq_len + 1} {what.split()[0]} ({tokens})")
    check_weights = getattr(model, "check_weights", None)
    if check_weights is not None:
        try:
            check_weights()
        except (ValueError, OSError) as err:
            raise SpecError(f"invalid job spec: model.pretrained: {_first_line(err)}") from None
    if spec.init_from is not None:
        _check_init_from(spec, model)
    return model


def _check_init_from(spec: JobSpec, model: PipelineModel) -> None:
    """A checkpoint must be of the same model (its layers' names and count)."""
    manifest = Path(spec.init_from or "") / "manifest.json"
    if not manifest.is_file():
        return  # an exported folder: its tensors are checked against the model as stages load
    try:
        saved = JobSpec.model_validate(json.loads(manifest.read_text())["spec"])
        from pipewave.workers.models import model_for

        theirs = model_for(saved.model_settings)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpecError(f"invalid job spec: init_from: not a readable checkpoint: "
                        f"{_first_line(err)}") from None
    if theirs.layer_names() != model.layer_names() or theirs.info() != model.info():
        raise SpecError("invalid job spec: init_from: the checkpoint is of another model "
                        f"({saved.model.kind}, {theirs.num_layers()} layers)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = f"missing {err.args[0]!r}"
    return text.splitlines()[0] if text else type(err).__name__
