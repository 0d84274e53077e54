"""Elasticity benchmark: the pause of a graceful 2 -> 3 stage move and the recovery from a node death.

``examples/gpt-small.yaml``'s GPT (elastic, stages and partition auto) on a ``ray.cluster_utils.Cluster``
on this machine (a head without CPUs, worker nodes of 1 CPU: one stage slot each). Per round, a join
job (2 nodes, a 3rd joins after step 6: the move's ``pause_s``) and a failure job (3 nodes, stage 1's
node killed after step 10: seconds from the kill until RUNNING again, and the steps lost).

    .venv/bin/python benchmarks/elastic.py      # see benchmarks/README.md
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import loadavg, the_command  # (benchmarks/ is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from ray_nodes import add_workers, run_killing  # noqa: E402  (tests/ray_nodes.py, shared with the tests)

SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
TARGET_PAUSE_S = 2.0
JOIN_AT, KILL_AT = 6, 10  # steps done before the 3rd node joins / before the node is killed


def remove_workers(cluster: Any, nodes: list[Any], timeout_s: float = 90.0) -> None:
    """Remove the round's nodes; wait until Ray sees no alive worker (the next job must not plan on one)."""
    import ray

    for node in [n for n in nodes if n in cluster.worker_nodes]:  # (a killed node is no longer)
        cluster.remove_node(node)
    head = cluster.head_node.node_id
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(n["Alive"] and n["NodeID"] != head for n in ray.nodes()):
        time.sleep(0.5)


def job(a: argparse.Namespace, kind: str, r: int, out: Path, profiles: Path) -> Any:
    from pipewave.service.control.controller import ControllerOptions, JobController
    from pipewave.service.spec import load_spec

    elastic: dict[str, Any] = {"min_stages": 1, "max_stages": 3} | (
        {"wait_timeout_s": 120} if kind == "join" else {})
    spec = load_spec(SPEC_FILE, overrides={
        "name": f"bench-elastic-{kind}-{r}", "schedule": a.schedule, "stages": "auto",
        "microbatches": 8, "partition": "auto", "steps": a.steps,
        "checkpoint": {"every_steps": None}, "elastic": elastic})
    opts = ControllerOptions(threads_per_stage=1, resume=False, profile_dir=profiles,
                             calibrate_steps=0, elastic_run_steps=2, watch_every_s=0.5, confirm=2)
    return JobController(spec, out, opts)


def run_round(kind: str, cluster: Any, a: argparse.Namespace, r: int, tmp: Path) -> dict[str, Any]:
    """One job (``join`` or ``failure``) on worker nodes of its own; its raw figures."""
    nodes: list[Any] = []
    res: dict[str, Any] = {}
    try:
        nodes += add_workers(cluster, 2 if kind == "join" else 3)
        ctl = job(a, kind, r, tmp / f"{kind}-{r}", tmp / "profiles")
        (drive_join if kind == "join" else drive_failure)(ctl, cluster, nodes, res)
        s = ctl.summary()
        res.update(state=s.state, final_stages=s.stages, final_partition=s.partition,
                   every_step_once=[m.step for m in ctl.metrics] == list(range(1, a.steps + 1)),
                   events=[{"t": e.time, "kind": e.kind, "message": e.message} for e in ctl.events
                           if e.kind in ("state", "rebalance", "recovery", "membership", "elastic",
                                         "info")])
        if s.state != "SUCCEEDED":
            res["error"] = f"{s.state}: {s.reason}"
    except Exception as err:
        res["error"] = f"{type(err).__name__}: {err}"
    finally:
        remove_workers(cluster, nodes)
    return res


def drive_join(ctl: Any, cluster: Any, nodes: list[Any], res: dict[str, Any]) -> None:
    from pipewave.service.control.controller import JobState

    joined_at = 0.0
    while not ctl.state.is_terminal:
        ctl.step()
        if not joined_at and ctl.state is JobState.RUNNING and ctl.step_done >= JOIN_AT:
            res.update(stages_before_join=ctl.spec.num_stages, join_step=ctl.step_done)
            nodes += add_workers(cluster, 1)
            joined_at = time.time()
    moves = [e for e in ctl.events if e.kind == "rebalance"]
    res["moves"] = [{**e.data, "t": e.time} for e in moves]
    grow = [e for e in moves if len(e.data["before"]) == 2 and len(e.data["after"]) == 3]
    if not grow:
        res["error"] = f"no 2 -> 3 stage move (moves: {res['moves']})"
        return
    m = grow[0]
    res.update(pause_s=m.data["pause_s"], move_step=m.data["step"], bytes_moved=m.data["bytes_moved"],
               verified=m.data["verified"], join_to_moved_s=m.time - joined_at)


