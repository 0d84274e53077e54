"""Job spec validation: every bad input is one readable line (pure, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipewave.service.spec import JobSpec, SpecError, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpt-small.yaml"


def base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_parses_as_written() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.name == "gpt-small" and spec.schedule == "pipedream" and spec.stages == 4
    assert spec.model.kind == "gpt" and spec.model.d_model == 256 and spec.microbatch_size == 4
    assert spec.optimizer.lr == pytest.approx(3e-4) and spec.checkpoint.every_steps == 50


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"bogus": 1}, "bogus: unknown field"),
        ({"model": {"kind": "gpt", "n_layers": 2, "d_model": 32, "n_heads": 2, "wat": 3}}, "unknown field"),
        ({"stages": 19}, "stages (19) exceeds the model's 18 layers"),
        ({"optimizer": {"kind": "adam", "lr": -0.1}}, "optimizer.lr: Input should be greater than 0"),
        ({"batch_size": 30}, "batch_size (30) must be divisible by microbatches (8)"),
        ({"schedule": "zigzag"}, "schedule: Input should be"),
        ({"vertical_sync": True, "schedule": "1f1b"}, "vertical_sync applies only"),
        ({"steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"model": {"kind": "gpt", "d_model": 30, "n_heads": 4}}, "divisible by n_heads"),
        ({"model": {"kind": "resnet"}}, "model"),
        ({"data": {"kind": "text", "path": "/nonexistent/corpus.txt"}}, "no such file"),
        ({"name": "../etc"}, "name: String should match pattern"),
        ({"model": {"kind": "mlp", "vocab_size": 16}}, "vocab_size (16) must be at least 256"),
    ],
)
def test_bad_specs_fail_with_one_line(patch: dict, needle: str) -> None:
    data = {**base(), **patch}
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    msg = str(info.value)
    assert needle in msg, msg
    assert "\n" not in msg and "Traceback" not in msg


def test_auto_counts_and_their_rules() -> None:
    data = {k: v for k, v in base().items() if k not in ("stages", "microbatches")}
    spec = parse_spec(data)
    assert (spec.stages, spec.microbatches, spec.partition) == ("auto", "auto", "auto")
    assert not spec.is_resolved and spec.microbatch_size == 8  # 32 / 4: the profiling shape
    with pytest.raises(ValueError, match="not resolved"):
        _ = spec.num_stages
    done = spec.resolve(3, 16)
    assert done.is_resolved and (done.num_stages, done.num_microbatches, done.microbatch_size) == (3, 16, 2)
    assert parse_spec({**data, "max_stages": 2}).max_stages == 2
    for patch, needle in [
        ({"partition": "uniform"}, "partition 'uniform' needs stages and microbatches"),
        ({"partition": "uniform", "stages": 2}, "partition 'uniform' needs"),
        ({"stages": 2, "max_stages": 3}, "max_stages bounds stages 'auto'"),
        ({"stages": "many"}, "stages"),
        ({"max_stages": 0}, "max_stages"),
    ]:
        with pytest.raises(SpecError, match="invalid job spec") as info:
            parse_spec({**data, **patch})
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(SpecError, match="batch_size"):  # a resolved count is validated again
        parse_spec(data).resolve(2, 5)


def test_text_path_resolves_relative_to_job_file(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_bytes(b"hello world " * 100)
    data = {**base(), "data": {"kind": "text", "path": "corpus.txt"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "job.yaml")
    assert spec.data.kind == "text" and Path(spec.data.path) == tmp_path / "corpus.txt"


def test_short_text_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_bytes(b"abc")
    with pytest.raises(SpecError, match="shorter than seq_len"):
        parse_spec({**base(), "data": {"kind": "text", "path": str(tmp_path / "tiny.txt")}})


@pytest.mark.parametrize("content", ["[1, 2", "- a\n- b\n", "name: [unclosed"])
def test_unreadable_job_files(tmp_path: Path, content: str) -> None:
    p = tmp_path / "job.yaml"
    p.write_text(content)
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert "\n" not in str(info.value)


def test_missing_job_file() -> None:
    with pytest.raises(SpecError, match="job file not found"):
        load_spec("/nonexistent/job.yaml")


def test_overrides_and_json_roundtrip(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE, {"steps": 7})
    assert spec.steps == 7
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
