"""The stage config: what the service tells a stage actor, built from the job spec, in worker types."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from pipewave.service.spec import JobSpec
from pipewave.workers.config import DataSettings, OptimizerSettings, StageConfig
from pipewave.workers.contract import ModelSettings
from pipewave.workers.data import load_corpus
from pipewave.workers.models import build_layers, num_layers
from pipewave.workers.placement import looped, single

WORKERS = Path(__file__).resolve().parents[2] / "workers"


def _spec(**kw: object) -> JobSpec:
    data = {"name": "t", "model": {"kind": "gpt", "n_layers": 4, "d_model": 32, "n_heads": 4},
            "stages": 2, "microbatches": 4, "batch_size": 8, "seed": 7,
            "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.5}, **kw}
    return JobSpec.model_validate(data)


def test_built_from_the_spec_with_what_a_stage_reads() -> None:
    spec = _spec(schedule="interleaved-1f1b", chunks=2)
    cfg = spec.stage_config()
    assert cfg.model == ModelSettings.of("gpt", {"kind": "gpt", "vocab_size": 256, "d_model": 32,
                                                 "n_layers": 4, "n_heads": 4, "seq_len": 128}, 128)
    assert cfg.data == DataSettings("stdlib")
    assert cfg.optimizer == OptimizerSettings("sgd", 0.1, (0.9, 0.999), 1e-8, 0.0, 0.5)
    assert (cfg.seed, cfg.batch_size, cfg.num_microbatches, cfg.microbatch_size) == (7, 8, 4, 2)
    assert cfg.schedule == "interleaved-1f1b"
    assert cfg.placement == looped(2, 2) == spec.placement() and cfg.num_stages == 2
    # the same model, layer for layer, whichever config builds it
    a, b = build_layers(cfg.model, 7, [1]), build_layers(spec.model, 7, [1])
    assert num_layers(cfg.model) == num_layers(spec.model) == 10
    assert all((p == q).all() for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True))


def test_mlp_and_text_data(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("hello pipewave " * 20)
    spec = JobSpec.model_validate({"name": "t", "model": {"kind": "mlp", "n_layers": 2,
                                                          "seq_len": 8},
                                   "data": {"kind": "text", "path": str(text)},
                                   "stages": 1, "microbatches": 2, "schedule": "gpipe"})
    cfg = spec.stage_config()
    assert "n_heads" not in cfg.model.options and cfg.placement == single(1)
    assert cfg.data == DataSettings("text", str(text))
    assert load_corpus(cfg.data).numel() == text.stat().st_size


def test_pickles_without_the_service_classes() -> None:
    """Ray ships it to the actor: it must not drag the service's (or pydantic's) classes along."""
    cfg = _spec(schedule="hanayo", waves=1).stage_config()
    blob = pickle.dumps(cfg)
    assert pickle.loads(blob) == cfg
    assert b"pipewave.service" not in blob and b"pydantic" not in blob


def test_an_unresolved_spec_has_no_stage_config() -> None:
    with pytest.raises(ValueError, match="microbatches 'auto' is not resolved yet"):
        _spec(microbatches="auto").stage_config()
    with pytest.raises(ValueError, match="schedule 'auto' is not resolved yet"):
        _spec(schedule="auto").stage_config()


@pytest.mark.parametrize(("batch", "micro", "message"), [
    (8, 3, r"batch_size \(8\) must be divisible by num_microbatches \(3\)"),
    (0, 1, "batch_size must be a positive int, got 0"),
    (8, True, "num_microbatches must be a positive int, got True"),
])
def test_bad_sizes_are_a_clear_error(batch: int, micro: int, message: str) -> None:
    cfg = _spec().stage_config()
    with pytest.raises(ValueError, match=message):
        StageConfig(cfg.model, cfg.data, cfg.optimizer, 0, batch, micro, "1f1b", single(2))


def test_workers_import_nothing_from_the_layers_above() -> None:
    found = []
    for path in sorted(WORKERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names
                      if n.split(".")[:2] in (["pipewave", "service"], ["pipewave", "api"],
                                              ["pipewave", "cli"])]
    assert found == []
