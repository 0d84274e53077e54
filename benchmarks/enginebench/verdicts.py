"""From the runs to the verdicts: medians over rounds, ratios paired within a round, the
chunked schedules' factorised ratio to 1f1b, and the targets (PASS / MISS / INFO / NOT RUN)."""

from __future__ import annotations

import statistics
from typing import Any

from enginebench.config import BUBBLE_REL_TOL, WORKLOADS, Config, Workload, repo_on_path
from enginebench.spans import window_edges


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def paired_ratio(runs: dict[str, list[dict[str, Any]]], name: str, ref: str,
                 key: str = "samples_per_s") -> float | None:
    """Median over rounds of (this config's samples/s) / (ref's samples/s) within the round
    (``key``: another per-run figure, e.g. the simulated samples/s)."""
    if name not in runs or ref not in runs:
        return None
    ratios = [a[key] / b[key] for a, b in zip(runs[name], runs[ref], strict=True)
              if "error" not in a and "error" not in b and key in a and key in b and b[key] > 0]
    return median(ratios)


def _med_tree(xs: list[Any]) -> Any:
    """Median over rounds of nested figures: numbers and lists of numbers elementwise, dicts by
    key; anything else (a placement, a layer cut) is the same every round and kept as is."""
    x0 = xs[0]
    if isinstance(x0, dict):
        return {k: _med_tree([x[k] for x in xs]) for k in x0}
    if isinstance(x0, bool):
        return x0
    if isinstance(x0, int | float):
        return statistics.median(xs)
    if (isinstance(x0, list) and x0 and all(isinstance(v, int | float) for v in x0)
            and all(len(x) == len(x0) for x in xs)):
        return [statistics.median([x[i] for x in xs]) for i in range(len(x0))]
    return x0


