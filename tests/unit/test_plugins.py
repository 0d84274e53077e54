"""Model plugins (pipewave.workers.plugins) and the example plugin `mixer` (examples/pipewave-mixer,
installed by `make install`): discovery, config validation, one-line refusals, and the mixer as a
pipeline model (per-layer init, tree boundaries, a manual stage split equal to the whole model)."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from pipewave.workers import plugins
from pipewave.workers.contract import ModelSettings, PipelineModel
from pipewave.workers.models import model_for
from pipewave.workers.tree import Layout, leaves

CONFIG = {"vocab_size": 64, "seq_len": 12, "d_model": 16, "depth": 3, "num_classes": 5,
          "label_smoothing": 0.1}


@pytest.fixture(autouse=True)
def _fresh_entry_points() -> Any:
    """The plugins module reads the entry points once per process: tests that fake some read
    them afresh, and leave no fake behind."""
    plugins._entry_points.cache_clear()
    yield
    plugins._entry_points.cache_clear()


def mixer(seq_len: int = 12, **config: Any) -> PipelineModel:
    options = {"kind": "plugin", "name": "mixer", "config": {**CONFIG, **config}}
    return model_for(ModelSettings.of("plugin", options, seq_len))


def batch(model: PipelineModel, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, CONFIG["vocab_size"], (b, model.seq_len + 1), generator=g)
    return data[:, :-1], data[:, 1:]  # tokens, targets (b, T)


# ------------------------------------------------------------------------------- discovery


def test_the_installed_mixer_is_listed_with_its_schema() -> None:
    found = plugins.installed_plugins()
    info = found["mixer"]
    assert info.error is None and info.distribution == "pipewave-mixer" and info.version == "0.1.0"
    assert info.description.startswith("An MLP-Mixer classifier of token windows")
    schema = info.config_schema
    assert schema["additionalProperties"] is False and schema["type"] == "object"
    assert set(schema["properties"]) == set(CONFIG)
    assert schema["properties"]["depth"]["minimum"] == 1 and schema["properties"]["depth"]["maximum"] == 64
    assert plugins.plugin_class("mixer").__name__ == "MixerModel"


def test_config_is_validated_with_defaults() -> None:
    assert plugins.validate_plugin_config("mixer", {"depth": 2}) == {**CONFIG, "vocab_size": 256,
                                                                     "seq_len": 32, "d_model": 64,
                                                                     "depth": 2, "num_classes": 16}
    assert plugins.validate_plugin_config("mixer", None)["depth"] == 4


@pytest.mark.parametrize(("config", "message"), [
    ({"depth": 0}, "model.config.depth: Input should be greater than or equal to 1"),
    ({"depth": "3"}, "model.config.depth: Input should be a valid integer"),  # strict: no coercion
    ({"depth": 2.0}, "model.config.depth: Input should be a valid integer"),
    ({"width": 3}, "model.config.width: unknown field"),
    ({"label_smoothing": 1.0, "d_model": 2},
     "model.config.d_model: Input should be greater than or equal to 4; "
     "model.config.label_smoothing: Input should be less than 1"),
    ([1, 2], "model.config: Input should be a valid dictionary or instance of MixerConfig"),
])
def test_bad_configs_are_one_line(config: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        plugins.validate_plugin_config("mixer", config)
    assert str(err.value) == message


def test_a_plugin_that_is_not_installed_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^model plugin 'nope' is not installed \(installed: .*mixer.*\)$"):
        plugins.plugin_class("nope")
    with pytest.raises(ValueError, match=r"^model plugin 'nope' is not installed"):
        model_for(ModelSettings.of("plugin", {"kind": "plugin", "name": "nope", "config": {}}, 8))


@pytest.mark.parametrize("name", ["os:system", "../mixer", "pipewave_mixer:MixerModel", "", "x" * 65,
                                  " mixer", "-mixer", "mixer\n"])
def test_bad_names_are_refused_before_any_lookup(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(**_: Any) -> Any:
        raise AssertionError("looked up")

    monkeypatch.setattr(md, "entry_points", no_lookup)
    with pytest.raises(ValueError, match=r"^invalid model plugin name"):
        plugins.plugin_class(name)


# --------------------------------------------------------------- plugins that are no plugins


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Model(PipelineModel):
    """A stand-in."""

    config_model: type[BaseModel] = _Loose

    def layer_names(self) -> list[str]:
        return ["only"]

    def make_layer(self, index: int) -> nn.Module:
        return nn.Linear(2, 2)

    def loss(self, output: Any, targets: torch.Tensor) -> torch.Tensor:
        return output.sum()


class _NoConfig(_Model):
    config_model = None  # type: ignore[assignment]


class _Abstract(PipelineModel):
    config_model = _Loose


NOT_A_MODEL = object()


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_module_xyz:Model", " does not load: ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("test_plugins:NOT_A_MODEL", " is not a subclass of pipewave.workers.contract.PipelineModel"),
    ("test_plugins:_Abstract", " leaves abstract methods undefined: layer_names, loss, make_layer"),
    ("test_plugins:_NoConfig", " has no config_model (a pydantic BaseModel class)"),
    ("test_plugins:_Model", ": its config_model must forbid unknown fields (extra='forbid')"),
])
def test_broken_plugins_are_refused_and_listed_with_the_reason(
        target: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = md.entry_points
    fake = md.EntryPoint("broken", target, plugins.GROUP)
    monkeypatch.setattr(md, "entry_points", lambda **kw: [*real(**kw), fake])
    with pytest.raises(ValueError) as err:
        plugins.plugin_class("broken")
    assert str(err.value) == f"model plugin 'broken' (from ?){message}"
    listed = plugins.installed_plugins()
    assert listed["broken"].error == str(err.value) and listed["broken"].config_schema == {}
    assert listed["mixer"].error is None  # the others still list


# ------------------------------------------------------------------------------ the mixer


def test_the_model_and_its_info() -> None:
    m = mixer()
    assert m.layer_names() == ["embed", "mixer0", "mixer1", "mixer2", "head"]
    assert m.vocab_size == 64 and m.max_seq_len == 12
    info = m.info()
    params = sum(p.numel() for p in m.build_model(0).parameters())
    assert (info.kind, info.architecture, info.parameters, info.layers, info.vocab_size) == (
        "plugin", "mixer (plugin pipewave-mixer)", params, 5, 64)


def test_the_sequence_length_is_the_configs() -> None:
    message = r"^the mixer fixes the sequence length at model.config.seq_len = 12; the job trains at 16$"
    with pytest.raises(ValueError, match=message):
        mixer(seq_len=16)


def test_make_layer_on_the_meta_device_allocates_nothing() -> None:
    m = mixer()
    with torch.device("meta"):
        layers = [m.make_layer(i) for i in range(m.num_layers())]
    assert all(p.is_meta for layer in layers for p in layer.parameters())


@pytest.mark.parametrize("indices", [[0], [1, 2], [3, 4], [4, 0], [2]])
def test_any_subset_of_layers_is_bit_identical(indices: list[int]) -> None:
    m = mixer()
    full = m.build_layers(seed=11)
    for i, layer in zip(indices, m.build_layers(seed=11, indices=indices), strict=True):
        ref = full[i].state_dict()
        got = layer.state_dict()
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref), i
    other = m.build_layers(seed=12, indices=[1])[0]
    assert not torch.equal(other.token_fc.weight, full[1].token_fc.weight)


def test_boundaries_are_a_tree_of_two_shapes() -> None:
    m = mixer()
    bounds = m.boundaries(4)
    assert len(bounds) == m.num_layers()
    for tree in bounds[:-1]:
        layout = Layout.of(tree)
        assert sorted(tree) == ["h", "summary"] and layout.shapes == ((4, 12, 16), (4, 16))
        assert layout.dtypes == (torch.float32, torch.float32) and not layout.single
    assert tuple(bounds[-1].shape) == (4, 5)  # the head's logits go to the loss


def test_labels_are_the_next_token_modulo_the_classes() -> None:
    m = mixer()
    targets = torch.tensor([[1, 2, 13], [0, 0, 4]])
    assert m.labels(targets).tolist() == [3, 4]  # type: ignore[attr-defined]


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_manual_stage_split_equals_the_whole_model(cut: int) -> None:
    """Layers [0, cut) and [cut, n) built apart, the tree passed between them as the stage engine
    sends it (one packed buffer), give the whole model's loss and gradients."""
    m = mixer()
    n = m.num_layers()
    tokens, targets = batch(m)
    whole = m.build_model(seed=3)
    loss = m.loss(whole(tokens), targets)
    loss.backward()

    first = nn.Sequential(*m.build_layers(seed=3, indices=range(cut)))
    second = nn.Sequential(*m.build_layers(seed=3, indices=range(cut, n)))
    sent = first(tokens)
    layout = Layout.of(sent)
    received = layout.tree([t.clone().requires_grad_() for t in layout.unpack(layout.pack(leaves(sent)))])
    split_loss = m.loss(second(received), targets)
    split_loss.backward()
    torch.autograd.backward(leaves(sent), [t.grad for t in leaves(received)])

    assert torch.equal(split_loss, loss)
    got = {f"{i}.{k}": p.grad for i, layer in enumerate([*first, *second])
           for k, p in layer.named_parameters()}
    want = {k: p.grad for k, p in whole.named_parameters()}
    assert got.keys() == want.keys()
    for k, g in want.items():
        torch.testing.assert_close(got[k], g, rtol=0, atol=1e-7, msg=k)


def test_a_few_steps_of_training_lower_the_loss() -> None:
    m = mixer(label_smoothing=0.0)
    net = m.build_model(seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    tokens, targets = batch(m, b=8)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = m.loss(net(tokens), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
