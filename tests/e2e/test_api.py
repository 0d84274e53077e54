"""The service over real HTTP: a ``pipewave serve`` process (uvicorn on loopback) joined to the
test session's Ray cluster (4 CPUs: 4 stage slots)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiserver import TOKEN, Server, tiny_job, wait_for
from harness import RAY_CPUS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def sse(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Read an SSE stream to its end: [{"id", "event", "data"}]."""
    out: list[dict[str, Any]] = []
    msg: dict[str, Any] = {}
    with client.stream("GET", path, params=params, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "data" in msg:
                    msg["data"] = json.loads(msg["data"])
                    out.append(msg)
                msg = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                msg[key] = value.removeprefix(" ")
    return out


def submit(client: httpx.Client, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = client.post("/jobs", json=spec, headers=headers)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


# ---------------------------------------------------------------------------------- lifecycle

def test_submit_follow_metrics_timeline_logs(server: Server) -> None:
    with server.client() as c:
        job = submit(c, tiny_job(name="first", steps=48, checkpoint={"every_steps": 24}))
        assert job["state"] in ("QUEUED", "STARTING") and job["id"].startswith("j-")
        assert c.get("/jobs").json()["items"][0]["id"] == job["id"]
        events = sse(c, f"/jobs/{job['id']}/events")  # follows until the job ends
        states = [e["data"]["data"]["state"] for e in events if e["event"] == "state"]
        assert states[0] == "QUEUED" and states[-1] == "SUCCEEDED", states
        assert "RUNNING" in states and "STARTING" in states
        seqs = [int(e["id"]) for e in events if "id" in e]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        live = [e for e in events if e["event"] == "metrics"]
        assert live and all("loss" in e["data"]["data"] for e in live)  # streamed step points
        assert {e["event"] for e in events} >= {"state", "plan", "checkpoint"}

        done = c.get(f"/jobs/{job['id']}").json()
        assert done["state"] == "SUCCEEDED" and done["step"] == 48 and done["progress"] == 1.0
        assert done["stages"] == 2 and [p["stage"] for p in done["placement"]] == [0, 1]
        assert done["placement"][0]["layer_names"][0] == "embed"
        assert all(p["chunks"] == [p["layers"]] for p in done["placement"])  # one chunk per stage
        points = c.get(f"/jobs/{job['id']}/metrics").json()["items"]
        assert [p["step"] for p in points] == list(range(1, 49))
        assert all(len(p["stage_busy_s"]) == 2 and p["loss"] > 0 for p in points)
        assert points[-1]["loss"] < points[0]["loss"]
        assert c.get(f"/jobs/{job['id']}/metrics", params={"since_step": 40}).json()["items"][0]["step"] == 41

        tl = c.get(f"/jobs/{job['id']}/timeline").json()
        assert tl["stages"] == 2 and {s["stage"] for s in tl["spans"]} == {0, 1}
        assert {s["kind"] for s in tl["spans"]} == {"F", "B"}
        assert tl["chunks_per_stage"] == 1 and all(s["chunk"] == 0 for s in tl["spans"])
        assert all(0 <= s["start"] <= s["end"] <= tl["duration_s"] + 1e-9 for s in tl["spans"])

        ckpts = c.get(f"/jobs/{job['id']}/checkpoints").json()["items"]
        assert [k["step"] for k in ckpts] == [24, 48] and all(k["bytes"] > 0 for k in ckpts)
        r = c.get(f"/jobs/{job['id']}/logs")
        assert "SUCCEEDED" in r.text and int(r.headers["X-Next-Offset"]) == len(r.content)
        r2 = c.get(f"/jobs/{job['id']}/logs", params={"offset": r.headers["X-Next-Offset"]})
        assert r2.text == ""
        # replay without following; and from a Last-Event-ID
        replay = sse(c, f"/jobs/{job['id']}/events", follow="false")
        assert [e["id"] for e in replay] == [str(s) for s in seqs]
        with c.stream("GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": str(seqs[-2])}) as r:
            assert sum(1 for line in r.iter_lines() if line.startswith("id:")) == 1


def test_idempotent_submit(server: Server) -> None:
    with server.client() as c:
        spec = tiny_job(name="idem", steps=2)
        first = c.post("/jobs", json=spec, headers={"Idempotency-Key": "key-1"})
        again = c.post("/jobs", json=spec, headers={"Idempotency-Key": "key-1"})
        assert first.status_code == 201 and again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        other = c.post("/jobs", json={**spec, "steps": 3}, headers={"Idempotency-Key": "key-1"})
        assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
        assert len([j for j in c.get("/jobs", params={"limit": 500}).json()["items"]
                    if j["name"] == "idem"]) == 1
        server.wait_state(first.json()["id"], {"SUCCEEDED"})


def test_queue_cancel_delete(server: Server) -> None:
    """A job that needs the whole cluster holds it; the next waits QUEUED, then starts when the
    first is cancelled. Cancel is idempotent; delete only ends ended jobs."""
    with server.client() as c:
        big = submit(c, tiny_job(name="big", stages=RAY_CPUS, steps=1_000_000))
        server.wait_state(big["id"], {"RUNNING"})
        placed = wait_for(lambda: [st for st in c.get("/cluster").json()["stages"]
                                   if st["job_id"] == big["id"]], 30, "the big job's stages on /cluster")
        assert sorted(st["stage"] for st in placed) == list(range(RAY_CPUS))
        assert all(st["chunks"] == [st["layers"]] for st in placed)
        second = submit(c, tiny_job(name="second", stages=2, steps=1_000_000))
        wait_for(lambda: "free" in server.job(second["id"])["reason"], 30, "a queue reason")
        queued = server.job(second["id"])
        assert queued["state"] == "QUEUED" and queued["queue_position"] == 0
        assert "needs 2 slot(s), 0 free" in queued["reason"]
        listed = c.get("/jobs", params=[("state", "QUEUED"), ("state", "RUNNING")]).json()
        assert {j["id"] for j in listed["items"]} >= {big["id"], second["id"]}

        assert c.delete(f"/jobs/{big['id']}").status_code == 409  # not ended yet
        r = c.post(f"/jobs/{big['id']}/cancel")
        assert r.status_code == 202 and r.json()["cancel_requested"]
        server.wait_state(big["id"], {"CANCELLED"})
        assert c.post(f"/jobs/{big['id']}/cancel").status_code == 200  # idempotent
        server.wait_state(second["id"], {"RUNNING"}, timeout=120)
        c.post(f"/jobs/{second['id']}/cancel")
        assert server.wait_state(second["id"], {"CANCELLED"})["finished_at"]

        assert c.delete(f"/jobs/{big['id']}").status_code == 204
        assert c.get(f"/jobs/{big['id']}").status_code == 404
        assert c.get(f"/jobs/{big['id']}/events").status_code == 404
        assert not (server.home / "jobs" / big["id"]).exists()


def test_cancel_a_queued_job(server: Server) -> None:
    with server.client() as c:
        holder = submit(c, tiny_job(name="holder", stages=RAY_CPUS, steps=1_000_000))
        server.wait_state(holder["id"], {"RUNNING"})
        waiting = submit(c, tiny_job(name="waiting", stages=RAY_CPUS))
        r = c.post(f"/jobs/{waiting['id']}/cancel")
        assert r.status_code == 202 and r.json()["state"] == "CANCELLED"
        c.post(f"/jobs/{holder['id']}/cancel")
        server.wait_state(holder["id"], {"CANCELLED"})
        events = sse(c, f"/jobs/{waiting['id']}/events")
        assert [e["data"]["data"]["state"] for e in events] == ["QUEUED", "CANCELLED"]


def test_a_job_bigger_than_the_cluster_waits_and_asks_the_autoscaler(server: Server) -> None:
    """6 stages on a 4-slot cluster: it stays QUEUED (a bigger cluster only), the service asks Ray's
    autoscaler for room for it in bundles of one stage's resources, and withdraws once it ends."""
    from harness import autoscaler_request

    with server.client() as c:
        job = submit(c, tiny_job(name="too-big", stages=6, steps=2))
        wait_for(lambda: "bigger cluster" in server.job(job["id"])["reason"], 30, "the queue's reason")
        wait_for(lambda: autoscaler_request() == [{"CPU": 1.0}] * 6, 30, "a request for 6 stages")
        c.post(f"/jobs/{job['id']}/cancel")
        server.wait_state(job["id"], {"CANCELLED"})
        wait_for(lambda: autoscaler_request() == [], 30, "the request withdrawn")


# ------------------------------------------------------------------------------- cluster etc.

def test_cluster_metrics_and_drain_errors(server: Server) -> None:
    with server.client() as c:
        body = c.get("/cluster").json()
        assert body["slots"]["total"] == RAY_CPUS and body["nodes"][0]["state"] == "ALIVE"
        node = body["nodes"][0]["node_id"]
        assert c.post(f"/cluster/nodes/{'0' * 56}/drain").status_code == 404
        r = c.post(f"/cluster/nodes/{node}/drain", json={"deadline_s": -1})
        assert r.status_code == 422 and r.json()["detail"]
        r = c.post(f"/cluster/nodes/{node}/drain")  # the only node is the head node
        assert r.status_code == 409 and "head node" in r.json()["detail"]
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for name in ("pipewave_jobs{state=\"SUCCEEDED\"}", "pipewave_cluster_slots", "pipewave_queue_length",
                 "pipewave_http_requests_total", "pipewave_http_request_duration_seconds_bucket"):
        assert name in text, name


# ------------------------------------------------------------------------------------- auth

def test_every_route_but_healthz_needs_the_token(server: Server) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    routes = [(m.upper(), p.replace("{job_id}", "j-000000000000").replace("{node_id}", "0" * 56))
              for p, ops in schema["paths"].items() for m in ops]
    routes += [("GET", "/"), ("GET", "/static/dashboard.js"), ("GET", "/docs"), ("GET", "/openapi.json")]
    assert len(routes) > 15
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                            {"Authorization": "Basic dXNlcjpwYXNz"}):
                r = c.request(method, path, headers=headers)
                if path == "/healthz":
                    assert r.status_code == 200
                    continue
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["detail"]
        # a browser gets the sign-in page; the login sets an HttpOnly cookie
        page = c.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 401 and "<form" in page.text
        assert c.get("/login", params={"token": "nope"}).status_code == 401
        r = c.get("/login", params={"token": TOKEN}, follow_redirects=False)
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert "SameSite=strict" in r.headers["set-cookie"]
        assert c.get("/").status_code == 200 and c.get("/api/v1/jobs").status_code == 200
        # the cookie alone cannot change anything without the request header
        assert c.post("/api/v1/jobs", json=tiny_job()).status_code == 401


