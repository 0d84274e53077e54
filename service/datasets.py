"""``pipewave prepare``: local text files -> a tokenized dataset folder (the format is in
``pipewave.workers.tokens``; ``data: {kind: tokens, path: DIR}`` trains on it).

Inputs, each a list of documents:

- ``.txt``: the whole file is one document.
- ``.jsonl``: one JSON object per line, its ``text_field`` is a document (blank lines skipped).
- ``.parquet``: one document per row of the ``text_field`` column (read with pyarrow).

Tokenizers (``load_tokenizer``): ``bytes`` (UTF-8, EOS 256), a ``tokenizer.json`` file (the
``tokenizers`` library), or a transformers tokenizer folder (``AutoTokenizer``, local files only:
nothing is downloaded). Documents are encoded without the tokenizer's special tokens (no BOS);
each one is followed by EOS.

The held-out split is whole documents: a seeded random choice (``VAL_SEED``) of
``round(val_fraction x documents)`` of them, at least one when ``val_fraction > 0`` and there are
two documents or more, and never all of them. It depends on the number of documents alone, so
the same inputs always give the same folder.

Two passes over the inputs: the first checks every input and counts its documents (so a bad line
is refused before anything is written), the second tokenizes batches of documents and appends
them to the split files in chunks, so the corpus is never in memory at once (one ``.txt``
document is). Files are written under temporary names and renamed, ``meta.json`` last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipewave.workers.tokens import (
    BYTES_EOS_ID,
    BYTES_VOCAB_SIZE,
    DTYPES,
    META_FILE,
    SPLITS,
    SourceFile,
    TokenCounts,
    TokenizerInfo,
    TokensMeta,
    dtype_for,
    read_meta,
    split_file,
)

EXTENSIONS = (".txt", ".jsonl", ".parquet")
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
VAL_SEED = 0
BATCH_DOCS = 256  # documents per tokenizer call
BATCH_CHARS = 4 * 2**20  # ... or fewer when they are long
FLUSH_TOKENS = 2**22  # tokens buffered per split before they are written

Doc = str | bytes


class DatasetError(ValueError):
    """A bad input, tokenizer or output folder; the message is one line."""


def _line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# ----------------------------------------------------------------------------- tokenizers


@dataclass(frozen=True)
class TextTokenizer:
    """A loaded tokenizer: what meta.json records of it, and ``encode`` (documents -> ids, no
    special tokens added)."""

    info: TokenizerInfo
    encode: Callable[[list[Doc]], Sequence[Sequence[int] | np.ndarray]]

    @property
    def takes_bytes(self) -> bool:
        """True for ``bytes``: a .txt file's bytes are its document, whatever their encoding."""
        return self.info.kind == "bytes"


def _encode_bytes(docs: list[Doc]) -> list[np.ndarray]:
    return [np.frombuffer(d.encode("utf-8") if isinstance(d, str) else d, dtype=np.uint8) for d in docs]


def _texts(docs: list[Doc]) -> list[str]:
    assert all(isinstance(d, str) for d in docs), "text tokenizers take str documents"
    return [str(d) for d in docs]


def _eos(name: str, vocab: dict[str, int], eos_token: str | None) -> tuple[int, str]:
    """(EOS id, EOS token): ``eos_token`` if given, else a known EOS name in ``vocab``."""
    if eos_token is not None:
        if eos_token not in vocab:
            raise DatasetError(f"tokenizer {name} has no token {eos_token!r} (--eos-token)")
        return vocab[eos_token], eos_token
    for token in EOS_NAMES:
        if token in vocab:
            return vocab[token], token
    raise DatasetError(f"tokenizer {name} has no end-of-sequence token (none of {', '.join(EOS_NAMES)}): "
                       "name one with --eos-token")


