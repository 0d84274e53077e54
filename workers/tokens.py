"""Tokenized datasets: the folder ``pipewave prepare`` writes, and its reader.

A dataset folder holds three files:

- ``train.bin`` and ``val.bin``: flat arrays of token ids in native little-endian order, no
  header: ``uint16`` when the vocabulary fits in 65 536 ids, else ``uint32``. Documents follow
  each other, each one ended by the tokenizer's end-of-sequence id (EOS), so a training window
  may span a document boundary and see where one document stops. ``val.bin`` holds the held-out
  documents (whole documents, never split between the two files); it is empty when the folder
  was prepared with ``val_fraction`` 0.
- ``meta.json``::

    {"format": "pipewave-tokens/1",
     "tokenizer": {"kind": "bytes" | "tokenizers" | "transformers",
                   "source": "/abs/path/tokenizer.json" | "/abs/folder" | null,
                   "vocab_size": 257, "eos_id": 256, "eos_token": "<|endoftext|>" | null},
     "dtype": "uint16" | "uint32",
     "counts": {"train_tokens": N, "val_tokens": N, "documents": N,
                "train_documents": N, "val_documents": N},
     "sources": [{"path": "/abs/input.jsonl", "sha256": "...", "bytes": N, "documents": N}],
     "val_fraction": 0.01}

  Token counts include the EOS ids. ``meta.json`` is written last: a folder without it is not a
  dataset (an interrupted ``prepare`` leaves none).

The ``bytes`` tokenizer is UTF-8 itself: ids 0-255 are the bytes and id 256 is EOS, so its
vocabulary is 257 ids (stored as uint16). A byte-level model trains on such a folder when its
``vocab_size`` is at least 257: EOS needs an id that no byte has, since any byte (NUL included)
may occur in a text.

The readers map the files (``numpy.memmap``, copy-on-write: nothing is read into memory until a
batch touches it, and nothing is ever written back).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "pipewave-tokens/1"
META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKENIZER_KINDS = ("bytes", "tokenizers", "transformers")
BYTES_VOCAB_SIZE = 257  # the 256 byte values, then EOS
BYTES_EOS_ID = 256
UINT16_VOCAB = 2**16  # ids 0..65535 fit in uint16
DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class TokensError(ValueError):
    """A dataset folder that cannot be read as one; the message is one line."""


def dtype_for(vocab_size: int) -> str:
    """The storage dtype for ``vocab_size`` ids: uint16 when they fit, else uint32."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise TokensError(f"vocabulary of {vocab_size} ids cannot be stored (1 to 2**32 ids)")
    return "uint16" if vocab_size <= UINT16_VOCAB else "uint32"


def split_file(folder: str | Path, split: str) -> Path:
    """``folder/train.bin`` or ``folder/val.bin``."""
    if split not in SPLITS:
        raise TokensError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(folder) / f"{split}.bin"


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer made a dataset: ``kind`` (bytes | tokenizers | transformers), ``source``
    (the tokenizer.json file or the transformers folder, absolute; None for bytes), its vocabulary
    size, EOS id and EOS token text (None for bytes)."""

    kind: str
    source: str | None
    vocab_size: int
    eos_id: int
    eos_token: str | None = None


@dataclass(frozen=True)
class TokenCounts:
    """Tokens (EOS ids included) and documents per split."""

    train_tokens: int
    val_tokens: int
    documents: int
    train_documents: int
    val_documents: int


@dataclass(frozen=True)
class SourceFile:
    """One input of ``prepare``: its absolute path, SHA-256, size and document count."""

    path: str
    sha256: str
    bytes: int
    documents: int


@dataclass(frozen=True)
class TokensMeta:
    """A dataset folder's ``meta.json``, checked against its files (``read_meta``)."""

    path: str  # the folder, absolute
    tokenizer: TokenizerInfo
    dtype: str  # "uint16" | "uint32"
    counts: TokenCounts
    sources: tuple[SourceFile, ...]
    val_fraction: float

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def train_tokens(self) -> int:
        return self.counts.train_tokens

    @property
    def val_tokens(self) -> int:
        return self.counts.val_tokens

    def tokens(self, split: str) -> int:
        """The token count of ``split`` ("train" or "val")."""
        split_file(self.path, split)  # checks the name
        return self.train_tokens if split == "train" else self.val_tokens

    def to_json(self) -> dict[str, Any]:
        """The ``meta.json`` document (without the folder's own path)."""
        return {"format": FORMAT, "tokenizer": asdict(self.tokenizer), "dtype": self.dtype,
                "counts": asdict(self.counts), "sources": [asdict(s) for s in self.sources],
                "val_fraction": self.val_fraction}


# ----------------------------------------------------------------------------- reading


