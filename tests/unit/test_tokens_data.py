"""The tokens data kind (a dataset folder, workers/tokens.py) and whole corpora (workers/data.py)."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

import tokkit
from pipewave.service.datasets import prepare
from pipewave.workers import data
from pipewave.workers.tokens import TokensError, read_meta


def tokens_cfg(path: Path) -> SimpleNamespace:
    return SimpleNamespace(kind="tokens", path=str(path))


def mapped_from(t: torch.Tensor, file: Path) -> bool:
    """Whether ``t``'s memory is a mapping of ``file`` (Linux: /proc/self/maps)."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(file)):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a BPE dataset folder of 40 documents, val fraction 0.1; its tokenizer.json)."""
    d = tmp_path_factory.mktemp("tokens")
    docs = tokkit.texts(40, seed=1)
    inputs = []
    for i, t in enumerate(docs):
        inputs.append(d / f"{i:02d}.txt")
        inputs[-1].write_text(t, encoding="utf-8")
    tok = tokkit.train_bpe(d, docs)
    prepare(inputs, str(tok), d / "ds", val_fraction=0.1)
    return d / "ds", tok


def test_the_train_split_is_mapped_from_its_file(dataset) -> None:
    folder, _ = dataset
    meta = read_meta(folder)
    corpus = data.load_corpus(tokens_cfg(folder))
    assert corpus.dtype == torch.uint16 and corpus.shape == (meta.train_tokens,)
    assert data.load_corpus(tokens_cfg(folder)) is corpus  # cached per process
    if Path("/proc/self/maps").exists():
        assert mapped_from(corpus, folder / "train.bin")
    assert np.array_equal(corpus.numpy(), np.fromfile(folder / "train.bin", dtype="<u2"))
    val = data.load_split(tokens_cfg(folder), "val")
    assert val.shape == (meta.val_tokens,) and meta.counts.val_documents == 4
    assert data.load_split(tokens_cfg(folder), "train") is corpus


def test_batches_are_windows_of_the_tokens_from_seed_and_step(dataset) -> None:
    folder, tok_path = dataset
    corpus = data.load_corpus(tokens_cfg(folder))
    x, y = data.get_batch(corpus, seed=3, step=7, batch_size=6, seq_len=24)
    assert x.shape == y.shape == (6, 24) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    flat = corpus.numpy().tolist()
    for row in range(6):
        window = [*x[row].tolist(), y[row, -1].item()]
        assert any(flat[i : i + 25] == window for i in range(len(flat) - 24))
    data._load_tokens.cache_clear()  # a second load (another stage, a resumed job): same batch
    again = data.get_batch(data.load_corpus(tokens_cfg(folder)), 3, 7, 6, 24)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(data.get_batch(corpus, 3, 8, 6, 24)[0], x)
    # the ids decode to the source text: a document of the corpus, between two EOS ids
    tok, eos = Tokenizer.from_file(str(tok_path)), read_meta(folder).eos_id
    ends = [i for i, t in enumerate(flat) if t == eos]
    assert tok.decode(flat[ends[0] + 1 : ends[1]]).startswith("document ")