def aggregate(configs: list[Config], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows = {}
    for c in configs:
        ok = [r for r in runs[c.name] if "error" not in r]
        sps = [r["samples_per_s"] for r in ok]
        row: dict[str, Any] = {
            "label": c.label, "ok_rounds": len(ok), "failed_rounds": len(runs[c.name]) - len(ok),
            "samples_per_s": median(sps), "min": min(sps) if sps else None,
            "max": max(sps) if sps else None,
            "vs_torch_1f1b_same": paired_ratio(runs, c.name, f"torch:1f1b:{c.ranks}")
            if c.system != "single" else None,
            "vs_torch_1f1b_2": paired_ratio(runs, c.name, "torch:1f1b:2"),
            "vs_single": paired_ratio(runs, c.name, "single"),
            "final_loss": ok[0]["final_loss"] if ok else None,
            "run_wall_s": median([r["run_wall_s"] for r in runs[c.name]]),
            "chunks": c.chunks, "ranks": c.ranks, "schedule": c.schedule, "system": c.system,
        }
        if c.system in ("pipewave", "torch"):
            row["vs_pipewave_1f1b_same"] = paired_ratio(runs, c.name, f"pipewave:1f1b:{c.ranks}")
            row["vs_torch_interleaved_same"] = paired_ratio(
                runs, c.name, f"torch:interleaved-1f1b:{c.ranks}")
        if c.system == "pipewave" and ok:
            row["bubble_mean"] = median([r["bubble_mean"] for r in ok])
            row["sim_bubble_mean"] = median([r["sim_bubble_mean"] for r in ok])
            n = len(ok[0]["bubble"])
            row["bubble"] = [median([r["bubble"][s] for r in ok]) for s in range(n)]
            row["sim_bubble"] = [median([r["sim_bubble"][s] for r in ok]) for s in range(n)]
            row["startup_s"] = median([r["startup_s"] for r in ok])
            row["costs_ms"] = {k: ([median([r["costs_ms"][k][s] for r in ok]) for s in range(n)]
                                   if k != "comm" else median([r["costs_ms"]["comm"] for r in ok]))
                               for k in ("forward", "backward", "update", "comm")}
            row["ready_gap_mean"] = median([r["ready_gap_mean"] for r in ok])
            row["wall_s"] = median([r["wall_s"] for r in ok])
            row["sim_makespan_s"] = median([r["sim_makespan_s"] for r in ok])
            if all("profile" in r for r in ok):
                row["sim_samples_per_s"] = median([r["sim_samples_per_s"] for r in ok])
                row["sim_vs_pipewave_1f1b_same"] = paired_ratio(
                    runs, c.name, f"pipewave:1f1b:{c.ranks}", key="sim_samples_per_s")
                row["profile"] = _med_tree([r["profile"] for r in ok])
                row["sim_costs"] = _med_tree([r["sim_costs"] for r in ok])
        rows[c.name] = row
    return rows


def _sim_samples_per_s(schedule: str, chunks: int, stages: int, costs: dict[str, Any],
                       steps: int, warmup: int, microbatches: int = 8, batch: int = 32) -> float:
    """Samples/s of the simulated schedule over the measured window (warm-up steps left out, as
    for the runs) under ``costs`` (seconds: forward/backward per stage or per virtual stage)."""
    repo_on_path()
    from pipewave.service.schedules import Costs, make_schedule, simulate

    sched = make_schedule(schedule, stages, microbatches, warmup + steps,
                          waves=chunks // 2 if schedule == "hanayo" else None,
                          chunks=chunks if schedule == "interleaved-1f1b" else None)
    sim = simulate(sched, Costs(forward=tuple(costs["forward"]), backward=tuple(costs["backward"]),
                                update=tuple(costs["update"]), comm=float(costs["comm"])))
    s0, s1 = window_edges([sim.spans[s] for s in range(stages)], microbatches, warmup)
    return steps * batch / (s1 - s0) if s1 > s0 else 0.0


def chunk_analysis(rows: dict[str, Any], steps: int, warmup: int) -> None:
    """For each chunked pipewave row with its 1f1b reference (same workers) in the run: the
    throughput ratio to 1f1b factorised exactly into work x bubble (mean over workers, wall per
    step = mean busy / (1 - mean bubble): ratio = (busy_1f1b / busy) x ((1 - bubble) /
    (1 - bubble_1f1b)), from the medians), per-chunk overheads, and the schedule's simulated gain
    with 1f1b's measured stage costs split evenly over the chunks (no per-chunk overhead).
    Stored as ``rows[name]["analysis"]``."""
    for row in rows.values():
        ref = rows.get(f"pipewave:1f1b:{row['ranks']}")
        if (row["system"] != "pipewave" or row["chunks"] < 2 or "profile" not in row
                or ref is None or "profile" not in ref):
            continue
        p, q = row["profile"], ref["profile"]
        P = row["ranks"]
        busy, busy_ref = statistics.mean(p["busy_ms_per_step"]), statistics.mean(q["busy_ms_per_step"])
        b, b_ref = row["bubble_mean"], ref["bubble_mean"]
        work_f = busy_ref / busy if busy > 0 else 0.0
        bubble_f = (1 - b) / (1 - b_ref) if b_ref < 1 else 0.0
        tot, tot_ref = sum(p["work_ms_per_mb"]), sum(q["work_ms_per_mb"])
        cpu, cpu_ref = sum(p["work_cpu_ms_per_mb"]), sum(q["work_cpu_ms_per_mb"])
        extra = P * row["chunks"] - P  # chunks more than 1f1b's P stages
        ideal = _sim_samples_per_s(row["schedule"], row["chunks"], P, ref["sim_costs"], steps, warmup)
        ideal_ref = _sim_samples_per_s("1f1b", 1, P, ref["sim_costs"], steps, warmup)
        row["analysis"] = {
            "ref": f"pipewave:1f1b:{P}",
            "work_factor": work_f, "bubble_factor": bubble_f, "product": work_f * bubble_f,
            "busy_ms_per_step": busy, "busy_ms_per_step_ref": busy_ref,
            "work_ms_per_mb": tot, "work_ms_per_mb_ref": tot_ref,
            "work_cpu_ms_per_mb": cpu, "work_cpu_ms_per_mb_ref": cpu_ref,
            "per_extra_chunk_ms": (tot - tot_ref) / extra if extra else 0.0,
            "per_extra_chunk_cpu_ms": (cpu - cpu_ref) / extra if extra else 0.0,
            "slowest_work_ms_per_mb": max(p["work_ms_per_mb"]),
            "slowest_work_ms_per_mb_ref": max(q["work_ms_per_mb"]),
            "update_ms_per_step": statistics.mean(p["update_ms_per_step"]),
            "update_ms_per_step_ref": statistics.mean(q["update_ms_per_step"]),
            "idle_ready_ms_per_step": statistics.mean(p["idle_ready_ms_per_step"]),
            "idle_ready_ms_per_step_ref": statistics.mean(q["idle_ready_ms_per_step"]),
            "idle_wait_ms_per_step": statistics.mean(p["idle_wait_ms_per_step"]),
            "idle_wait_ms_per_step_ref": statistics.mean(q["idle_wait_ms_per_step"]),
            "transfers_per_step": p["transfers_per_step"],
            "transfers_per_step_ref": q["transfers_per_step"],
            "ideal_sim_samples_per_s": ideal, "ideal_sim_samples_per_s_ref": ideal_ref,
            "ideal_sim_ratio": ideal / ideal_ref if ideal_ref > 0 else None,
        }


_REF_KEYS = {"torch:1f1b:2": "vs_torch_1f1b_2", "single": "vs_single"}  # a target's ref -> its row key


def targets(rows: dict[str, Any], workload: Workload = WORKLOADS["gpt"]) -> list[dict[str, Any]]:
    out = []
    for goal in workload.targets:
        h = rows.get(goal.config)
        value = h[_REF_KEYS[goal.ref]] if h else None
        t = {"target": f"{Config.parse(goal.config).label} >= {goal.goal:.2f}x {goal.what}",
             "goal": goal.goal, "value": value}
        if value is None:
            t.update(result="NOT RUN", detail=f"needs configs {goal.config} and {goal.ref}")
        else:
            diff = value - goal.goal
            t.update(result="PASS" if diff >= 0 else "MISS",
                     detail=f"{value:.3f}x, {'above' if diff >= 0 else 'below'} the target by "
                            f"{abs(diff):.3f}x ({abs(diff) / goal.goal:.1%})")
        out.append(t)
    one = rows.get("single-1t")
    vs_torch = [g for g in workload.targets if g.ref == "torch:1f1b:2"]
    top = max(vs_torch, key=lambda g: g.goal) if vs_torch else None  # the highest goal vs torch
    h = rows.get(top.config) if top else None
    if one and h and top and rows.get("torch:1f1b:2"):
        bound = 2 * one["samples_per_s"]
        t1 = rows["torch:1f1b:2"]["samples_per_s"]
        c = Config.parse(top.config)
        out.append({
            "target": "context: ideal 2-core pipeline = 2 x one core (single-1t)", "goal": None,
            "value": bound, "result": "INFO",
            "detail": f"{bound:.2f} samples/s; torch 1F1B 2 ranks reaches {t1 / bound:.1%} of it, "
                      f"{c.schedule} {c.ranks} stages {h['samples_per_s'] / bound:.1%}; "
                      f"{top.goal:.2f}x torch 1F1B would need {top.goal * t1 / bound:.1%}",
        })
    for name, row in rows.items():  # chunked schedules (issue 7): informational comparisons
        if row["system"] not in ("pipewave", "torch") or row["chunks"] < 2:
            continue
        what = row["label"]
        if row["system"] == "pipewave":
            ref = f"pipewave:1f1b:{row['ranks']}"
            v = row.get("vs_pipewave_1f1b_same")
            t = {"target": f"{what} vs pipewave 1f1b, {row['ranks']} stages (faster: > 1)",
                 "goal": 1.0, "value": v}
            if v is None:
                t.update(result="NOT RUN", detail=f"needs configs {name} and {ref}")
            else:
                sim = row.get("sim_vs_pipewave_1f1b_same")
                simtxt = f"; simulated with each run's own measured costs: {sim:.3f}x" if sim else ""
                t.update(result="PASS" if v > 1 else "INFO",
                         detail=f"{v:.3f}x: {'faster' if v > 1 else 'slower'} by {abs(v - 1):.1%}"
                                f"{simtxt}" + ("" if v > 1 else
                                               " (see 'Why the chunked schedules are or are not "
                                               "faster here')"))
            out.append(t)
        if row["system"] == "pipewave":
            ref, key = f"torch:interleaved-1f1b:{row['ranks']}", "vs_torch_interleaved_same"
            vs = f"torch ScheduleInterleaved1F1B, {row['ranks']} ranks"
        else:
            ref, key = f"torch:1f1b:{row['ranks']}", "vs_torch_1f1b_same"
            vs = f"torch Schedule1F1B, {row['ranks']} ranks"
        v = row.get(key)
        t = {"target": f"{what} vs {vs}", "goal": None, "value": v}
        if v is None:
            t.update(result="NOT RUN", detail=f"needs configs {name} and {ref}")
        else:
            t.update(result="INFO", detail=f"{v:.3f}x")
        out.append(t)
    for name, row in rows.items():
        if not name.startswith("pipewave:") or row.get("bubble_mean") is None:
            continue
        m, s = row["bubble_mean"], row["sim_bubble_mean"]
        rel = abs(m - s) / s if s > 0 else float("inf") if m > 0 else 0.0
        ok = rel <= BUBBLE_REL_TOL
        out.append({
            "target": f"{name}: measured bubble within {BUBBLE_REL_TOL:.0%} of simulated",
            "goal": BUBBLE_REL_TOL, "value": rel, "result": "PASS" if ok else "MISS",
            "detail": f"measured {m:.2%} vs simulated {s:.2%}: off by {m - s:+.2%} points, "
                      f"{rel:.1%} of the simulated figure "
                      f"({'within' if ok else 'beyond'} the {BUBBLE_REL_TOL:.0%} tolerance"
                      f"{'' if ok else f' by {rel - BUBBLE_REL_TOL:.1%}'})",
        })
    return out
