"""Every bad model or data a job spec can name answers ``POST /jobs`` with 422 and one line
(the same cases end ``pipewave train`` with exit 2: tests/unit/test_model_inputs.py); paths
must lie inside the data root."""

from __future__ import annotations

import pytest

from apiserver import Server
from badinputs import CASES, SYNTHETIC, make_inputs

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_every_bad_model_input_is_a_422_with_one_line(server: Server) -> None:
    root = server.home / "data"
    make_inputs(root)
    cases = [*CASES,
             ("pretrained-outside-the-data-root",
              {"model": {"kind": "transformers", "pretrained": str(root.parent)}, "data": SYNTHETIC},
              "model.pretrained: must lie inside the data root"),
             ("dataset-outside-the-data-root",
              {"model": {"kind": "gpt"}, "data": {"kind": "tokens", "path": "../data/ds300"}},
              "data.path: '..' is not allowed")]
    with server.client() as c:
        before = c.get("/jobs").json()["total"]
        for case, fields, message in cases:
            r = c.post("/jobs", json={"name": "bad", **fields})
            assert r.status_code == 422, (case, r.text)
            detail = r.json()["detail"]
            assert message in detail and "\n" not in detail, (case, detail)
        assert c.get("/jobs").json()["total"] == before  # nothing was stored
        # the same folder, named right, is accepted
        r = c.post("/jobs", json={"name": "ok", "model": {"kind": "transformers", "pretrained": "llama"},
                                  "data": {"kind": "synthetic", "seq_len": 16},
                                  "steps": 1, "stages": 2, "microbatches": 2, "batch_size": 4})
        assert r.status_code == 201, r.text
        assert server.wait_state(r.json()["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"