def test_uint32_tokens(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(" ".join(f"w{i}" for i in range(65_530, 65_560)))
    prepare([tmp_path / "a.txt"], str(tokkit.big_wordlevel(tmp_path)), tmp_path / "ds", val_fraction=0)
    corpus = data.load_corpus(tokens_cfg(tmp_path / "ds"))
    assert corpus.dtype == torch.uint32 and corpus.numel() == 31
    x, y = data.get_batch(corpus, 0, 0, 4, 30)
    assert torch.equal(x[0], torch.arange(65_530, 65_560)) and y[0, -1].item() == 69_999  # EOS
    with pytest.raises(ValueError, match=r"^corpus has 31 tokens, needs at least seq_len \+ 1 = 32$"):
        data.get_batch(corpus, 0, 0, 4, 31)
    with pytest.raises(ValueError, match=r"tokens corpus .*ds has 31 tokens, needs at least 100$"):
        data.load_corpus(tokens_cfg(tmp_path / "ds"), min_bytes=100)


def test_a_prepared_again_folder_is_read_again(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc")
    prepare([tmp_path / "a.txt"], "bytes", tmp_path / "ds")
    assert data.load_corpus(tokens_cfg(tmp_path / "ds")).tolist() == [97, 98, 99, 256]
    (tmp_path / "a.txt").write_text("hello")
    prepare([tmp_path / "a.txt"], "bytes", tmp_path / "ds", force=True)
    assert data.load_corpus(tokens_cfg(tmp_path / "ds")).tolist() == [*b"hello", 256]


def test_bad_dataset_folders_are_one_line(dataset, tmp_path: Path) -> None:
    folder, _ = dataset
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokensError, match=r"^dataset folder .*empty has no meta.json \(make one with "
                                          r"`pipewave prepare`\)$"):
        read_meta(tmp_path / "empty")
    with pytest.raises(TokensError, match="does not exist"):
        read_meta(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokensError, match="is not a folder"):
        read_meta(tmp_path / "file")

    good = json.loads((folder / "meta.json").read_text())
    cases = [
        ("{not json", "meta.json is not valid JSON"),
        ({**good, "format": "nanogpt"}, "format is 'nanogpt', expected 'pipewave-tokens/1'"),
        ({**good, "dtype": "int8"}, "dtype 'int8' is not one of"),
        ({**good, "tokenizer": {**good["tokenizer"], "vocab_size": 70_000}}, "uint16 cannot hold 70000"),
        ({**good, "tokenizer": {**good["tokenizer"], "eos_id": 5000}}, "eos_id 5000 is outside"),
        ({**good, "counts": {**good["counts"], "train_tokens": -1}}, "'counts.train_tokens' must be a non"),
        ({**good, "counts": {**good["counts"], "train_tokens": 7}}, "train.bin has .* bytes, but meta.json "
                                                                    "counts 7 uint16 tokens \\(14 bytes\\)"),
        ({k: v for k, v in good.items() if k != "counts"}, "'counts' must be an object"),
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train.bin", "val.bin"):
        (bad / name).write_bytes((folder / name).read_bytes())
    for doc, needle in cases:
        (bad / "meta.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        with pytest.raises(TokensError, match=needle) as err:
            read_meta(bad)
        assert "\n" not in str(err.value)
    (bad / "meta.json").write_text(json.dumps(good))
    (bad / "val.bin").unlink()
    with pytest.raises(TokensError, match=r"has no val\.bin"):
        read_meta(bad)
    with pytest.raises(ValueError, match="needs a path"):
        data.load_corpus(SimpleNamespace(kind="tokens", path=None))
    with pytest.raises(ValueError, match="synthetic data has no held-out split"):
        data.load_split(SimpleNamespace(kind="synthetic"), "val")


def test_vocabulary_checks(dataset, tmp_path: Path) -> None:
    folder, _ = dataset
    need = read_meta(folder).vocab_size
    assert data.data_vocab_size(tokens_cfg(folder)) == need
    assert data.data_vocab_size(SimpleNamespace(kind="stdlib")) == 256
    data.check_vocab(tokens_cfg(folder), need)
    data.check_vocab(SimpleNamespace(kind="synthetic"), 256)
    line = (rf"^the model's vocabulary \(256 ids\) does not cover the data's \({need} ids, dataset .*: "
            rf"tokenizers tokenizer .*tokenizer\.json\): set the model's vocab_size to at least {need}$")
    with pytest.raises(ValueError, match=line):
        data.check_vocab(tokens_cfg(folder), 256)
    with pytest.raises(ValueError, match=r"\(256 ids, text data are bytes\)"):
        data.check_vocab(SimpleNamespace(kind="text", path="x"), 100)


# ----------------------------------------------------------------------------- whole corpora


def test_the_byte_corpora_give_the_batches_they_gave_before() -> None:
    """The synthetic corpus's batch digest, taken before the corpora became whole and mapped."""
    x, y = data.get_batch(data.load_corpus(SimpleNamespace(kind="synthetic")), 0, 5, 4, 32)
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
    assert digest[:16] == "ac5b6331b21d6bec"


def test_a_text_file_over_16_mib_is_used_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    with path.open("wb") as f:
        f.truncate(16 * 2**20)  # a sparse hole of zeros, then 1 MiB of ones past the old cut
        f.seek(16 * 2**20)
        f.write(b"\x01" * 2**20)
    corpus = data.load_corpus(SimpleNamespace(kind="text", path=str(path)))
    assert corpus.numel() == 17 * 2**20 and corpus.dtype == torch.uint8
    if Path("/proc/self/maps").exists():
        assert mapped_from(corpus, path)
    past = sum(int((data.get_batch(corpus, 0, step, 64, 16)[1] == 1).any(dim=1).sum()) for step in range(10))
    assert past > 0  # rows from windows beyond 16 MiB
    with pytest.raises(ValueError, match=r"text corpus .*empty\.txt has 0 bytes, needs at least 2"):
        (tmp_path / "empty.txt").write_bytes(b"")
        data.load_corpus(SimpleNamespace(kind="text", path=str(tmp_path / "empty.txt")))


def test_the_stdlib_corpus_is_whole() -> None:
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    size = sum(p.stat().st_size + 1 for p in data._stdlib_files(root))  # + the newline after each
    assert data.load_corpus(SimpleNamespace(kind="stdlib")).numel() == size
