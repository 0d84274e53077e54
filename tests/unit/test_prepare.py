"""``pipewave prepare``: text files -> a tokenized dataset folder (service/datasets.py)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

import tokkit
from harness import pipewave
from pipewave.cli.main import main
from pipewave.service import datasets
from pipewave.workers.tokens import open_split, read_meta


def split_docs(tokens: np.ndarray, eos: int) -> list[list[int]]:
    """A split's documents: the runs of ids ended by EOS (every document ends with one)."""
    assert tokens.size == 0 or tokens[-1] == eos
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(int)
    return [tokens[s:e].tolist() for s, e in zip(starts, ends, strict=True)]


class Corpus(NamedTuple):
    folder: Path
    inputs: list[Path]  # 2 .txt, a .jsonl (5 documents), a .parquet (5 documents)
    docs: list[str]  # their documents, in order
    tokenizer: Path  # a BPE tokenizer.json trained on them


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    d = tmp_path_factory.mktemp("corpus")
    docs = tokkit.texts(12)
    (d / "a.txt").write_text(docs[0], encoding="utf-8")
    (d / "b.txt").write_text(docs[1], encoding="utf-8")
    with (d / "c.jsonl").open("w", encoding="utf-8") as f:
        for i, t in enumerate(docs[2:7]):
            f.write(json.dumps({"id": i, "text": t}) + "\n" + ("\n" if i == 2 else ""))  # a blank line
    pq.write_table(pa.table({"text": docs[7:], "n": list(range(5))}), d / "d.parquet", row_group_size=2)
    inputs = [d / "a.txt", d / "b.txt", d / "c.jsonl", d / "d.parquet"]
    return Corpus(d, inputs, docs, tokkit.train_bpe(d, docs))


def check_folder(out: Path, docs: list[str], decode) -> None:
    """Every document is in exactly one split, whole, ended by EOS, and decodes to its text."""
    meta = read_meta(out)
    train, val = (split_docs(np.asarray(open_split(meta, s)), meta.eos_id) for s in ("train", "val"))
    c = meta.counts
    assert (len(train), len(val)) == (c.train_documents, c.val_documents)
    assert c.documents == len(docs) == c.train_documents + c.val_documents
    assert sum(map(len, train)) + len(train) == c.train_tokens  # + EOS per document
    assert sum(map(len, val)) + len(val) == c.val_tokens
    assert sorted(decode(ids) for ids in train + val) == sorted(docs)
    assert val and train and not {decode(i) for i in train} & {decode(i) for i in val}


def test_txt_jsonl_parquet_with_a_tokenizer_json(corpus: Corpus, tmp_path: Path) -> None:
    _, inputs, docs, tok_path = corpus
    meta = datasets.prepare(inputs, str(tok_path), tmp_path / "ds", val_fraction=0.2)
    tok = Tokenizer.from_file(str(tok_path))
    assert meta.tokenizer.kind == "tokenizers" and meta.tokenizer.source == str(tok_path)
    assert meta.vocab_size == tok.get_vocab_size() and meta.eos_id == tok.token_to_id(tokkit.EOS) == 0
    assert meta.dtype == "uint16" and (tmp_path / "ds" / "train.bin").stat().st_size == 2 * meta.train_tokens
    assert meta.counts.val_documents == round(0.2 * len(docs))
    assert [(Path(s.path).name, s.documents, s.bytes) for s in meta.sources] == [
        ("a.txt", 1, inputs[0].stat().st_size), ("b.txt", 1, inputs[1].stat().st_size),
        ("c.jsonl", 5, inputs[2].stat().st_size), ("d.parquet", 5, inputs[3].stat().st_size)]
    assert meta.sources[2].sha256 == hashlib.sha256(inputs[2].read_bytes()).hexdigest()
    check_folder(tmp_path / "ds", docs, tok.decode)
    on_disk = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert on_disk["format"] == "pipewave-tokens/1" and on_disk["tokenizer"]["eos_id"] == 0


