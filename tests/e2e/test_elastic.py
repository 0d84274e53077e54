"""Elasticity on a real multi-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine).

The module replaces the session's embedded cluster with its own (a head without CPUs and worker
nodes of 1 CPU each: one stage slot per node); later tests start the embedded one again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import autoscaler_request
from pipewave.service.control.checkpoint import load_model_state
from pipewave.service.control.controller import ControllerOptions, JobController, JobState
from pipewave.service.control.job import STAGES_READY
from ray_nodes import add_workers, run_killing

pytestmark = pytest.mark.ray

DEEP = {"kind": "gpt", "vocab_size": 256, "d_model": 64, "n_layers": 4, "n_heads": 2, "seq_len": 64}


# ----------------------------------------------------------------------------- on a Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def workers(cluster: Any) -> Iterator[list[Any]]:
    """The worker nodes a test adds (append to it); removed when the test ends."""
    nodes: list[Any] = []
    yield nodes
    for node in nodes:
        if node in cluster.worker_nodes:
            try:
                cluster.remove_node(node)
            except Exception:  # already gone (drained)
                cluster.worker_nodes.discard(node)


def elastic_spec(make_spec, **kw: Any):
    return make_spec(model=DEEP, stages="auto", microbatches=4, partition="auto", batch_size=16,
                     steps=80, elastic={"min_stages": 1, "max_stages": 4}, **kw)


@pytest.fixture(scope="module")
def fixed_run(cluster: Any, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The same job without elasticity on 2 fixed stages: the weights every elastic run of the
    synchronous schedule must end with (its updates do not depend on where the cuts are)."""
    from ray.cluster_utils import Cluster

    assert isinstance(cluster, Cluster)
    nodes = add_workers(cluster, 2)
    connect(cluster)
    from harness import new_spec as _make_spec

    tmp = tmp_path_factory.mktemp("fixed")
    spec = _make_spec(model=DEEP, stages=2, microbatches=4, partition="auto", batch_size=16, steps=80)
    ctl = JobController(spec, tmp / "out", options(tmp))
    summary = ctl.run()
    for node in nodes:
        cluster.remove_node(node)
    assert summary.state == "SUCCEEDED", summary.reason
    return load_model_state(ctl.checkpoints[-1])


def assert_same_weights(ctl: JobController, reference: dict[str, torch.Tensor]) -> None:
    state = load_model_state(ctl.checkpoints[-1])
    assert state.keys() == reference.keys()
    for k in state:
        torch.testing.assert_close(state[k], reference[k], atol=1e-5, rtol=1e-4, msg=k)


def connect(cluster: Any) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)


def options(tmp_path: Path, **kw: Any) -> ControllerOptions:
    return ControllerOptions(threads_per_stage=1, resume=False, profile_dir=tmp_path / "profiles",
                             calibrate_steps=0, elastic_run_steps=2, watch_every_s=0.3, confirm=2,
                             **kw)


def test_job_grows_as_nodes_join(cluster: Any, workers: list[Any], fixed_run, make_spec,
                                 tmp_path: Path) -> None:
    """2 nodes, then a 3rd, then a 4th join: the job moves to 3 and then 4 stages, live, the
    whole state bitwise the same across each move, every step run once; a synchronous schedule,
    so the weights must equal an uninterrupted run's on the same samples."""
    workers += add_workers(cluster, 2)
    connect(cluster)
    ctl = JobController(elastic_spec(make_spec), tmp_path / "elastic", options(tmp_path))
    joined, requests = 0, []
    while not ctl.state.is_terminal:
        ctl.step()
        requests.append(autoscaler_request())
        if ctl.state is JobState.RUNNING and joined < 2 and ctl.step_done >= 10 + 30 * joined \
                and ctl.spec.num_stages == 2 + joined:
            workers += add_workers(cluster, 1)
            joined += 1
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    moves = [e.data for e in ctl.events if e.kind == "rebalance"]
    assert [len(m["before"]) for m in moves] == [2, 3] and [len(m["after"]) for m in moves] == [3, 4]
    assert all(m["verified"] for m in moves)  # state digests equal before and after
    assert summary.stages == 4 and len(summary.partition) == 4
    assert [m.step for m in ctl.metrics] == list(range(1, 81))  # nothing skipped, nothing twice
    for m in moves:
        print(f"\nmove at step {m['step']}: {m['before']} -> {m['after']} in {m['pause_s']:.2f} s")
    assert_same_weights(ctl, fixed_run)
    # 2 slots for up to 4 stages: the autoscaler was asked for room for 4 (a KubeRay cluster
    # would add the nodes); with 4 slots the request was withdrawn
    assert requests[0] == [{"CPU": 1.0}] * 4 and requests[-1] == []
    assert any(e.message.startswith("withdrew the autoscaler request") for e in ctl.events)


