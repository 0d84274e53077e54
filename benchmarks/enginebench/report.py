"""The engine benchmark's Markdown report, from the report dict that ``engine.py`` also writes as
JSON (``--json``): so ``render(json.load(results.json))`` rebuilds ``results.md``."""

from __future__ import annotations

from typing import Any

from enginebench.config import WORKLOADS
from enginebench.report_chunked import fmt, plural, render_chunked


def render(report: dict[str, Any]) -> str:
    a, rows, runs = report["args"], report["rows"], report["runs"]
    workload = WORKLOADS[report.get("workload", "gpt")]  # (reports before --model: the GPT)
    L = [
        f"# {workload.title}",
        "",
        "Written by `benchmarks/engine.py` (see `benchmarks/README.md`). Command, from the repo root:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"- Date: {report['started']} to {report['finished']} (UTC), {report['duration_s'] / 60:.1f} min",
        f"- Machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"{report['machine']['platform']}; Python {report['machine']['python']}, "
        f"torch {report['machine']['torch']}, ray {report['machine']['ray']}",
        f"- Load average (1/5/15 min) before: {report['load_before']}, after: {report['load_after']}",
        f"- Workload: {workload.description}",
        f"- Each run: a fresh process, {plural(a['warmup'], 'warm-up step')} (not counted) then "
        f"{plural(a['steps'], 'measured step')}; {plural(a['rounds'], 'round')}, configurations "
        "interleaved round-robin (start "
        "rotated each round). samples/s: median over rounds; ratios: median over rounds of the "
        "ratio within the round. Startup (Ray, actors, process groups) is never counted.",
        "",
        "## Targets",
        "",
        "| target | result | detail |",
        "|---|---|---|",
    ]
    L += [f"| {t['target']} | **{t['result']}** | {t['detail']} |" for t in report["targets"]]
    L += [
        "",
        "## Throughput",
        "",
        "| config | run | samples/s (median) | min - max | x torch 1F1B same ranks "
        "| x torch 1F1B 2 ranks | x single | loss at last step | run wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        spread = (f"{r['min']:.2f} - {r['max']:.2f}" if r["min"] is not None else "-")
        fails = f" ({r['failed_rounds']} failed)" if r["failed_rounds"] else ""
        L.append(f"| `{name}` | {r['label']}{fails} | {fmt(r['samples_per_s'], '.2f', 'failed')} | "
                 f"{spread} | {fmt(r['vs_torch_1f1b_same'], '.3f')} | {fmt(r['vs_torch_1f1b_2'], '.3f')} | "
                 f"{fmt(r['vs_single'], '.3f')} | {fmt(r['final_loss'], '.4f')} | "
                 f"{fmt(r['run_wall_s'], '.1f')} |")
    L += ["",
          f"Loss at last step: the loss of step {a['warmup'] + a['steps']} (the same batch "
          "everywhere); the synchronous configurations (pipewave gpipe/1f1b, torch, single) "
          "should agree to about 4 decimals, the asynchronous ones (pipedream, 2bw) differ by "
          "design."]
    pw = {n: r for n, r in rows.items() if n.startswith("pipewave:") and r.get("bubble_mean") is not None}
    if pw:
        L += [
            "",
            "## Bubbles (pipewave)",
            "",
            "Measured: 1 - busy / wall per stage over the measured steps (from the end of the "
            "last warm-up step to the end of the last step; each action's busy time counts to "
            "its microbatch's step), busy being the stage's compute spans (waits for messages "
            "excluded). Simulated: `pipewave.service.schedules.simulate` of the same schedule and step "
            "count with that run's measured mean per-stage forward, backward and update costs "
            "over the measured steps and the measured stage-to-stage latency, its bubble taken "
            "over the same window by the same definition. Mean over stages; per stage in brackets. "
            "Idle when ready: the share of the wall time stages sat idle although their next "
            "action's input had been produced (transfer plus per-action engine overhead), which "
            "a cost-only simulation does not model. Costs per stage, mean per action.",
            "",
            "| config | measured | simulated | diff (points) | diff (rel.) | idle when ready | "
            "wall s measured / simulated | forward ms | backward ms | update ms | comm ms "
            "| startup s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in pw.items():
            m, s = r["bubble_mean"], r["sim_bubble_mean"]
            per = "/".join(f"{b:.1%}" for b in r["bubble"])
            sper = "/".join(f"{b:.1%}" for b in r["sim_bubble"])
            c = r["costs_ms"]
            L.append(
                f"| `{name}` | {m:.2%} ({per}) | {s:.2%} ({sper}) | {100 * (m - s):+.2f} | "
                f"{(abs(m - s) / s if s > 0 else float('nan')):.1%} | {r['ready_gap_mean']:.2%} | "
                f"{r['wall_s']:.2f} / {r['sim_makespan_s']:.2f} | "
                f"{'/'.join(f'{x:.1f}' for x in c['forward'])} | "
                f"{'/'.join(f'{x:.1f}' for x in c['backward'])} | "
                f"{'/'.join(f'{x:.1f}' for x in c['update'])} | {c['comm']:.2f} | "
                f"{r['startup_s']:.1f} |")
    L += render_chunked(rows)
    L += ["", "## Samples/s per round", "",
          "In brackets, where at least 1%: the share of the machine's CPU time the hypervisor "
          "stole during the run (`/proc/stat`), a sign that the host was busy.", "",
          "| config | " + " | ".join(f"round {i + 1}" for i in range(a["rounds"])) + " |",
          "|---|" + "---:|" * a["rounds"]]

    def cell(r: dict[str, Any]) -> str:
        if "error" in r:
            return "failed: " + r["error"]
        mach = r.get("machine_during_run") or {}
        steal = f" (steal {mach['steal']:.0%})" if mach.get("steal", 0.0) >= 0.01 else ""
        return f"{r['samples_per_s']:.2f}{steal}"

    for name, rs in runs.items():
        L.append(f"| `{name}` | " + " | ".join(cell(r) for r in rs) + " |")
    L += ["", "Run order: " + " ; ".join(f"round {i + 1}: " + ", ".join(o)
                                          for i, o in enumerate(report["order"])), ""]
    return "\n".join(L)
