"""Engine benchmark: pipewave's schedules against torch.distributed.pipelining and one process.

Every configuration trains the same workload, on the same total of 2 torch threads: with
``--model gpt`` (the default) ``examples/gpt-small.yaml``'s model and data (byte-level GPT, vocab
256, d_model 256, 8 blocks, 4 heads, seq 128; batch 32 in 8 microbatches; Adam lr 3e-4; stdlib
corpus; seed 0), with ``--model llama`` ``examples/llama-small.yaml``'s (a transformers Llama of
the GPT's size, the same data and training; its own default configurations, targets and
``benchmarks/llama-results.md``):

- ``pipewave:<schedule>:<stages>``: a pipewave job (embedded Ray cluster on loopback, one stage
  actor per stage, ``2 // stages`` threads each, at least 1), schedules gpipe, 1f1b, pipedream, 2bw,
  and the chunked ones: ``interleaved-1f1b`` (2 chunks per worker; ``interleaved-1f1b-c<V>``: V),
  ``hanayo`` (1 wave, 2 chunks per worker; ``hanayo-w<W>``: W waves, 2W chunks per worker);
- ``torch:<gpipe|1f1b|interleaved-1f1b>:<ranks>``: torch.distributed.pipelining ScheduleGPipe /
  Schedule1F1B / ScheduleInterleaved1F1B (2 stages per rank, looped) over gloo, one process and one
  thread per rank (``benchmarks/torch_pipelining.py``);
- ``single`` (``single:<M>``: with M microbatches of gradient accumulation): the whole model in one
  process, ``torch.set_num_threads(2)``, fused Adam, no pipeline.

Each run of a configuration is a fresh process (so Ray's background processes exist only while a
pipewave run does) and trains ``warmup + steps`` steps; only the ``steps`` after the warm-up count,
startup never does. Configurations are interleaved round-robin over ``rounds`` rounds (the start
rotated each round) because the machine's speed drifts; the table gives per-configuration medians
and ratios as the median over rounds of the ratio within a round.

    .venv/bin/python benchmarks/engine.py --output benchmarks/results.md
    .venv/bin/python benchmarks/engine.py --model llama --json benchmarks/llama-results.json

See ``benchmarks/README.md``. This file is the command; its parts are in ``benchmarks/enginebench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import loadavg, the_command  # (benchmarks/ is on sys.path when run as a script)
from enginebench.config import DEFAULT_ROUNDS, DEFAULT_STEPS, DEFAULT_WARMUP, WORKLOADS, Config
from enginebench.orchestrate import cpu_model, launch, rotated, version
from enginebench.report import render
from enginebench.runs import run_one
from enginebench.verdicts import aggregate, chunk_analysis, targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Train a workload (gpt-small or llama-small) with pipewave's schedules, "
                    "torch.distributed.pipelining and one process, interleaved; write a results table.")
    p.add_argument("--model", choices=sorted(WORKLOADS), default="gpt",
                   help="the workload: gpt (examples/gpt-small.yaml, the default) or llama "
                        "(examples/llama-small.yaml); it sets the default --configs and --output")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"measured steps per run (default {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"warm-up steps per run, not counted (default {DEFAULT_WARMUP}, at least 1)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"round-robin rounds over the configurations (default {DEFAULT_ROUNDS})")
    p.add_argument("--configs", default=None,
                   help="comma-separated subset, e.g. pipewave:pipedream:2,pipewave:hanayo-w2:4,"
                        "torch:interleaved-1f1b:2,single (default: the workload's, gpt: all "
                        f"{len(WORKLOADS['gpt'].default_configs)}; llama: "
                        f"{','.join(WORKLOADS['llama'].default_configs)})")
    p.add_argument("--output", type=Path, default=None,
                   help="markdown results file (default benchmarks/results.md; llama: "
                        "benchmarks/llama-results.md)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="also write the raw results as JSON to FILE (stdout without FILE)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds to pause between runs (default 2)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds before a run is killed (default 300 + 20 per step)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child mode: run one configuration
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 1 or a.rounds < 1:
        p.error("--steps, --warmup and --rounds must be at least 1")

    workload = WORKLOADS[a.model]
    output: Path = a.output or workload.output
    if a.one:
        result = run_one(Config.parse(a.one), a.steps, a.warmup, workload.spec_file)
        Path(a.result).write_text(json.dumps(result))
        return 0

    try:
        listed = a.configs.split(",") if a.configs is not None else workload.default_configs
        configs = [Config.parse(t) for t in listed if t.strip()]
    except argparse.ArgumentTypeError as err:
        p.error(str(err))
    if len({c.name for c in configs}) != len(configs):
        p.error("--configs lists a configuration twice")
    timeout = a.timeout or 300 + 20 * (a.steps + a.warmup)
    started = datetime.now(UTC)
    t_start = time.time()
    load_before = loadavg()
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    order: list[list[str]] = []
    total = a.rounds * len(configs)
    print(f"engine benchmark ({workload.name}): {len(configs)} configs x {a.rounds} rounds, "
          f"{a.warmup} warm-up + {a.steps} measured steps each; load average {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pipewave-bench-logs-") as logs:
        done = 0
        for r in range(a.rounds):
            this = rotated(configs, r, a.rounds)
            order.append([c.name for c in this])
            for c in this:
                if done:
                    time.sleep(a.settle)
                res = launch(c, a.steps, a.warmup, timeout, Path(logs), workload.name)
                runs[c.name].append(res)
                done += 1
                head = f"[{done}/{total}] round {r + 1} {c.name:<22}"
                if "error" in res:
                    print(f"{head} FAILED ({res['error']}, {res['run_wall_s']:.1f} s)", flush=True)
                    for line in res["log_tail"]:
                        print(f"    {line}", flush=True)
                    continue
                extra = ""
                if "bubble_mean" in res:
                    extra = (f"  bubble {res['bubble_mean']:.1%} (sim {res['sim_bubble_mean']:.1%},"
                             f" idle when ready {res['ready_gap_mean']:.1%})"
                             f"  startup {res['startup_s']:.1f} s")
                mach = res.get("machine_during_run")
                if mach:
                    extra += f"  cpu busy {mach['busy']:.0%} steal {mach['steal']:.1%}"
                print(f"{head} {res['samples_per_s']:7.2f} samples/s  loss {res['final_loss']:.4f}"
                      f"  run {res['run_wall_s']:.1f} s{extra}", flush=True)
    rows = aggregate(configs, runs)
    chunk_analysis(rows, a.steps, a.warmup)
    report: dict[str, Any] = {
        "command": the_command(),
        "workload": workload.name,
        "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "duration_s": time.time() - t_start,
        "load_before": load_before, "load_after": loadavg(),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": version("torch"), "ray": version("ray")},
        "args": {"steps": a.steps, "warmup": a.warmup, "rounds": a.rounds,
                 "configs": [c.name for c in configs]},
        "order": order, "rows": rows, "runs": runs,
    }
    report["targets"] = targets(rows, workload)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(report))
    print(f"\nwrote {output} ({report['duration_s'] / 60:.1f} min)")
    for t in report["targets"]:
        print(f"  {t['result']:<7} {t['target']}: {t['detail']}")
    if a.json == "-":
        print(json.dumps(report, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