def test_a_transformers_folder_gives_the_same_tokens(corpus: Corpus, tmp_path: Path) -> None:
    folder = tokkit.hf_folder(corpus.tokenizer, tmp_path / "hf")
    a = datasets.prepare(corpus.inputs, str(folder), tmp_path / "a", val_fraction=0.2)
    b = datasets.prepare(corpus.inputs, str(corpus.tokenizer), tmp_path / "b", val_fraction=0.2)
    assert a.tokenizer.kind == "transformers" and a.tokenizer.source == str(folder)
    assert (a.vocab_size, a.eos_id, a.counts) == (b.vocab_size, b.eos_id, b.counts)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bytes_tokenizer_is_utf8_with_eos_256(corpus: Corpus, tmp_path: Path) -> None:
    _, inputs, docs, _ = corpus
    raw = tmp_path / "latin1.txt"
    raw.write_bytes("caf\xe9\x00 ok".encode("latin-1"))  # not UTF-8, NUL included: bytes take it
    meta = datasets.prepare([*inputs, raw], "bytes", tmp_path / "ds", val_fraction=0)
    assert (meta.vocab_size, meta.eos_id, meta.dtype, meta.tokenizer.source) == (257, 256, "uint16", None)
    train = split_docs(np.asarray(open_split(meta, "train")), 256)
    assert [bytes(ids) for ids in train] == [t.encode() for t in docs] + [raw.read_bytes()]
    assert meta.counts.val_tokens == meta.counts.val_documents == 0 and len(open_split(meta, "val")) == 0
    with pytest.raises(datasets.DatasetError, match="not UTF-8 text"):
        datasets.prepare([raw], str(corpus.tokenizer), tmp_path / "bpe")


def test_a_vocabulary_over_65536_ids_is_stored_as_uint32(tmp_path: Path) -> None:
    tok_path = tokkit.big_wordlevel(tmp_path)
    docs = ["w1 w65535 w65536 w69998", "w7 w69000", "w3"]
    for i, t in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(t)
    meta = datasets.prepare([tmp_path / f"{i}.txt" for i in range(3)], str(tok_path), tmp_path / "ds")
    assert (meta.dtype, meta.vocab_size, meta.eos_id) == ("uint32", 70_000, 69_999)
    assert (tmp_path / "ds" / "train.bin").stat().st_size == 4 * meta.train_tokens
    check_folder(tmp_path / "ds", docs, Tokenizer.from_file(str(tok_path)).decode)
    assert datasets.dtype_for(65_536) == "uint16" and datasets.dtype_for(65_537) == "uint32"


def test_the_val_split_is_whole_documents_seeded_and_never_empty() -> None:
    for n, f in [(2, 0.01), (3, 0.5), (10, 0.3), (1000, 0.01), (5, 0.99)]:
        mask = datasets.val_choice(n, f)
        assert 1 <= mask.sum() <= n - 1 and (mask == datasets.val_choice(n, f)).all()
    assert datasets.val_choice(1000, 0.01).sum() == 10
    assert datasets.val_choice(1, 0.5).sum() == 0 and datasets.val_choice(10, 0).sum() == 0