def load_tokenizer(spec: str, eos_token: str | None = None) -> TextTokenizer:
    """``spec``: "bytes", a ``tokenizer.json`` file, or a transformers tokenizer folder (local)."""
    if spec == "bytes":
        if eos_token is not None:
            raise DatasetError("the bytes tokenizer's EOS is id 256; --eos-token is for a tokenizer file")
        return TextTokenizer(TokenizerInfo("bytes", None, BYTES_VOCAB_SIZE, BYTES_EOS_ID), _encode_bytes)
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise DatasetError(f"tokenizer {spec} does not exist (a tokenizer.json file, a transformers "
                           "tokenizer folder, or 'bytes')")
    if path.is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exceptions
            raise DatasetError(f"cannot load tokenizer {spec}: {_line(err)}") from None
        vocab = tok.get_vocab(with_added_tokens=True)
        eos_id, eos = _eos(spec, vocab, eos_token)

        def encode(docs: list[Doc]) -> list[list[int]]:
            return [e.ids for e in tok.encode_batch(_texts(docs), add_special_tokens=False)]

        return TextTokenizer(TokenizerInfo("tokenizers", str(path), max(vocab.values()) + 1, eos_id, eos),
                             encode)
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # OSError for a folder without tokenizer files, ValueError, ...
        raise DatasetError(f"cannot load a transformers tokenizer from {spec}: {_line(err)}") from None
    vocab = dict(hf.get_vocab())
    own = hf.eos_token if hf.eos_token_id is not None else None  # its tokenizer_config's
    eos_id, eos = _eos(spec, vocab, eos_token or own)

    def encode_hf(docs: list[Doc]) -> list[list[int]]:
        out = hf(_texts(docs), add_special_tokens=False, return_attention_mask=False, verbose=False)
        return list(out["input_ids"])

    return TextTokenizer(TokenizerInfo("transformers", str(path), max(vocab.values()) + 1, eos_id, eos),
                         encode_hf)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Input:
    path: Path
    size: int
    documents: int
    sha256: str


