"""Worker nodes of a local multi-node Ray cluster (``ray.cluster_utils.Cluster``): adding them, and
killing a running job's stage nodes without warning.

Shared by the elasticity tests (tests/e2e/test_elastic.py) and the elasticity benchmark
(benchmarks/elastic.py puts tests/ on its import path, as benchmarks/service.py does for
tests/apiserver.py). Killing a node here is fault injection on a test cluster, not an operation
of pipewave's (which drains nodes, ``pipewave drain``), so it lives with the tests. Needs Ray, not
pytest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def add_workers(cluster: Any, n: int) -> list[Any]:
    """``n`` worker nodes of 1 CPU (one stage slot each), once Ray sees them. Main thread only:
    starting a Ray node needs signals."""
    nodes = [cluster.add_node(num_cpus=1) for _ in range(n)]
    cluster.wait_for_nodes()
    return nodes


def run_killing(cluster: Any, workers: list[Any], ctl: Any, at_step: int, stages: tuple[int, ...],
                on_step: Callable[[], None] | None = None, watch_dead_s: float = 0.0) -> dict[str, Any]:
    """Run the JobController ``ctl`` to its end; from a thread, once ``at_step`` steps are done and
    the job is RUNNING (50 ms into its next run), kill the nodes of ``stages`` (found among
    ``workers``) with no warning. Ray adds nodes only from the main thread: ``on_step`` runs there
    after every step. With ``watch_dead_s`` the thread then waits up to that long for Ray to mark
    the nodes dead.

    Returns what happened: ``nodes`` (the killed node ids), ``at`` (steps done at the kill),
    ``stages`` (the job's stage count then), ``time`` (``time.time()`` of the kill),
    ``remove_node_s`` (how long the kill took) and, with ``watch_dead_s``, ``ray_dead_s`` (until
    Ray marked them dead, or gave up); or ``error`` alone when a stage's node is not among
    ``workers``; empty when the job ended before the kill."""
    from pipewave.service.control.controller import JobState

    killed: dict[str, Any] = {}

    def kill() -> None:
        while ctl.step_done < at_step or ctl.state is not JobState.RUNNING:
            if ctl.state.is_terminal:
                return
            time.sleep(0.01)
        time.sleep(0.05)  # inside the next run
        stage_nodes = list(ctl.stage_nodes)
        by_id = {n.node_id: n for n in workers}
        if any(s >= len(stage_nodes) or stage_nodes[s] not in by_id for s in stages):
            killed["error"] = f"no worker node holds stages {stages} (stage nodes {stage_nodes})"
            return
        gone = [by_id[stage_nodes[s]] for s in stages]
        killed.update(nodes=[n.node_id for n in gone], at=ctl.step_done, stages=len(stage_nodes),
                      time=time.time())
        for node in gone:
            cluster.remove_node(node, allow_graceful=False)
        killed["remove_node_s"] = time.time() - killed["time"]
        if watch_dead_s > 0:
            import ray

            ids = set(killed["nodes"])
            while time.time() - killed["time"] < watch_dead_s and any(
                    n["NodeID"] in ids and n["Alive"] for n in ray.nodes()):
                time.sleep(0.2)
            killed["ray_dead_s"] = time.time() - killed["time"]

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    while not ctl.state.is_terminal:
        ctl.step()
        if on_step is not None:
            on_step()
    thread.join(timeout=5 + watch_dead_s)
    return killed