def drive_failure(ctl: Any, cluster: Any, nodes: list[Any], res: dict[str, Any]) -> None:
    killed = run_killing(cluster, nodes, ctl, KILL_AT, (1,), watch_dead_s=60)
    if "nodes" not in killed:
        res["error"] = killed.get("error", "the job ended before the kill")
        return
    res.update(killed_node=killed["nodes"][0], killed_step=killed["at"], killed_stages=killed["stages"],
               killed_at=killed["time"], killed_remove_node_s=killed["remove_node_s"],
               killed_ray_dead_s=killed["ray_dead_s"])
    states = [(e.time, e.data["state"]) for e in ctl.events if e.kind == "state" and e.time >= killed["time"]]
    t_rec = next((tt for tt, st in states if st == "RECOVERING"), None)
    t_run = next((tt for tt, st in states if st == "RUNNING" and t_rec is not None and tt >= t_rec), None)
    recs = [e.data for e in ctl.events if e.kind == "recovery"]
    if t_rec is None or t_run is None or not recs:
        res["error"] = "no RECOVERING -> RUNNING after the kill"
        return
    res.update(recover_s=t_run - killed["time"], detect_s=t_rec - killed["time"], restart_s=t_run - t_rec,
               steps_lost=recs[0]["steps_lost"], from_replicas=recs[0]["from_replicas"],
               restart_step=recs[0]["step"], recoveries=len(recs))


FIGURES = (("join", "pause_s", "graceful pause, 2 -> 3 stages (s)"),
           ("join", "join_to_moved_s", "node joined -> running on 3 stages (s)"),
           ("failure", "recover_s", "node killed -> RUNNING again (s)"),
           ("failure", "detect_s", "... of which kill -> RECOVERING (s)"),
           ("failure", "restart_s", "... of which RECOVERING -> RUNNING (s)"),
           ("failure", "killed_ray_dead_s", "(node killed -> Ray marks it dead (s))"),
           ("failure", "steps_lost", "steps lost"))


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, key, _ in FIGURES:
        xs = [r[key] for r in runs[kind] if key in r and "error" not in r]
        out[key] = {"median": statistics.median(xs), "max": max(xs), "n": len(xs)} if xs else None
    p = out["pause_s"]
    out["pause_target_met"] = None if p is None or p["n"] < len(runs["join"]) \
        else p["max"] <= TARGET_PAUSE_S
    return out


def fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def render(rep: dict[str, Any]) -> str:
    a, m, agg = rep["args"], rep["machine"], rep["aggregate"]
    met = agg["pause_target_met"]
    verdict = "NOT MEASURED (a join round failed)" if met is None else "PASS" if met else "MISS"
    lines = [
        "# pipewave elasticity benchmark", "",
        "Written by `benchmarks/elastic.py` (see `benchmarks/README.md`). Command, from the repo root:",
        "", "```", rep["command"], "```", "",
        f"- Date: {rep['started']} to {rep['finished']} (UTC), {rep['duration_s'] / 60:.1f} min",
        f"- Machine: {m['cpus']} CPUs, {m['platform']}; Python {m['python']}; load average "
        f"(1/5/15 min) before: {rep['load_before']}, after: {rep['load_after']}",
        f"- Workload: `examples/gpt-small.yaml`'s GPT, schedule {a['schedule']}, stages and partition "
        f"auto, 8 microbatches, {a['steps']} steps, no checkpoints, elastic 1..3 stages; runs of 2 "
        "steps, node table read every 0.5 s, 2 identical reads confirm a change, moves verified by "
        "state digests. A `ray.cluster_utils.Cluster` on this machine: a head without CPUs and "
        "worker nodes of 1 CPU (one stage each, 1 torch thread), all sharing the machine's cores.",
        f"- Rounds: {a['rounds']}; each a join job (2 nodes, a 3rd joins after step {JOIN_AT}) and a "
        f"failure job (3 nodes, stage 1's node killed without warning after step {KILL_AT}).", "",
        f"**Graceful pause target (<= {TARGET_PAUSE_S:.0f} s in every round): {verdict}**"
        + (f" (max {agg['pause_s']['max']:.2f} s)" if agg["pause_s"] else ""), "",
        "| figure | median | max | rounds |", "|---|---:|---:|---:|",
    ]
    for _, key, label in FIGURES:
        g = agg[key]
        lines.append(f"| {label} | {fmt(g and g['median'])} | {fmt(g and g['max'])} | "
                     f"{g['n'] if g else 0} |")
    lines += ["", "## Rounds", "",
              "| round | pause (s) | moved at step | MB moved | verified | killed at step | "
              "recover (s) | steps lost | from replicas | stages after |",
              "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for i, (j, f) in enumerate(zip(rep["runs"]["join"], rep["runs"]["failure"], strict=True)):
        mb = j.get("bytes_moved")
        lines.append(f"| {i + 1} | {fmt(j.get('pause_s'))} | {fmt(j.get('move_step'))} | "
                     f"{fmt(mb / 1e6 if mb is not None else None)} | {fmt(j.get('verified'))} | "
                     f"{fmt(f.get('killed_step'))} | {fmt(f.get('recover_s'))} | "
                     f"{fmt(f.get('steps_lost'))} | {fmt(f.get('from_replicas'))} | "
                     f"{fmt(f.get('final_stages'))} |")
    errors = [(k, i + 1, r["error"]) for k, rs in rep["runs"].items() for i, r in enumerate(rs)
              if "error" in r]
    if errors:
        lines += ["", "## Failed rounds", "", *(f"- {k} round {i}: {e}" for k, i, e in errors)]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=HERE / "elastic-results.md")
    p.add_argument("--json", type=Path, default=HERE / "elastic-results.json")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60, help="steps per job")
    p.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b", "pipedream", "2bw"))
    a = p.parse_args(argv)
    if a.rounds < 1 or a.steps < KILL_AT + 6:
        p.error(f"--rounds must be positive and --steps at least {KILL_AT + 6}")
    sys.path.insert(0, str(REPO))
    import ray
    from ray.cluster_utils import Cluster

    started, t_start, load_before = datetime.now(UTC), time.time(), loadavg()
    runs: dict[str, list[dict[str, Any]]] = {"join": [], "failure": []}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        with tempfile.TemporaryDirectory(prefix="pipewave-bench-elastic-") as tmp:
            for r in range(a.rounds):
                j = run_round("join", cluster, a, r, Path(tmp))
                runs["join"].append(j)
                print(f"round {r + 1} join: " + (f"FAILED {j['error']}" if "error" in j else
                      f"pause {j['pause_s']:.2f} s at step {j['move_step']}, "
                      f"{j['join_to_moved_s']:.1f} s after the join"), flush=True)
                f = run_round("failure", cluster, a, r, Path(tmp))
                runs["failure"].append(f)
                print(f"round {r + 1} failure: " + (f"FAILED {f['error']}" if "error" in f else
                      f"recovered in {f['recover_s']:.2f} s (detect {f['detect_s']:.2f} s), "
                      f"{f['steps_lost']} step(s) lost, from replicas {f['from_replicas']}"), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    rep: dict[str, Any] = {
        "command": the_command(), "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "duration_s": time.time() - t_start, "load_before": load_before, "load_after": loadavg(),
        "machine": {"cpus": os.cpu_count() or 1, "platform": platform.platform(),
                    "python": platform.python_version()},
        "args": {"rounds": a.rounds, "steps": a.steps, "schedule": a.schedule},
        "target_pause_s": TARGET_PAUSE_S, "aggregate": aggregate(runs), "runs": runs,
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(rep))
    a.json.write_text(json.dumps(rep, indent=2))
    print(render(rep))
    print(f"wrote {a.output} and {a.json} ({rep['duration_s'] / 60:.1f} min)")
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
