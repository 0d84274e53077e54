"""Model zoo: layer lists, deterministic per-layer init, shapes and loss."""

import math
from types import SimpleNamespace

import pytest
import torch

from pipewave.workers import models

GPT = SimpleNamespace(kind="gpt", vocab_size=256, d_model=32, n_layers=3, n_heads=4, seq_len=16)
MLP = SimpleNamespace(kind="mlp", vocab_size=256, d_model=32, n_layers=3, seq_len=16)
CFGS = {"gpt": GPT, "mlp": MLP}


def _tokens(cfg, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), generator=g)  # (B, T)


@pytest.mark.parametrize("kind", CFGS)
def test_num_layers_and_names(kind):
    cfg = CFGS[kind]
    if kind == "gpt":  # each block is two cuttable layers: its attention and its MLP half
        assert models.num_layers(cfg) == 2 * cfg.n_layers + 2
        assert models.layer_names(cfg) == ["embed", "block0.attn", "block0.mlp", "block1.attn",
                                           "block1.mlp", "block2.attn", "block2.mlp", "head"]
    else:
        assert models.num_layers(cfg) == cfg.n_layers + 2
        assert models.layer_names(cfg) == ["embed", "block0", "block1", "block2", "head"]
    assert len(models.build_layers(cfg, seed=0)) == models.num_layers(cfg)


@pytest.mark.parametrize("kind", CFGS)
@pytest.mark.parametrize("indices", [[0], [1, 2], [2, 3, 4], [4], [3, 1]])
def test_subset_build_matches_full_build(kind, indices):
    cfg = CFGS[kind]
    full = models.build_layers(cfg, seed=7)
    subset = models.build_layers(cfg, seed=7, indices=indices)
    assert len(subset) == len(indices)
    for i, layer in zip(indices, subset, strict=True):
        ref = dict(full[i].named_parameters())
        params = dict(layer.named_parameters())
        assert params.keys() == ref.keys()
        for name, p in params.items():
            assert torch.equal(p, ref[name]), (i, name)


def test_seed_and_index_change_init():
    a = models.build_layers(GPT, seed=0, indices=[1, 3])  # two attention halves
    b = models.build_layers(GPT, seed=1, indices=[1, 3])
    w = "attn.c_attn.weight"
    assert not torch.equal(a[0].get_parameter(w), b[0].get_parameter(w))
    assert not torch.equal(a[0].get_parameter(w), a[1].get_parameter(w))


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build_layers(GPT, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kind", CFGS)
def test_shapes_through_layers(kind):
    cfg = CFGS[kind]
    x = _tokens(cfg, batch=3)
    layers = models.build_layers(cfg, seed=0)
    h = x
    for i, layer in enumerate(layers):
        h = layer(h)
        last = i == len(layers) - 1
        assert h.shape == (3, cfg.seq_len, cfg.vocab_size if last else cfg.d_model)
    # shorter sequences are fine too
    assert models.build_model(cfg, seed=0)(x[:, :5]).shape == (3, 5, cfg.vocab_size)


@pytest.mark.parametrize("kind", CFGS)
def test_chained_layers_equal_build_model(kind):
    cfg = CFGS[kind]
    x = _tokens(cfg)
    model = models.build_model(cfg, seed=3)
    h = x
    for layer in models.build_layers(cfg, seed=3):
        h = layer(h)
    assert torch.equal(h, model(x))
    # stage-wise: two contiguous stages built separately
    n = models.num_layers(cfg)
    h = x
    for stage in (range(0, 2), range(2, n)):
        for layer in models.build_layers(cfg, seed=3, indices=stage):
            h = layer(h)
    assert torch.equal(h, model(x))


def test_state_dict_keys_are_layer_indexed():
    keys = models.build_model(GPT, seed=0).state_dict().keys()
    assert "0.tok_emb.weight" in keys
    assert "1.attn.c_attn.weight" in keys and "2.mlp.c_fc.weight" in keys
    assert f"{models.num_layers(GPT) - 1}.lm_head.weight" in keys


def test_gpt_loss_near_uniform_at_init():
    x, y = _tokens(GPT, batch=4, seed=1), _tokens(GPT, batch=4, seed=2)
    loss = models.loss_fn(models.build_model(GPT, seed=0)(x), y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert abs(loss.item() - math.log(256)) < 0.3


def test_reference_gpt_parameter_count():
    cfg = SimpleNamespace(
        kind="gpt", vocab_size=256, d_model=256, n_layers=8, n_heads=4, seq_len=128
    )
    n = sum(p.numel() for p in models.build_model(cfg, seed=0).parameters())
    assert n == 6_482_432


def test_invalid_indices_and_configs():
    with pytest.raises(IndexError, match="out of range"):
        models.build_layers(GPT, seed=0, indices=[models.num_layers(GPT)])
    with pytest.raises(IndexError, match="out of range"):
        models.build_layers(GPT, seed=0, indices=[-1])
    with pytest.raises(ValueError, match="duplicate"):
        models.build_layers(GPT, seed=0, indices=[1, 1])
    with pytest.raises(ValueError, match="unknown model kind"):
        models.num_layers(SimpleNamespace(**{**vars(MLP), "kind": "rnn"}))
    with pytest.raises(ValueError, match="n_heads"):
        models.num_layers(SimpleNamespace(**{**vars(GPT), "n_heads": 5}))
    with pytest.raises(ValueError, match="seq_len"):
        models.build_model(GPT, seed=0)(torch.zeros(1, GPT.seq_len + 1, dtype=torch.long))
