"""The service benchmark's verdict and Markdown report (``benchmarks/service.py`` runs it), from
the report dict it also writes as JSON: ``render(json.load(service-results.json))`` rebuilds
``service-results.md``."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

TARGET_SLOWDOWN = 0.05  # the dashboard open may cost at most 5% of the training throughput


def aggregate(rep: dict[str, Any]) -> dict[str, Any]:
    def rates(kind: str) -> list[float]:
        return [p["training"]["samples_per_s"] for p in rep["phases"] if p["kind"] == kind and p["training"]]

    ra, rb = rates("A"), rates("B")
    mean_a = statistics.fmean(ra) if len(ra) == 2 else None
    mean_b = statistics.fmean(rb) if len(rb) == 2 else None
    slow = (mean_a - mean_b) / mean_a if mean_a and mean_b is not None else None
    pairs = [(x - y) / x for x, y in zip(ra, rb, strict=False)] if len(ra) == len(rb) == 2 else []
    return {"mean_a": mean_a, "mean_b": mean_b, "slowdown": slow, "pair_slowdowns": pairs,
            "a_spread": abs(ra[0] - ra[1]) / statistics.fmean(ra) if len(ra) == 2 else None,
            "target_met": None if slow is None else slow < TARGET_SLOWDOWN}


def f(x: Any, fmt: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render(rep: dict[str, Any]) -> str:
    a, m, agg = rep["args"], rep["machine"], rep.get("aggregate", {})
    lat = next((p for p in rep["phases"] if p["kind"] == "L"), None)
    met = agg.get("target_met")
    verdict = "NOT MEASURED" if met is None else "PASS" if met else "MISS"
    spec = rep.get("spec") or {}
    lines = [
        "# pipewave service benchmark", "",
        "Written by `benchmarks/service.py`. Command, from the repo root:", "", "```", rep["command"], "```",
        "", f"- Date: {rep['started']} to {rep['finished']} (UTC), {rep['duration_s'] / 60:.1f} min",
        f"- Machine: {m['cpus']} CPUs, {m['platform']}; Python {m['python']}; Chromium "
        f"{m.get('chromium', '-')}; load average (1/5/15 min) before: {rep['load_before']}, after: "
        f"{rep['load_after']}",
        f"- Server: `pipewave serve` (embedded local Ray cluster, service defaults) with "
        f"PIPEWAVE_CPUS_PER_STAGE={rep.get('cpus_per_stage')} (the example's "
        f"{spec.get('stages')} stages on {m['cpus']} cores); started in "
        f"{f(rep.get('server_start_s'), '.0f')} s",
        f"- Job: `examples/gpt-small.yaml` with steps {spec.get('steps')} (cancelled after the last phase) "
        f"and checkpoint every_steps {(spec.get('checkpoint') or {}).get('every_steps')}: "
        f"{rep.get('stages')} stages, {rep.get('microbatches')} microbatches, schedule "
        f"{spec.get('schedule')}, batch {spec.get('batch_size')}; phases began after step "
        f"{a['warmup_steps']} (warm-up {f(rep.get('warmup_s'), '.0f')} s) and {a['settle_s']} s of settling",
        f"- Phases: A = no dashboard, B = the job page open in headless Chromium (its window starts "
        f"once the SSE stream is live, + {a['settle_s']} s), {a['phase_s']} s each, order A B A B; then "
        f"L = {a['clients']} concurrent clients for {a['latency_s']} s. {a['settle_s']} s between phases. "
        "Throughput = batch x steps / time between the first and last step points inside the phase "
        "(step times as first reported live by the server, polled once a second).",
        "", f"**Dashboard open: {f(agg.get('slowdown') and 100 * agg['slowdown'], '.1f')}% slower "
        f"(target < {100 * TARGET_SLOWDOWN:.0f}%): {verdict}**", "",
        "| phase | samples/s | steps | window (s) | machine busy | server CPU | server req/s | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in rep["phases"]:
        tr = p.get("training") or {}
        note = ""
        if p["kind"] == "B":
            note = f"stream {p.get('stream')}, chart points {p.get('chart_points_before')} -> " \
                   f"{p.get('chart_points_after')}"
        elif p["kind"] == "L":
            note = f"{a['clients']} clients (informative)"
        if tr.get("wider"):
            note += "; < 2 step points inside: window widened to the points around it"
        lines.append(f"| {p['name']} | {f(tr.get('samples_per_s'))} | {f(tr.get('steps'), 'd')} | "
                     f"{f(tr.get('window_s'), '.1f')} | {p['machine_busy_pct']:.0f}% | "
                     f"{p['server_cpu_pct']:.0f}% | {f(p.get('server_requests_per_s'), '.1f')} | {note} |")
    lines += ["", "| figure | value |", "|---|---:|",
              f"| mean A (no dashboard), samples/s | {f(agg.get('mean_a'))} |",
              f"| mean B (dashboard open), samples/s | {f(agg.get('mean_b'))} |",
              f"| slowdown (A - B) / A | {f(agg.get('slowdown') and 100 * agg['slowdown'], '.1f')}% |",
              "| per pair (A1 vs B1, A2 vs B2) | "
              + (", ".join(f"{100 * x:.1f}%" for x in agg.get("pair_slowdowns", [])) or "-") + " |",
              f"| A1 vs A2 spread (noise) | {f(agg.get('a_spread') and 100 * agg['a_spread'], '.1f')}% |"]
    if lat is not None:
        lm = lat["latency_ms"]
        tr = lat.get("training") or {}
        lines += ["", f"## `GET /api/v1/jobs/{{id}}` under {a['clients']} concurrent clients "
                  f"({a['latency_s']} s, job RUNNING)", "",
                  "| requests | requests/s | errors | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) | max (ms) |"
                  " training samples/s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {lat['requests']} | {lat['requests_per_s']:.1f} | {lat['errors']} | "
                  f"{f(lm.get('p50'), '.1f')} | {f(lm.get('p90'), '.1f')} | {f(lm.get('p99'), '.1f')} | "
                  f"{f(lm.get('mean'), '.1f')} | {f(lm.get('max'), '.1f')} | {f(tr.get('samples_per_s'))} |",
                  "", "Each client holds one keep-alive connection and sends its next request when the "
                  "previous answer is in; the first request of each (connection set-up) is not counted. "
                  "The clients run in the benchmark's process (one asyncio loop) on the same cores as the "
                  "server and the training, so the latencies include client-side queueing. "
                  + (f"Errors: {lat['error_kinds']}." if lat["errors"] else "")]
    lines += ["", "## Job spec", "", "```json", json.dumps(spec, indent=1), "```"]
    if rep.get("error"):
        lines += ["", "## Error", "", "```", rep["error"], "```"]
    return "\n".join([*lines, ""])