def test_chunked_writing_gives_the_same_folder(corpus: Corpus, tmp_path: Path, monkeypatch) -> None:
    """Small tokenizer batches and write chunks (streaming) change nothing; neither does a rerun."""
    _, inputs, _, tok_path = corpus
    datasets.prepare(inputs, str(tok_path), tmp_path / "a", val_fraction=0.3)
    monkeypatch.setattr(datasets, "BATCH_DOCS", 3)
    monkeypatch.setattr(datasets, "FLUSH_TOKENS", 50)
    datasets.prepare(inputs, str(tok_path), tmp_path / "b", val_fraction=0.3)
    datasets.prepare(inputs, str(tok_path), tmp_path / "b", val_fraction=0.3, force=True)
    for name in ("train.bin", "val.bin", "meta.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b.replace(b'/b"', b'/a"'), name
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """``pipewave ARGS`` in this process (as the entry point runs it): (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["pipewave", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_cli_prints_a_summary(corpus: Corpus, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "prepare", *corpus.inputs, "--tokenizer", corpus.tokenizer,
                         "--output", tmp_path / "ds", "--val-fraction", "0.25", "-q")
    assert code == 0, err
    meta = read_meta(tmp_path / "ds")
    assert f"prepared {tmp_path / 'ds'}" in out and f"{meta.train_tokens + meta.val_tokens:,}" in out
    assert "documents  12 (train 9, val 3) from 4 files" in out and "vocab 320" in out and "uint16" in out


def test_cli_bad_inputs_are_one_line_exit_2(corpus: Corpus, tmp_path: Path, monkeypatch, capsys) -> None:
    d, inputs, _, tok_path = corpus
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok"\n')
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "notok").mkdir()
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "null.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not parquet")
    (tmp_path / "list.jsonl").write_text('["text"]\n')
    (tmp_path / "num.jsonl").write_text('{"text": 3}\n')
    tok, out = str(tok_path), str(tmp_path / "out")
    cases = [
        ([str(inputs[0]), "-t", tok, "-o", out, "--val-fraction", "1"], "val fraction must be in [0, 1)"),
        ([str(tmp_path / "missing.txt"), "-t", tok, "-o", out], "missing.txt does not exist"),
        ([str(tmp_path / "data.csv"), "-t", tok, "-o", out], "is not a .txt, .jsonl, .parquet file"),
        ([str(tmp_path / "empty.txt"), "-t", tok, "-o", out], "empty.txt has no documents"),
        ([str(d), "-t", tok, "-o", out], "is a folder: name its files"),
        ([str(inputs[0]), str(inputs[0]), "-t", tok, "-o", out], "is named twice"),
        ([str(bad), "-t", tok, "-o", out], f"{bad}:2: not a JSON line"),
        ([str(nofield), "-t", tok, "-o", out], f"{nofield}:1: no field 'text' (fields: body;"),
        ([str(inputs[3]), "-t", tok, "-o", out, "--text-field", "body"], "no column 'body' (columns: text"),
        ([str(tmp_path / "null.parquet"), "-t", tok, "-o", out], "null.parquet: row 1: 'text' is null"),
        ([str(tmp_path / "ints.parquet"), "-t", tok, "-o", out], "column 'text' is int64, not text"),
        ([str(tmp_path / "junk.parquet"), "-t", tok, "-o", out], "cannot read parquet file"),
        ([str(tmp_path / "list.jsonl"), "-t", tok, "-o", out], "list.jsonl:1: a list, not a JSON object"),
        ([str(tmp_path / "num.jsonl"), "-t", tok, "-o", out], "num.jsonl:1: field 'text' is int, not text"),
        ([str(inputs[0]), "-t", tok, "-o", str(tmp_path / "full")], "is not empty (--force replaces"),
        ([str(inputs[0]), "-t", tok, "-o", str(inputs[1])], "is a file, not a folder"),
        ([str(inputs[0]), "-t", str(tmp_path / "nope.json"), "-o", out], "tokenizer"),
        ([str(inputs[0]), "-t", str(inputs[0]), "-o", out], f"cannot load tokenizer {inputs[0]}: "),
        ([str(inputs[0]), "-t", str(tmp_path / "notok"), "-o", out], "cannot load a transformers tokenizer"),
        ([str(inputs[0]), "-t", tok, "-o", out, "--eos-token", "<nope>"], "has no token '<nope>'"),
    ]
    for args, needle in cases:
        code, stdout, err = cli(monkeypatch, capsys, "prepare", *args)
        assert code == 2 and not stdout, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, (args, err)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x"]


def test_cli_subprocess_and_no_eos(corpus: Corpus, tmp_path: Path) -> None:
    """As a user runs it; a tokenizer without a known EOS is refused unless --eos-token names one."""
    from tokenizers import Tokenizer as T
    from tokenizers import models

    t = T(models.WordLevel({"a": 0, "b": 1, "<sep>": 2}, unk_token="a"))
    t.save(str(tmp_path / "noeos.json"))
    a = corpus.inputs[0]
    r = pipewave("prepare", str(a), "-t", str(tmp_path / "noeos.json"), "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "has no end-of-sequence token" in r.stderr and "--eos-token" in r.stderr
    r = pipewave("prepare", str(a), "-t", str(tmp_path / "noeos.json"), "-o", str(tmp_path / "x"),
                 "--eos-token", "<sep>")
    assert r.returncode == 0, r.stderr
    assert read_meta(tmp_path / "x").eos_id == 2 and "tokenizing" in r.stderr  # the progress bar
