"""The models a job spec can name, over real HTTP (a ``pipewave serve`` process): ``GET
/api/v1/models`` lists the built-ins, transformers and the installed example plugin ``mixer``
(examples/pipewave-mixer, installed by `make install`) with their JSON schemas; ``pipewave models``
shows them; a job's page data carries its model (kind, architecture, parameters, layers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import jsonschema
import pytest

from apiserver import TOKEN, Server, tiny_job
from harness import ROOT
from pipewave.service.spec import JobSpec
from pipewave.workers.models import build_model

MIXER = {"vocab_size": 256, "seq_len": 16, "d_model": 16, "depth": 2, "num_classes": 8}


def listed(server: Server) -> dict[str, dict[str, Any]]:
    with server.client() as c:
        r = c.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["items"]}


def cli(server: Server, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PIPEWAVE_URL": server.url, "PIPEWAVE_API_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "pipewave.cli", "models", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_models_lists_the_builtins_transformers_and_the_plugin(server: Server) -> None:
    models = listed(server)
    assert list(models)[:3] == ["gpt", "mlp", "transformers"] and "mixer" in models
    assert {m["kind"] for m in models.values()} == {"gpt", "mlp", "transformers", "plugin"}
    gpt = models["gpt"]["spec_schema"]
    assert {"vocab_size", "d_model", "n_layers", "n_heads", "seq_len"} <= set(gpt["properties"])
    jsonschema.validate({"kind": "gpt", "n_layers": 2}, gpt)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "gpt", "n_layers": 0}, gpt)
    assert set(models["transformers"]["spec_schema"]["properties"]) == {"kind", "config", "pretrained"}
    assert {"llama", "gpt2"} <= set(models["transformers"]["architectures"])

    mixer = models["mixer"]
    assert (mixer["kind"], mixer["distribution"], mixer["version"], mixer["error"]) == (
        "plugin", "pipewave-mixer", "0.1.0", None)
    assert mixer["description"].startswith("An MLP-Mixer classifier")
    assert set(mixer["config_schema"]["properties"]) == {"vocab_size", "seq_len", "d_model", "depth",
                                                         "num_classes", "label_smoothing"}
    section = {"kind": "plugin", "name": "mixer", "config": MIXER}
    jsonschema.validate(section, mixer["spec_schema"])  # the whole model section, config included
    for bad in ({**section, "name": "other"}, {**section, "config": {**MIXER, "depth": 0}},
                {**section, "config": {**MIXER, "width": 3}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, mixer["spec_schema"])


def test_models_needs_the_token(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        r = httpx.get(f"{server.url}/api/v1/models", headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["detail"], r.text


def test_the_models_command(server: Server) -> None:
    r = cli(server)
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[2].strip(): line for line in r.stdout.splitlines() if line.count("│") > 3}
    assert {"gpt", "mlp", "transformers", "mixer"} <= set(rows), r.stdout
    assert "pipewave-mixer 0.1.0" in rows["mixer"] and "depth" in rows["mixer"]
    assert "4 models" in r.stdout

    r = cli(server, "--json")
    assert r.returncode == 0, r.stderr
    assert {m["name"] for m in json.loads(r.stdout)["items"]} == {"gpt", "mlp", "transformers", "mixer"}

    r = cli(server, token="wrong-token-wrong-token")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("error: unauthorized: the API token was rejected "
                                "(set PIPEWAVE_API_TOKEN or --token)")


@pytest.mark.parametrize("model", [
    {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 16},
    {"kind": "plugin", "name": "mixer", "config": MIXER},
])
def test_a_job_shows_its_model(server: Server, model: dict[str, Any]) -> None:
    spec = tiny_job(name="model-info", model=model, steps=2)
    params = sum(p.numel() for p in build_model(JobSpec.model_validate(spec).model_settings, 0).parameters())
    with server.client() as c:
        r = c.post("/jobs", json=spec)
        assert r.status_code == 201, r.text
        info = c.get(f"/jobs/{r.json()['id']}").json()["model_info"]
        assert r.json()["model_info"] == info
        assert c.get("/jobs").json()["items"][0]["model_info"] is None  # lists leave it out
    plugin = model["kind"] == "plugin"
    assert info == {"kind": model["kind"], "parameters": params, "layers": 4 if plugin else 6,
                    "architecture": "mixer (plugin pipewave-mixer)" if plugin else "gpt"}
    server.wait_state(r.json()["id"], {"SUCCEEDED"})
