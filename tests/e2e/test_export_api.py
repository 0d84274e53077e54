"""A checkpoint's model over REST (``GET /jobs/{id}/checkpoints/{step}/export``) is the same
folder ``pipewave export`` writes, as a zip; and a job submitted with ``init_from`` must name a
folder inside the data root."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from safetensors.torch import load as load_safetensors

from apiserver import Server, tiny_job
from pipewave.service.control.checkpoint import load_model_state, step_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_export_a_checkpoint_over_rest(server: Server) -> None:
    with server.client() as c:
        r = c.post("/jobs", json=tiny_job(name="exported", steps=4, checkpoint={"every_steps": 2}))
        assert r.status_code == 201, r.text
        job = server.wait_state(r.json()["id"], {"SUCCEEDED", "FAILED"})
        assert job["state"] == "SUCCEEDED", job
        steps = [cp["step"] for cp in c.get(f"/jobs/{job['id']}/checkpoints").json()["items"]]
        assert 2 in steps and 4 in steps
        r = c.get(f"/jobs/{job['id']}/checkpoints/2/export")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text
        files = zipfile.ZipFile(io.BytesIO(r.content))
        assert sorted(files.namelist()) == ["model.safetensors", "pipewave.json"]
        exported = load_safetensors(files.read("model.safetensors"))
        saved = load_model_state(step_dir(server.home / "jobs" / job["id"], 2))
        assert exported.keys() == saved.keys()
        assert all(torch.equal(exported[k], saved[k]) for k in saved)
        assert c.get(f"/jobs/{job['id']}/checkpoints/2/export").content == r.content  # kept
        # no such step, no such job: 404 with a message
        r = c.get(f"/jobs/{job['id']}/checkpoints/3/export")
        assert r.status_code == 404 and "no checkpoint at step 3" in r.json()["detail"]
        assert c.get("/jobs/j-nope/checkpoints/2/export").status_code in (404, 422)
        # a job may start from it only inside the data root
        r = c.post("/jobs", json=tiny_job(name="outside", init_from="/etc"))
        assert r.status_code == 422 and "inside the data root" in r.json()["detail"]
        r = c.post("/jobs", json=tiny_job(name="missing", init_from="no-such-folder"))
        assert r.status_code == 422 and "init_from: no such file or folder" in r.json()["detail"]


def test_checkpoints_list_what_keep_last_leaves(server: Server) -> None:
    with server.client() as c:
        r = c.post("/jobs", json=tiny_job(name="kept", steps=6,
                                          checkpoint={"every_steps": 2, "keep_last": 1}))
        assert r.status_code == 201, r.text
        job = server.wait_state(r.json()["id"], {"SUCCEEDED", "FAILED"})
        assert job["state"] == "SUCCEEDED", job
        listed = c.get(f"/jobs/{job['id']}/checkpoints").json()
        assert listed["keep_last"] == 1 and [cp["step"] for cp in listed["items"]] == [6]
        assert sorted(p.name for p in (server.home / "jobs" / job["id"] / "checkpoints").iterdir()) \
            == ["step-000006"]
        r = c.post("/jobs", json=tiny_job(name="bad", checkpoint={"keep_last": 0}))
        assert r.status_code == 422 and "checkpoint.keep_last" in r.json()["detail"]