def test_drained_node_is_left_before_it_goes(cluster: Any, workers: list[Any], fixed_run,
                                             make_spec, tmp_path: Path) -> None:
    """3 nodes, 3 stages; the middle stage's node is drained (as an autoscaler scale-down or a
    preemption notice would): the job moves its stages off it, then the node is removed; the
    job finishes with every update applied."""
    from pipewave.service.control.elastic import drain_node

    workers += add_workers(cluster, 3)
    connect(cluster)
    ctl = JobController(elastic_spec(make_spec), tmp_path / "drain", options(tmp_path))
    drained: str | None = None
    while not ctl.state.is_terminal:
        ctl.step()
        if ctl.state is JobState.RUNNING and drained is None and ctl.step_done >= 10:
            assert ctl.spec.num_stages == 3
            drained = ctl.stage_nodes[1]
            drain_node(drained, deadline_s=60)
        if drained not in (None, "removed") and drained not in ctl.stage_nodes \
                and ctl.state is JobState.RUNNING:
            node = next(n for n in workers if n.node_id == drained)
            cluster.remove_node(node)  # gone only after the job left it
            workers.remove(node)
            drained = "removed"
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    assert drained == "removed"
    (move,) = [e.data for e in ctl.events if e.kind == "rebalance"]
    assert len(move["before"]) == 3 and len(move["after"]) == 2 and move["verified"]
    assert "leaving" in move["reason"]
    assert [m.step for m in ctl.metrics] == list(range(1, 81))
    print(f"\ndrain: {move['before']} -> {move['after']} in {move['pause_s']:.2f} s")
    assert_same_weights(ctl, fixed_run)


def test_drain_command(cluster: Any, workers: list[Any]) -> None:
    """`pipewave drain NODE_ID --address ADDR`: the node is marked draining; a bad id is one
    line and exit 2."""
    import subprocess
    import sys

    import ray

    from pipewave.service.cluster.nodes import draining_node_ids

    workers += add_workers(cluster, 1)
    connect(cluster)
    root = Path(__file__).resolve().parents[2]

    def pipewave(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipewave.cli", *args], cwd=root, text=True,
                              capture_output=True, timeout=120)

    node = workers[-1].node_id
    ok = pipewave("drain", node, "--address", cluster.address, "--deadline-s", "600")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"draining {node}"
    alive = {str(n["NodeID"]): n["Alive"] for n in ray.nodes()}
    assert node in draining_node_ids() or not alive[node]  # an idle drained node exits at once
    for bad in ("not-hex", "ab" * 28):
        proc = pipewave("drain", bad, "--address", cluster.address)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "not a Ray node id" in lines[0] or "no alive node" in lines[0]
    assert ray.is_initialized()


