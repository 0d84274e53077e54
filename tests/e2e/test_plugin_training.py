"""The example model plugin (``mixer``, examples/pipewave-mixer) trained through the REST API on 2
stages, its stage boundary a tree of two tensors of different shapes, equals the unpipelined
training of the same model on the same batches (tests/reference.py); a job naming a plugin that
is not installed, or a config the plugin's schema rejects, is refused with one line (422)."""

from __future__ import annotations

from typing import Any

import pytest

import reference as ref
from apiserver import Server
from pipewave.service.control.checkpoint import load_model_state
from pipewave.service.spec import JobSpec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MIXER = {"vocab_size": 256, "seq_len": 16, "d_model": 16, "depth": 2, "num_classes": 8,
         "label_smoothing": 0.1}


def mixer_job(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "mixer", "model": {"kind": "plugin", "name": "mixer", "config": MIXER},
        "data": {"kind": "synthetic"}, "schedule": "1f1b", "partition": "uniform", "stages": 2,
        "microbatches": 4, "batch_size": 8, "steps": 5, "optimizer": {"kind": "adam", "lr": 1e-2},
        "seed": 3,
    }
    spec.update(overrides)
    return spec


def test_the_plugin_trains_on_two_stages_like_unpipelined(server: Server) -> None:
    spec = mixer_job()
    with server.client() as c:
        r = c.post("/jobs", json=spec)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        done = server.wait_state(job_id, {"SUCCEEDED", "FAILED"}, timeout=240)
        assert done["state"] == "SUCCEEDED", done["reason"]
        points = c.get(f"/jobs/{job_id}/metrics").json()["items"]
        checkpoints = c.get(f"/jobs/{job_id}/checkpoints").json()["items"]
    assert [p["layers"] for p in done["placement"]] == [[0, 2], [2, 4]]
    assert done["placement"][1]["layer_names"] == ["mixer1", "head"]

    expected = ref.train_sync(JobSpec.model_validate(spec))
    assert [p["loss"] for p in points] == pytest.approx(expected.step_losses, rel=1e-4, abs=1e-5)
    assert checkpoints[-1]["step"] == 5
    ref.assert_state_close(load_model_state(checkpoints[-1]["path"]), expected.state)


@pytest.mark.parametrize(("model", "detail"), [
    ({"kind": "plugin", "name": "nope", "config": {}}, "model plugin 'nope' is not installed (installed: "),
    ({"kind": "plugin", "name": "mixer", "config": {**MIXER, "depth": 0}},
     "model.config.depth: Input should be greater than or equal to 1"),
    ({"kind": "plugin", "name": "mixer", "config": {**MIXER, "width": 3}},
     "model.config.width: unknown field"),
    ({"kind": "plugin", "name": "mixer", "config": {**MIXER, "depth": "2"}},
     "model.config.depth: Input should be a valid integer"),
])
def test_bad_plugin_models_are_refused(server: Server, model: dict[str, Any], detail: str) -> None:
    with server.client() as c:
        r = c.post("/jobs", json=mixer_job(model=model))
    assert r.status_code == 422, r.text
    text = r.json()["detail"]
    assert detail in text and "\n" not in text, text
