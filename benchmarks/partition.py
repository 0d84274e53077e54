"""Partition planner benchmark: ``partition: auto`` against ``partition: uniform``.

The workload is ``examples/gpt-small.yaml``'s GPT (d_model 256, 8 blocks = 16 cuttable layers plus
embedding and head, 4 heads, seq 128, batch 32 in 8 microbatches) with a large vocabulary
(``--vocab``, default 6144), so the head and the loss weigh several blocks and a split by layer
count leaves the last stage the bottleneck. Each stage count runs both partitions, interleaved over
``--rounds`` rounds, in one embedded Ray cluster; the layer profile is measured once (a shared
profile cache). Per run: samples/s over the measured window, the partition, and per stage the mean
busy wall seconds and CPU seconds per step.

    .venv/bin/python benchmarks/partition.py

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
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
SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
MODES = ("auto", "uniform")
SHARING_NOTE = (
    "When the stage count exceeds the machine's cores, stages share cores: wall busy time then "
    "includes waiting for a core, and the throughput gain lies between none (cores saturated: "
    "throughput = total work / cores) and the bottleneck ratio (stages waiting on their "
    "neighbours leave cores idle); the CPU-seconds balance shows what each stage would cost on a "
    "dedicated core.")


def ratio(xs: list[float]) -> float:
    """max / mean of per-stage figures (1.0 = perfectly balanced)."""
    return max(xs) / statistics.fmean(xs) if xs and statistics.fmean(xs) > 0 else float("nan")


def per_stage_mean(rows: list[tuple[float, ...]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*rows, strict=True)] if rows else []


def run_job(stages: int, mode: str, a: argparse.Namespace, profile_dir: Path) -> dict[str, Any]:
    """One job in the running Ray cluster; its figures over the measured window."""
    from pipewave.service.control.controller import ControllerOptions, JobController
    from pipewave.service.spec import load_spec

    model = load_spec(SPEC_FILE).model.model_dump(mode="json") | {"vocab_size": a.vocab}
    spec = load_spec(SPEC_FILE, overrides={
        "name": f"bench-partition-{mode}-{stages}", "model": model, "schedule": a.schedule,
        "stages": stages, "microbatches": 8, "steps": a.warmup + a.steps,
        "checkpoint": {"every_steps": None}, "partition": mode})
    opts = ControllerOptions(cpus_per_stage=1, threads_per_stage=max(1, (os.cpu_count() or 1) // stages),
                             resume=False, profile_dir=profile_dir)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="pipewave-bench-partition-") as out:
        ctl = JobController(spec, Path(out), opts)
        summary = ctl.run()
    if summary.state != "SUCCEEDED":
        return {"error": f"{summary.state}: {summary.reason}", "total_s": time.time() - t0}
    # The last `steps` steps, and never the final partition's first step (new stage processes)
    since = ctl.partition_since - ctl.first_step  # index of the final partition's first step
    start = max(len(ctl.metrics) - a.steps, since + 1)
    window = ctl.metrics[start:]
    if not window:
        return {"error": "no step to measure after the final partition's first step",
                "total_s": time.time() - t0}
    wall = sum(m.time_s for m in window)
    busy = per_stage_mean([m.stage_busy_s for m in window])
    cpu = per_stage_mean([m.stage_cpu_s for m in window])
    return {
        "samples_per_s": spec.batch_size * len(window) / wall if wall > 0 else 0.0,
        "window_steps": [window[0].step, window[-1].step], "window_s": wall,
        "partition_from_step": since + ctl.first_step + 1,
        "partition": summary.partition, "rebalances": summary.rebalances,
        "busy_s": busy, "cpu_s": cpu, "busy_ratio": ratio(busy), "cpu_ratio": ratio(cpu),
        "predicted_busy_s": summary.predicted_stage_busy_s,
        "step_s": [m.time_s for m in window], "final_loss": summary.final_loss,
        "startup_s": summary.startup_s, "total_s": time.time() - t0,
    }


def aggregate(runs: dict[str, list[dict[str, Any]]], stages: list[int]) -> list[dict[str, Any]]:
    """Per stage count: medians over rounds for each mode, and the gain auto/uniform."""
    out = []
    for S in stages:
        row: dict[str, Any] = {"stages": S}
        ok = {m: [r for r in runs[f"{m}:{S}"] if "error" not in r] for m in MODES}
        for m in MODES:
            rs = ok[m]
            row[m] = None if not rs else {
                "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                "busy_ratio": statistics.median(r["busy_ratio"] for r in rs),
                "cpu_ratio": statistics.median(r["cpu_ratio"] for r in rs),
                "cpu_s": per_stage_mean([tuple(r["cpu_s"]) for r in rs]),
                "step_s": statistics.median(r["window_s"] / len(r["step_s"]) for r in rs),
                "predicted_busy_s": rs[-1]["predicted_busy_s"],
                "partitions": sorted({json.dumps(r["partition"]) for r in rs}),
                "rebalances": [r["rebalances"] for r in rs], "runs": len(rs)}
        pairs = [(x, y) for x, y in zip(runs[f"auto:{S}"], runs[f"uniform:{S}"], strict=True)
                 if "error" not in x and "error" not in y]
        row["gain"] = statistics.median(x["samples_per_s"] / y["samples_per_s"] for x, y in pairs) \
            if pairs else None
        out.append(row)
    return out


def ms(xs: list[float]) -> str:
    return " / ".join(f"{1e3 * x:.0f}" for x in xs) or "-"


def note(row: dict[str, Any], cpus: int) -> str:
    """What the figures of one stage count say (every number computed)."""
    n, au, un, gain = row["stages"], row["auto"], row["uniform"], row["gain"]
    if au is None or un is None or gain is None:
        return f"- {n} stages: a run failed; no comparison."
    cu, ca = un["cpu_s"], au["cpu_s"]
    worst = max(range(n), key=lambda s: cu[s])
    text = (f"- **{n} stages** ({'more stages than' if n > cpus else 'at most as many stages as'} "
            f"the {cpus} cores): the uniform split's slowest stage is stage {worst} at "
            f"{1e3 * cu[worst]:.0f} ms CPU per step against a mean of {1e3 * statistics.fmean(cu):.0f} "
            f"ms (max/mean {un['cpu_ratio']:.2f}); the planner's partition brings max/mean to "
            f"{au['cpu_ratio']:.2f} (bottleneck {1e3 * max(ca):.0f} ms). On dedicated cores the "
            f"bottleneck would bound the gain at about {max(cu) / max(ca):.2f}x; measured: {gain:.3f}x "
            f"({'faster' if gain > 1 else 'not faster'}). Total CPU per step: auto {1e3 * sum(ca):.0f} ms, "
            f"uniform {1e3 * sum(cu):.0f} ms; the stages kept the {cpus} cores "
            f"{sum(ca) / (au['step_s'] * cpus):.0%} (auto) and {sum(cu) / (un['step_s'] * cpus):.0%} "
            f"(uniform) busy (total CPU per step / (step time x cores)).")
    if au["predicted_busy_s"]:
        pred = au["predicted_busy_s"]
        text += (f" The plan predicted a bottleneck of {1e3 * max(pred):.0f} ms per step "
                 f"(measured CPU {1e3 * max(ca):.0f} ms, {max(ca) / max(pred) - 1:+.0%}).")
    return text


def render(rep: dict[str, Any]) -> str:
    a, m = rep["args"], rep["machine"]
    lines = [
        "# pipewave partition planner benchmark", "",
        "Written by `benchmarks/partition.py` (see `benchmarks/README.md`). Command, from the repo root:",
        "", "```", rep["command"], "```", "",
        f"- Date: {rep['started']} to {rep['finished']} (UTC), {rep['duration_s'] / 60:.1f} min",
        f"- Machine: {m['cpus']} CPUs, {m['platform']}; Python {m['python']}; load average "
        f"(1/5/15 min) before: {rep['load_before']}, after: {rep['load_after']}",
        f"- Workload: `examples/gpt-small.yaml`'s GPT with vocab {a['vocab']} (18 cuttable layers: "
        f"embed, 8 blocks x (attn, mlp), head), batch 32 in 8 microbatches, schedule {a['schedule']}; "
        f"{a['warmup']} + {a['steps']} steps per run; {a['rounds']} round{'s' * (a['rounds'] > 1)}, "
        f"configurations interleaved. One stage actor per stage (1 Ray CPU), torch threads per stage = "
        f"max(1, {m['cpus']} // stages).",
        "- Measured window: the last steps (`--steps`) of each run, never the first step of the final "
        "partition (a planned job calibrates after 4 steps and may move to a new partition then). "
        "samples/s: median over rounds; gain: median over rounds of auto/uniform within a round; "
        "busy max/mean: the slowest stage's mean busy time per step over the mean of all stages "
        "(wall: as measured; CPU: the CPU seconds of the same work).", "",
    ]
    for row in rep["rows"]:
        S = row["stages"]
        lines += [f"## {S} stages", "",
                  "| partition | samples/s | gain auto/uniform | busy max/mean (wall) | "
                  "busy max/mean (CPU) | CPU ms per step, per stage | partitions (layers [start, end)) |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for mode in MODES:
            r = row[mode]
            if r is None:
                lines.append(f"| {mode} | FAILED | | | | | |")
                continue
            gain = f"{row['gain']:.3f}" if mode == "auto" and row["gain"] is not None else ""
            parts = "; ".join(p.replace(" ", "") for p in r["partitions"])
            lines.append(f"| {mode} | {r['samples_per_s']:.2f} | {gain} | {r['busy_ratio']:.2f} | "
                         f"{r['cpu_ratio']:.2f} | {ms(r['cpu_s'])} | {parts} |")
        au = row["auto"]
        if au is not None and au["predicted_busy_s"]:
            lines.append(f"\nauto: predicted busy ms per step, per stage: {ms(au['predicted_busy_s'])}; "
                         f"rebalances per round: {au['rebalances']}")
        lines.append("")
    lines += ["## Notes", "", *(note(row, rep["machine"]["cpus"]) for row in rep["rows"]),
              f"- {SHARING_NOTE}", ""]
    errors = [(k, r["error"]) for k, rs in rep["runs"].items() for r in rs if "error" in r]
    if errors:
        lines += ["## Failed runs", "", *(f"- {k}: {e}" for k, e in errors), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=HERE / "partition-results.md")
    p.add_argument("--json", type=Path, default=HERE / "partition-results.json")
    p.add_argument("--steps", type=int, default=30, help="measured steps per run")
    p.add_argument("--warmup", type=int, default=6, help="steps run first and not counted")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--vocab", type=int, default=6144)
    p.add_argument("--stages", default="4,2", help="comma-separated stage counts")
    p.add_argument("--schedule", default="1f1b", choices=("gpipe", "1f1b", "pipedream", "2bw"))
    a = p.parse_args(argv)
    try:
        stages = [int(s) for s in a.stages.split(",") if s.strip()]
    except ValueError:
        p.error(f"--stages: not a list of numbers: {a.stages!r}")
    if not stages or min(stages) < 1 or a.steps < 1 or a.warmup < 1 or a.rounds < 1:
        p.error("--stages, --steps, --warmup and --rounds must be positive")
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from pipewave.service.cluster.runtime import connect, disconnect

    started, t_start, cpus, load_before = datetime.now(UTC), time.time(), os.cpu_count() or 1, loadavg()
    configs = [(m, S) for S in stages for m in MODES]
    runs: dict[str, list[dict[str, Any]]] = {f"{m}:{S}": [] for m, S in configs}
    connect(None, max(4, max(stages)))  # before anything imports ray: loopback-only cluster
    try:
        with tempfile.TemporaryDirectory(prefix="pipewave-bench-profiles-") as profiles:
            for r in range(a.rounds):
                k = r % len(configs)  # rotate the start each round (the machine's speed drifts)
                for m, S in configs[k:] + configs[:k]:
                    res = run_job(S, m, a, Path(profiles))
                    runs[f"{m}:{S}"].append(res)
                    head = f"round {r + 1} {m:<7} {S} stages"
                    if "error" in res:
                        print(f"{head}: FAILED {res['error']}", flush=True)
                        continue
                    print(f"{head}: {res['samples_per_s']:6.2f} samples/s, busy max/mean "
                          f"{res['busy_ratio']:.2f} (CPU {res['cpu_ratio']:.2f}), partition "
                          f"{res['partition']}, {res['total_s']:.0f} s", flush=True)
    finally:
        disconnect()
    rep: dict[str, Any] = {
        "command": the_command(), "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "duration_s": time.time() - t_start, "load_before": load_before, "load_after": loadavg(),
        "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
        "args": {"steps": a.steps, "warmup": a.warmup, "rounds": a.rounds, "vocab": a.vocab,
                 "stages": stages, "schedule": a.schedule},
        "rows": aggregate(runs, stages), "runs": runs,
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(rep))
    a.json.write_text(json.dumps(rep, indent=2))
    print(f"wrote {a.output} and {a.json} ({rep['duration_s'] / 60:.1f} min)")
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