def _check_input(raw: str | Path) -> Path:
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        raise DatasetError(f"input {raw} does not exist")
    if path.is_dir():
        raise DatasetError(f"input {raw} is a folder: name its files (e.g. {raw}/*.txt)")
    if path.suffix.lower() not in EXTENSIONS:
        raise DatasetError(f"input {raw} is not a {', '.join(EXTENSIONS)} file")
    return path


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The documents of a .jsonl file; a bad line is an error naming file:line."""
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DatasetError(f"{path}:{lineno}: not a JSON line ({_line(err)})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: a {type(obj).__name__}, not a JSON object")
            if text_field not in obj:
                raise DatasetError(f"{path}:{lineno}: no field {text_field!r} (fields: "
                                   f"{', '.join(map(str, obj)) or 'none'}; --text-field names another)")
            text = obj[text_field]
            if not isinstance(text, str):
                kind = type(text).__name__
                raise DatasetError(f"{path}:{lineno}: field {text_field!r} is {kind}, not text")
            yield text


def _parquet_file(path: Path, text_field: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow.ArrowInvalid and friends
        raise DatasetError(f"cannot read parquet file {path}: {_line(err)}") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise DatasetError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)}; "
                           "--text-field names another)")
    t = schema.field(text_field).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise DatasetError(f"{path}: column {text_field!r} is {t}, not text")
    return pf


def _parquet_columns(path: Path, text_field: str) -> Iterator[Any]:
    """The text column of a parquet file in batches of rows (pyarrow arrays); a null is an error."""
    row = 0
    for batch in _parquet_file(path, text_field).iter_batches(batch_size=1024, columns=[text_field]):
        col = batch.column(0)
        if col.null_count:
            first = row + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DatasetError(f"{path}: row {first}: {text_field!r} is null")
        row += len(col)
        yield col


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    for col in _parquet_columns(path, text_field):
        yield from col.to_pylist()


def _txt(path: Path, as_bytes: bool) -> Iterator[Doc]:
    data = path.read_bytes()
    if as_bytes:
        yield data
        return
    try:
        yield data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text (byte {err.start}): use --tokenizer bytes "
                           "or convert it") from None


def documents(path: Path, text_field: str = "text", as_bytes: bool = False) -> Iterator[Doc]:
    """The documents of one input file, in order (``as_bytes``: a .txt file's raw bytes)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _txt(path, as_bytes)
    if suffix == ".jsonl":
        return _jsonl(path, text_field)
    return _parquet(path, text_field)


def _count(path: Path, text_field: str, as_bytes: bool) -> int:
    """Documents in ``path``, every one read and checked, so that tokenizing meets no bad input."""
    if path.suffix.lower() == ".parquet":
        return sum(len(col) for col in _parquet_columns(path, text_field))
    return sum(1 for _ in documents(path, text_field, as_bytes))


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def val_choice(documents: int, val_fraction: float) -> np.ndarray:
    """Which of ``documents`` documents are held out (bool per document): a seeded choice."""
    k = round(val_fraction * documents)
    if val_fraction > 0 and documents >= 2:
        k = min(max(k, 1), documents - 1)
    mask = np.zeros(documents, dtype=bool)
    mask[np.random.default_rng(VAL_SEED).choice(documents, size=k, replace=False)] = True
    return mask


# ----------------------------------------------------------------------------- writing


class _SplitWriter:
    """Appends documents (each followed by EOS) to one split file, in chunks."""

    def __init__(self, file: BinaryIO, dtype: np.dtype, eos_id: int) -> None:
        self.file, self.dtype, self.eos_id = file, dtype, eos_id
        self.pending: list[np.ndarray] = []
        self.buffered = self.tokens = self.documents = 0

    def add(self, ids: Sequence[int] | np.ndarray) -> int:
        doc = np.empty(len(ids) + 1, dtype=self.dtype)
        doc[:-1] = ids
        doc[-1] = self.eos_id
        self.pending.append(doc)
        self.buffered += doc.size
        self.tokens += doc.size
        self.documents += 1
        if self.buffered >= FLUSH_TOKENS:
            self.flush()
        return int(doc.size)

    def flush(self) -> None:
        if self.pending:
            np.concatenate(self.pending).tofile(self.file)
        self.pending, self.buffered = [], 0


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise DatasetError(f"output {output} is a file, not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise DatasetError(f"output folder {output} is not empty (--force replaces its dataset)")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[tokens]} tokens"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _batches(inputs: list[_Input], text_field: str, as_bytes: bool) -> Iterator[list[Doc]]:
    batch: list[Doc] = []
    chars = 0
    for inp in inputs:
        for doc in documents(inp.path, text_field, as_bytes):
            batch.append(doc)
            chars += len(doc)
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def prepare(inputs: Sequence[str | Path], tokenizer: str, output: str | Path, val_fraction: float = 0.01,
            text_field: str = "text", force: bool = False, eos_token: str | None = None,
            progress: bool = False) -> TokensMeta:
    """Tokenize ``inputs`` into the dataset folder ``output``; returns its checked meta.

    ``progress``: a progress bar on stderr. Bad inputs, tokenizer or output raise
    ``DatasetError`` (one line) before anything is written.
    """
    if not inputs:
        raise DatasetError("no inputs: name .txt, .jsonl or .parquet files")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val fraction must be in [0, 1), got {val_fraction}")
    paths = [_check_input(p) for p in inputs]
    for p, raw in zip(paths, inputs, strict=True):
        if paths.count(p) > 1:
            raise DatasetError(f"input {raw} is named twice")
    out = Path(output).expanduser().resolve()
    _check_output(out, force)
    tok = load_tokenizer(tokenizer, eos_token)
    dtype = dtype_for(tok.info.vocab_size)

    checked = []
    for p, raw in zip(paths, inputs, strict=True):
        n = _count(p, text_field, tok.takes_bytes)
        if n == 0 or p.stat().st_size == 0:
            raise DatasetError(f"input {raw} has no documents")
        checked.append(_Input(p, p.stat().st_size, n, _sha256(p)))
    val = val_choice(sum(i.documents for i in checked), val_fraction)
    with _progress(progress) as bar:
        counts = _write(out, checked, tok, dtype, val, text_field, bar)

    sources = tuple(SourceFile(str(i.path), i.sha256, i.size, i.documents) for i in checked)
    meta = TokensMeta(str(out), tok.info, dtype, counts, sources, val_fraction)
    tmp = out / f"{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / META_FILE)
    return read_meta(out)


def _write(out: Path, inputs: list[_Input], tok: TextTokenizer, dtype: str, val: np.ndarray,
           text_field: str, bar: Progress) -> TokenCounts:
    """Tokenize every document into the split files; their counts."""
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # no stale meta.json beside new split files
    tmps = {s: split_file(out, s).with_suffix(".bin.tmp") for s in SPLITS}
    task = bar.add_task("tokenizing", total=len(val), tokens=0)
    try:
        with tmps["train"].open("wb") as ftrain, tmps["val"].open("wb") as fval:
            writers = {False: _SplitWriter(ftrain, DTYPES[dtype], tok.info.eos_id),
                       True: _SplitWriter(fval, DTYPES[dtype], tok.info.eos_id)}
            i = tokens = 0
            for batch in _batches(inputs, text_field, tok.takes_bytes):
                if i + len(batch) > len(val):
                    raise DatasetError("the inputs changed while they were prepared (more documents)")
                for ids in tok.encode(batch):
                    tokens += writers[bool(val[i])].add(ids)
                    i += 1
                bar.update(task, completed=i, tokens=f"{tokens:,}")
            if i != len(val):
                raise DatasetError("the inputs changed while they were prepared (fewer documents)")
            for w in writers.values():
                w.flush()
        for s in SPLITS:
            os.replace(tmps[s], split_file(out, s))
    finally:
        for t in tmps.values():
            t.unlink(missing_ok=True)
    train, held = writers[False], writers[True]
    return TokenCounts(train.tokens, held.tokens, i, train.documents, held.documents)
