"""Every bad model or data a job spec can name ends ``pipewave train`` with one readable line
and exit code 2, before anything runs (the same cases answer 422 over REST:
tests/e2e/test_model_inputs_api.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from badinputs import CASES, make_inputs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs")
    make_inputs(path)
    return path


@pytest.mark.parametrize(("fields", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_train_refuses_in_one_line(root: Path, fields: dict[str, Any], message: str,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pipewave.cli.main import main

    job = root / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "bad", **fields}))  # relative paths: beside the file
    monkeypatch.setattr(sys, "argv", ["pipewave", "train", str(job), "--output", str(root / "out")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: invalid job spec: ") and message in err, err
    assert not (root / "out").exists()


def test_init_from_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    import json

    from harness import new_spec
    from pipewave.service.spec import SpecError, parse_spec

    spec = new_spec()
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "pipewave-checkpoint/1", "step": 1, "spec": spec.model_dump(mode="json"),
         "stages": []}))
    fields = {**spec.model_dump(mode="json"), "init_from": str(tmp_path)}
    assert parse_spec(fields).init_from == str(tmp_path)  # the same model: accepted
    with pytest.raises(SpecError, match=r"init_from: the checkpoint is of another model \(gpt, 6 layers\)"):
        parse_spec({**fields, "model": {"kind": "mlp", "seq_len": 16}})
