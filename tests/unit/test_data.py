"""Data: corpora and batches deterministic from (seed, step)."""

import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipewave.workers import data, models


@pytest.fixture(scope="module")
def synthetic() -> torch.Tensor:
    return data.load_corpus(SimpleNamespace(kind="synthetic"))


def test_get_batch_deterministic_and_shifted(synthetic):
    x, y = data.get_batch(synthetic, seed=0, step=5, batch_size=4, seq_len=32)
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = data.get_batch(synthetic, seed=0, step=5, batch_size=4, seq_len=32)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # each row is a window of the corpus, y ends one byte further on
    row = [*x[0].tolist(), y[0, -1].item()]
    text = bytes(synthetic.tolist())
    assert bytes(row) in text


def test_get_batch_differs_across_steps_and_seeds(synthetic):
    x, _ = data.get_batch(synthetic, seed=0, step=0, batch_size=4, seq_len=32)
    assert not torch.equal(x, data.get_batch(synthetic, 0, 1, 4, 32)[0])
    assert not torch.equal(x, data.get_batch(synthetic, 1, 0, 4, 32)[0])


def test_get_batch_ignores_global_rng(synthetic):
    torch.manual_seed(0)
    a = data.get_batch(synthetic, 3, 3, 2, 8)[0]
    torch.manual_seed(1)
    assert torch.equal(a, data.get_batch(synthetic, 3, 3, 2, 8)[0])


def test_get_batch_tiny_corpus():
    corpus = torch.arange(9, dtype=torch.uint8)
    x, y = data.get_batch(corpus, 0, 0, 3, 8)  # only one window fits
    assert torch.equal(x, torch.arange(8).expand(3, 8))
    assert torch.equal(y, torch.arange(1, 9).expand(3, 8))
    with pytest.raises(ValueError, match="seq_len"):
        data.get_batch(corpus, 0, 0, 3, 9)


def test_microbatch_split_concatenates_back():
    t = torch.arange(24).view(8, 3)
    parts = [data.microbatch(t, i, 4) for i in range(4)]
    assert all(p.shape == (2, 3) for p in parts)
    assert torch.equal(torch.cat(parts), t)
    with pytest.raises(ValueError, match="does not split"):
        data.microbatch(t, 0, 3)
    with pytest.raises(IndexError):
        data.microbatch(t, 4, 4)


def test_stdlib_corpus_nonempty_and_deterministic():
    cfg = SimpleNamespace(kind="stdlib")
    a = data.load_corpus(cfg)
    assert a.dtype == torch.uint8 and a.ndim == 1
    assert a.numel() > 1_000_000
    assert data.load_corpus(cfg) is a  # cached per process
    data._load_stdlib.cache_clear()
    assert torch.equal(data.load_corpus(cfg), a)
    small = data.load_corpus(cfg, max_bytes=1000)
    assert torch.equal(small, a[:1000])


def test_stdlib_files_exclude_tests_and_site_packages():
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = data._stdlib_files(root)
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and all(r.endswith(".py") for r in rel)
    for r in rel:
        assert not set(r.split("/")[:-1]) & data.STDLIB_EXCLUDED_DIRS, r


def test_text_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"hello, pipewave\n" * 10)
    corpus = data.load_corpus(SimpleNamespace(kind="text", path=str(path)))
    assert bytes(corpus.tolist()) == b"hello, pipewave\n" * 10
    assert data.load_corpus(SimpleNamespace(kind="text", path=str(path)), max_bytes=5).numel() == 5
    with pytest.raises(ValueError, match="needs at least"):
        data.load_corpus(SimpleNamespace(kind="text", path=str(path)), min_bytes=1000)


def test_text_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_corpus(SimpleNamespace(kind="text", path=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="not a regular file"):
        data.load_corpus(SimpleNamespace(kind="text", path=str(tmp_path)))
    with pytest.raises(ValueError, match="needs a path"):
        data.load_corpus(SimpleNamespace(kind="text", path=None))
    with pytest.raises(ValueError, match="unknown data kind"):
        data.load_corpus(SimpleNamespace(kind="images"))


def test_synthetic_is_deterministic_and_learnable(synthetic):
    assert synthetic.numel() == data.SYNTHETIC_BYTES
    data._load_synthetic.cache_clear()
    assert torch.equal(data.load_corpus(SimpleNamespace(kind="synthetic")), synthetic)

    cfg = SimpleNamespace(kind="mlp", vocab_size=256, d_model=64, n_layers=2, seq_len=32)
    model = models.build_model(cfg, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(50):
        x, y = data.get_batch(synthetic, seed=0, step=step, batch_size=16, seq_len=cfg.seq_len)
        loss = models.loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 5.0
    assert last < first - 1.5, losses