def test_token_file_is_generated_private_and_kept(tmp_path: Path) -> None:
    from pipewave.api.settings import Settings, load_token

    settings = Settings(home=tmp_path / "home", api_token=None)
    token = load_token(settings)
    assert len(token) >= 32 and os.stat(settings.token_file).st_mode & 0o777 == 0o600
    assert load_token(settings) == token  # kept across starts
    assert load_token(Settings(home=tmp_path / "home", api_token="x" * 20)) == "x" * 20


# -------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("body, needle", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "valid dictionary"),
    (json.dumps(tiny_job(steps="many")).encode(), "steps"),
    (json.dumps(tiny_job(steps=0)).encode(), "steps"),
    (json.dumps(tiny_job(batch_size=10**9)).encode(), "batch_size"),
    (json.dumps({**tiny_job(), "entrypoint": "rm -rf /"}).encode(), "unknown field"),
    (json.dumps({**tiny_job(), "runtime_env": {"pip": ["x"]}}).encode(), "unknown field"),
    (json.dumps(tiny_job(model={"kind": "resnet"})).encode(), "model"),
    (json.dumps(tiny_job(stages=64)).encode(), "exceeds the model's"),
    (json.dumps(tiny_job(name="../etc")).encode(), "name"),
    (json.dumps(tiny_job(data={"kind": "text", "path": "/etc/passwd"})).encode(), "inside the data root"),
    (json.dumps(tiny_job(data={"kind": "text", "path": "../api-token"})).encode(), "'..'"),
    (json.dumps(tiny_job(data={"kind": "text", "path": "escape.txt"})).encode(), "inside the data root"),
    (json.dumps(tiny_job(data={"kind": "text", "path": "missing.txt"})).encode(), "no such file"),
])
def test_bad_submissions_get_a_4xx_with_a_message(server: Server, body: bytes, needle: str) -> None:
    link = server.home / "data" / "escape.txt"
    if not link.exists():
        link.symlink_to("/etc/hostname")  # a link inside the root to a file outside it
    with server.client() as c:
        r = c.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.json()["detail"], r.json()