def test_drain_over_rest_moves_a_service_job_off_the_node(cluster: Any, workers: list[Any], make_spec,
                                                         tmp_path: Path) -> None:
    """`POST /api/v1/cluster/nodes/{id}/drain` on a `pipewave serve` joined to this cluster: the
    service's elastic job moves its stages off the drained node, which is then removed, and
    trains every step once (the weights of such a move are checked against a fixed run in
    test_drained_node_is_left_before_it_goes)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from apiserver import Server, wait_for

    workers += add_workers(cluster, 3)
    connect(cluster)
    srv = Server(tmp_path / "home", cluster.address).start()
    try:
        with srv.client() as c:
            spec = elastic_spec(make_spec).model_dump(mode="json") | {"steps": 400}  # (long enough)
            job = c.post("/jobs", json=spec).json()
            wait_for(lambda: (j := srv.job(job["id"]))["state"] == "RUNNING" and j["step"] >= 10
                     and len(j["placement"]) == 3 and j, 180, "3 stages running")
            node = srv.job(job["id"])["placement"][1]["node_id"]
            assert c.post(f"/cluster/nodes/{node}/drain", json={"deadline_s": 120}).status_code == 202
            assert {n["node_id"]: n["state"] for n in c.get("/cluster").json()["nodes"]}[node] == "DRAINING"
            wait_for(lambda: (j := srv.job(job["id"]))["state"] == "RUNNING" and node not in
                     {p["node_id"] for p in j["placement"]} and j, 180, "the stages to leave the node")
            gone = next(n for n in workers if n.node_id == node)
            cluster.remove_node(gone)  # the node goes only after the job left it
            workers.remove(gone)
            final = srv.wait_state(job["id"], {"SUCCEEDED", "FAILED"}, timeout=300)
            assert final["state"] == "SUCCEEDED", final["reason"]
            replay = c.get(f"/jobs/{job['id']}/events", params={"follow": "false"}).text
            events = [e for e in replay.split("\n") if e.startswith("data:")]
            assert any('"kind":"rebalance"' in e and "leaving" in e for e in events), events
            points = c.get(f"/jobs/{job['id']}/metrics").json()["items"]
            assert [p["step"] for p in points] == list(range(1, 401))
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "pipedream", "2bw"])
def test_a_move_keeps_each_schedules_semantics(cluster: Any, workers: list[Any], make_spec,
                                              schedule: str, tmp_path: Path) -> None:
    """A live move at a run boundary (async stashes drained, every update applied) is exactly a
    stop and a restart in the new layout: 2 stages grow to 3 at step k; the same job stopped at
    step k on 2 stages and resumed from disk on 3 ends bitwise equal. (Its runs end where the
    elastic job's do: an asynchronous schedule drains at each run's end.)"""
    workers += add_workers(cluster, 2)
    connect(cluster)
    opts = options(tmp_path)
    spec = make_spec(model=DEEP, schedule=schedule, stages="auto", microbatches=4, partition="auto",
                     batch_size=16, steps=40, elastic={"min_stages": 1, "max_stages": 3})
    live = JobController(spec, tmp_path / "live", opts)
    while not live.state.is_terminal:
        live.step()
        if live.state is JobState.RUNNING and live.step_done >= 6 and len(workers) == 2:
            workers += add_workers(cluster, 1)
    assert live.summary().state == "SUCCEEDED", live.summary().reason
    (move,) = [e.data for e in live.events if e.kind == "rebalance"]
    k = move["step"]
    assert len(move["before"]) == 2 and len(move["after"]) == 3 and 6 <= k < 40
    # the same job in two parts: k steps on 2 stages, then a resume on 3 (from the checkpoint)
    common = {"model": DEEP, "schedule": schedule, "microbatches": 4, "partition": "auto",
              "batch_size": 16}
    same_runs = ControllerOptions(**{**vars(opts), "max_run_steps": opts.elastic_run_steps})
    first = JobController(make_spec(stages=2, steps=k, **common), tmp_path / "parts", same_runs)
    assert first.run().state == "SUCCEEDED"
    second = JobController(make_spec(stages=3, steps=40, **common), tmp_path / "parts",
                           ControllerOptions(**{**vars(same_runs), "resume": True}))
    assert second.run().state == "SUCCEEDED" and second.first_step == k
    assert [list(b) for b in second.partition] == move["after"]
    a, b = load_model_state(live.checkpoints[-1]), load_model_state(second.checkpoints[-1])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [m.loss for m in live.metrics[k:]] == [m.loss for m in second.metrics]


@pytest.mark.slow
def test_hanayo_job_grows_from_2_to_3_workers(cluster: Any, workers: list[Any], make_spec,
                                             tmp_path: Path) -> None:
    """A hanayo job (one wave: 2 chunks per worker) on 2 workers; a 3rd node joins mid-job: the
    chunks move live to the 3-worker wave placement (4 chunks -> 6), the whole state bitwise the
    same across the move (digests of every tensor), every step run once, and the job finishes.
    The live move is exactly a stop and a restart in the new layout: the same job stopped at the
    move's step on 2 workers and resumed from its checkpoint on 3 ends bitwise equal."""
    workers += add_workers(cluster, 2)
    connect(cluster)
    opts = options(tmp_path)
    common = {"model": DEEP, "schedule": "hanayo", "microbatches": 4, "partition": "auto",
              "batch_size": 16}
    spec = make_spec(stages="auto", steps=24, elastic={"min_stages": 2, "max_stages": 3}, **common)
    ctl = JobController(spec, tmp_path / "hanayo", opts)
    while not ctl.state.is_terminal:
        ctl.step()
        if ctl.state is JobState.RUNNING and ctl.step_done >= 6 and len(workers) == 2:
            workers += add_workers(cluster, 1)
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    (move,) = [e.data for e in ctl.events if e.kind == "rebalance"]
    k = move["step"]
    assert (move["stages_before"], move["stages_after"]) == (2, 3)
    assert len(move["before"]) == 4 and len(move["after"]) == 6  # chunks: 2 per worker
    assert move["verified"] and 6 <= k < 24
    # after the move each worker holds chunks w and 5 - w of the 6 (the V of one wave)
    ready = [e.data["stages"] for e in ctl.events if e.topic == STAGES_READY][-1]
    part = [tuple(b) for b in ctl.partition]
    assert [[tuple(c) for c in st["chunks"]] for st in ready] == [[part[w], part[5 - w]] for w in range(3)]
    assert [m.step for m in ctl.metrics] == list(range(1, 25))  # nothing skipped, nothing twice
    # the same job in two parts: k steps on 2 workers, then a resume on 3 (from the checkpoint)
    same_runs = ControllerOptions(**{**vars(opts), "max_run_steps": opts.elastic_run_steps})
    first = JobController(make_spec(stages=2, steps=k, **common), tmp_path / "parts", same_runs)
    assert first.run().state == "SUCCEEDED"
    second = JobController(make_spec(stages=3, steps=24, **common), tmp_path / "parts",
                           ControllerOptions(**{**vars(same_runs), "resume": True}))
    assert second.run().state == "SUCCEEDED" and second.first_step == k
    assert [list(b) for b in second.partition] == move["after"]
    a, b = load_model_state(ctl.checkpoints[-1]), load_model_state(second.checkpoints[-1])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [m.loss for m in ctl.metrics[k:]] == [m.loss for m in second.metrics]