def _field(where: str, doc: dict[str, Any], name: str, kind: type | tuple[type, ...],
           prefix: str = "") -> Any:
    if name not in doc:
        raise TokensError(f"{where}: meta.json has no '{prefix}{name}'")
    value = doc[name]
    number = kind in (int, (int, float))
    ok = isinstance(value, kind) and not isinstance(value, bool) and (not number or doc[name] >= 0)
    if not ok:
        want = "a non-negative integer" if kind is int else "a non-negative number" if number else "text"
        raise TokensError(f"{where}: meta.json '{prefix}{name}' must be {want}, got {value!r}")
    return value


def _section(where: str, doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise TokensError(f"{where}: meta.json {name!r} must be an object, got {value!r}")
    return value


def _parse(where: str, doc: Any, folder: Path) -> TokensMeta:
    if not isinstance(doc, dict):
        raise TokensError(f"{where}: meta.json must be a JSON object")
    if doc.get("format") != FORMAT:
        raise TokensError(f"{where}: meta.json format is {doc.get('format')!r}, expected {FORMAT!r} "
                          "(prepare it again with this pipewave)")
    tok = _section(where, doc, "tokenizer")
    kind = _field(where, tok, "kind", str, "tokenizer.")
    if kind not in TOKENIZER_KINDS:
        raise TokensError(f"{where}: meta.json tokenizer.kind {kind!r} is not one of {TOKENIZER_KINDS}")
    source = tok.get("source")
    eos_token = tok.get("eos_token")
    if not all(v is None or isinstance(v, str) for v in (source, eos_token)):
        raise TokensError(f"{where}: meta.json tokenizer.source and tokenizer.eos_token must be text or null")
    info = TokenizerInfo(kind, source, _field(where, tok, "vocab_size", int, "tokenizer."),
                         _field(where, tok, "eos_id", int, "tokenizer."), eos_token)
    if not 0 <= info.eos_id < info.vocab_size:
        raise TokensError(f"{where}: meta.json eos_id {info.eos_id} is outside the vocabulary "
                          f"(0..{info.vocab_size - 1})")
    dtype = _field(where, doc, "dtype", str)
    if dtype not in DTYPES:
        raise TokensError(f"{where}: meta.json dtype {dtype!r} is not one of {tuple(DTYPES)}")
    if info.vocab_size > np.iinfo(DTYPES[dtype]).max + 1:
        raise TokensError(f"{where}: meta.json dtype {dtype} cannot hold {info.vocab_size} token ids")
    c = _section(where, doc, "counts")
    counts = TokenCounts(*(_field(where, c, n, int, "counts.") for n in TokenCounts.__dataclass_fields__))
    if counts.train_documents + counts.val_documents != counts.documents:
        raise TokensError(f"{where}: meta.json counts: train_documents + val_documents != documents")
    raw_sources = doc.get("sources", [])
    if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
        raise TokensError(f"{where}: meta.json 'sources' must be a list of objects")
    sources = tuple(SourceFile(_field(where, s, "path", str, "sources[]."),
                               _field(where, s, "sha256", str, "sources[]."),
                               _field(where, s, "bytes", int, "sources[]."),
                               _field(where, s, "documents", int, "sources[].")) for s in raw_sources)
    val_fraction = float(_field(where, doc, "val_fraction", (int, float)))
    return TokensMeta(str(folder), info, dtype, counts, sources, val_fraction)


def read_meta(path: str | Path) -> TokensMeta:
    """The dataset folder ``path``'s meta.json, checked: its fields, and each split file's size
    against its token count. Errors are one line (``TokensError``, a ValueError)."""
    folder = Path(path).expanduser().resolve()
    where = f"dataset folder {path}"
    if not folder.exists():
        raise TokensError(f"{where} does not exist (resolved to {folder})")
    if not folder.is_dir():
        raise TokensError(f"{where} is not a folder (resolved to {folder})")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise TokensError(f"{where} has no {META_FILE} (make one with `pipewave prepare`)")
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokensError(f"{where}: meta.json is not valid JSON ({str(err).splitlines()[0]})") from None
    meta = _parse(where, doc, folder)
    itemsize = DTYPES[meta.dtype].itemsize
    for split in SPLITS:
        file = split_file(folder, split)
        if not file.is_file():
            raise TokensError(f"{where} has no {file.name} (prepare it again with `pipewave prepare`)")
        want = meta.tokens(split) * itemsize
        if file.stat().st_size != want:
            raise TokensError(f"{where}: {file.name} has {file.stat().st_size} bytes, but meta.json counts "
                              f"{meta.tokens(split)} {meta.dtype} tokens ({want} bytes)")
    return meta


def open_split(meta: TokensMeta, split: str) -> np.ndarray:
    """``split``'s tokens as a 1-D array mapped from its file (copy-on-write; an empty split is
    an empty array). Shapes and dtypes are the ones ``meta`` (``read_meta``) checked."""
    file = split_file(meta.path, split)
    dtype = DTYPES[meta.dtype]
    n = meta.tokens(split)
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="c", shape=(n,))