def test_text_data_inside_the_root_is_accepted(server: Server) -> None:
    with server.client() as c:
        job = submit(c, tiny_job(name="text", steps=2, data={"kind": "text", "path": "corpus.txt"}))
        assert job["spec"]["data"]["path"] == str((server.home / "data" / "corpus.txt").resolve())
        assert server.wait_state(job["id"], {"SUCCEEDED", "FAILED"})["state"] == "SUCCEEDED"


def test_other_bad_requests(server: Server) -> None:
    with server.client() as c:
        huge = b'{"name": "' + b"x" * (2 << 20) + b'"}'
        r = c.post("/jobs", content=huge, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
        assert c.get("/jobs/j-nothere").status_code == 404
        assert c.get("/jobs/j-nothere").json()["detail"] == "no such job: j-nothere"
        assert c.get("/jobs", params={"limit": 0}).status_code == 422
        assert c.get("/jobs", params={"state": "SLEEPING"}).status_code == 422
        assert c.get("/jobs/bad%20id").status_code == 422
        r = c.post("/jobs", json=tiny_job(), headers={"Idempotency-Key": "x" * 201})
        assert r.status_code == 422
        r = c.post("/jobs", content=b"name: yaml", headers={"Content-Type": "text/yaml"})
        assert 400 <= r.status_code < 500


# --------------------------------------------------------------------------------- restart

def test_restart_after_sigkill_keeps_every_job(ray_address: str, tmp_path: Path) -> None:
    srv = Server(tmp_path / "home", ray_address).start()
    try:
        with srv.client() as c:
            resumable = submit(c, tiny_job(name="resumable", steps=400, checkpoint={"every_steps": 10}))
            srv.wait_state(resumable["id"], {"RUNNING"})
            no_ckpt = submit(c, tiny_job(name="no-checkpoint", steps=1_000_000))
            srv.wait_state(no_ckpt["id"], {"RUNNING"})
            wait_for(lambda: (srv.job(resumable["id"])["checkpoint_step"] or 0) >= 20, 120, "two checkpoints")
            done = submit(c, tiny_job(name="queued-at-kill", stages=RAY_CPUS, steps=2))
            before = {j: c.get(f"/jobs/{j}/events", params={"follow": "false"}).text
                      for j in (resumable["id"], no_ckpt["id"], done["id"])}
            step_before = srv.job(resumable["id"])["step"]
        srv.kill()

        srv = Server(tmp_path / "home", ray_address)
        srv.start()
        with srv.client() as c:
            listed = {j["id"]: j for j in c.get("/jobs").json()["items"]}
            assert set(listed) == {resumable["id"], no_ckpt["id"], done["id"]}
            failed = srv.wait_state(no_ckpt["id"], {"FAILED"}, timeout=30)
            assert "first checkpoint" in failed["reason"]
            for job_id, text in before.items():  # the history before the kill is all there
                after = c.get(f"/jobs/{job_id}/events", params={"follow": "false"}).text
                assert after.startswith(text.rstrip("\n").rsplit("\n\n", 1)[0])
            final = srv.wait_state(resumable["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
            assert final["state"] == "SUCCEEDED", final["reason"]
            events = sse(c, f"/jobs/{resumable['id']}/events", follow="false")
            resumed = [e for e in events if "resumed from checkpoint" in e["data"]["message"]]
            assert resumed and "service restarted" in " ".join(e["data"]["message"] for e in events)
            points = c.get(f"/jobs/{resumable['id']}/metrics").json()["items"]
            assert [p["step"] for p in points] == list(range(1, 401)) and step_before >= 20
            assert srv.wait_state(done["id"], {"SUCCEEDED"}, timeout=120)
    finally:
        srv.stop()


# ------------------------------------------------------------------------------- CLI client

def cli(server: Server, *args: str, token: str = TOKEN, timeout: float = 300) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "PIPEWAVE_URL": server.url, "PIPEWAVE_API_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pipewave.cli", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2])


def test_cli_client_against_the_server(server: Server, tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps(tiny_job(name="cli", steps=20)))
    done = cli(server, "submit", str(job_file), "--follow", "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "SUCCEEDED" and job["step"] == 20

    listed = cli(server, "jobs", "--json", "--state", "succeeded")
    assert listed.returncode == 0 and job["id"] in listed.stdout
    table = cli(server, "jobs")
    assert table.returncode == 0 and job["id"] in table.stdout and "SUCCEEDED" in table.stdout
    shown = cli(server, "status", job["id"])
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout
    log = cli(server, "logs", job["id"])
    assert log.returncode == 0 and "SUCCEEDED" in log.stdout

    long_file = tmp_path / "long.yaml"
    long_file.write_text(json.dumps(tiny_job(name="cli-long", steps=1_000_000)))
    sub = cli(server, "submit", str(long_file), "--json")
    long_id = json.loads(sub.stdout)["id"]
    server.wait_state(long_id, {"RUNNING"})
    stopped = cli(server, "cancel", long_id, "--json")
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["cancel_requested"]
    server.wait_state(long_id, {"CANCELLED"})
    followed = cli(server, "logs", long_id, "--follow")  # the job ended: prints and returns
    assert followed.returncode == 0 and "CANCELLED" in followed.stdout

    for args, token, needle in [(("status", "j-000000000000"), TOKEN, "no such job"),
                                (("jobs",), "wrong-token-wrong-token", "unauthorized"),
                                (("submit", str(tmp_path / "missing.yaml")), TOKEN, "not found")]:
        bad = cli(server, *args, token=token)
        lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
        assert bad.returncode in (1, 2) and len(lines) == 1 and needle in lines[0], bad.stderr


def test_serve_submits_the_example_and_shows_it(ray_address: str, tmp_path: Path) -> None:
    """The README's main command (`pipewave serve --submit examples/gpt-small.yaml`) ends with the
    dashboard reachable and the job on it (dispatch off here: the job stays queued)."""
    root = Path(__file__).resolve().parents[2]
    srv = Server(tmp_path / "home", ray_address, env={"PIPEWAVE_DISPATCH": "false"},
                 args=("--submit", str(root / "examples" / "gpt-small.yaml"))).start()
    try:
        log = (tmp_path / "home" / "server.log").read_text()
        assert "submitted gpt-small as job j-" in log and f"dashboard: {srv.url}/login?token={TOKEN}" in log
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/login", params={"token": TOKEN}, follow_redirects=True).status_code == 200
            assert "<title>" in c.get("/").text
            (job,) = c.get("/api/v1/jobs").json()["items"]
            assert job["name"] == "gpt-small" and job["state"] == "QUEUED"
            assert job["queue_position"] == 0
    finally:
        srv.stop()