def test_job_survives_a_node_dying_mid_step(cluster: Any, workers: list[Any], fixed_run,
                                            make_spec, tmp_path: Path) -> None:
    """3 nodes, 3 stages; the middle stage's node is killed in the middle of a run, no warning.
    The job restarts on the 2 survivors from the state replicated after the last run (the dead
    stage's copy is on another node), redoes the lost steps, and ends with every update applied
    exactly once (the weights of the fixed run)."""
    workers += add_workers(cluster, 3)
    connect(cluster)
    ctl = JobController(elastic_spec(make_spec), tmp_path / "die", options(tmp_path))
    killed = run_killing(cluster, workers, ctl, 10, (1,))
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    assert killed and killed["nodes"][0] not in ctl.stage_nodes
    (rec,) = [e.data for e in ctl.events if e.kind == "recovery"]
    assert rec["from_replicas"] and rec["step"] >= killed["at"] - 2
    assert 0 <= rec["steps_lost"] <= 2 * options(tmp_path).elastic_run_steps
    states = [e.data["state"] for e in ctl.events if e.kind == "state"]
    assert "RECOVERING" in states and summary.stages == 2
    assert [m.step for m in ctl.metrics] == list(range(1, 81))
    print(f"\nnode killed at step {killed['at']}: restarted at step {rec['step']}, "
          f"{rec['steps_lost']} step(s) redone")
    assert_same_weights(ctl, fixed_run)


def test_job_waits_below_min_stages_until_a_node_returns(cluster: Any, workers: list[Any],
                                                         fixed_run, make_spec, tmp_path: Path) -> None:
    """min_stages 2 on 2 nodes; one dies: the job cannot run on 1 and waits (state WAITING)
    instead of failing; a node joins; the job restarts on 2 stages and finishes, every update
    applied once."""
    workers += add_workers(cluster, 2)
    connect(cluster)
    spec = make_spec(model=DEEP, stages="auto", microbatches=4, partition="auto", batch_size=16,
                     steps=80, elastic={"min_stages": 2, "max_stages": 2, "wait_timeout_s": 120})
    ctl = JobController(spec, tmp_path / "wait", options(tmp_path))
    waits = 0

    def add_when_waiting() -> None:  # it keeps waiting; then a node returns
        nonlocal waits
        if ctl.state is JobState.WAITING:
            waits += 1
            if waits == 3:
                workers.extend(add_workers(cluster, 1))

    run_killing(cluster, workers, ctl, 10, (1,), on_step=add_when_waiting)
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    assert waits >= 3
    states = [e.data["state"] for e in ctl.events if e.kind == "state"]
    assert "WAITING" in states and states[states.index("WAITING") + 1] == "RUNNING"
    assert summary.stages == 2 and [m.step for m in ctl.metrics] == list(range(1, 81))
    assert_same_weights(ctl, fixed_run)


def test_both_copies_lost_falls_back_to_the_checkpoint(cluster: Any, workers: list[Any],
                                                       fixed_run, make_spec, tmp_path: Path) -> None:
    """A stage's node and the node holding its copy die together: no complete copy survives,
    so the job restarts from its last checkpoint on the node left, redoes the steps since,
    reports them, and still ends with every update applied once."""
    workers += add_workers(cluster, 3)
    connect(cluster)
    ctl = JobController(elastic_spec(make_spec, checkpoint={"every_steps": 8}), tmp_path / "both",
                        options(tmp_path))
    killed = run_killing(cluster, workers, ctl, 12, (1, 2))
    summary = ctl.summary()
    assert summary.state == "SUCCEEDED", summary.reason
    (rec,) = [e.data for e in ctl.events if e.kind == "recovery"]
    assert not rec["from_replicas"] and rec["step"] == 8 and rec["steps_lost"] >= killed["at"] - 8
    assert summary.stages == 1 and [m.step for m in ctl.metrics] == list(range(1, 81))
    assert_same_weights(ctl, fixed_run)
