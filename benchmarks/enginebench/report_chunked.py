"""The report's sections on the chunked schedules (issue 7): their comparison, and the profile
that explains why they are or are not faster here."""

from __future__ import annotations

import os
import statistics
from typing import Any


def fmt(x: float | None, spec: str, none: str = "-") -> str:
    """``x`` formatted by ``spec``; ``none`` where there is no figure."""
    return none if x is None else format(x, spec)


def plural(k: int, noun: str) -> str:
    """``1 round``, ``3 rounds``."""
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _per_worker_layers(profile: dict[str, Any]) -> str:
    """Each worker's layer count and its chunks' sizes, e.g. ``9 (5+4) / 9 (5+4)``."""
    sizes = [b - a for a, b in profile["layers"]]
    out = []
    for chunks in profile["placement"]:
        mine = [sizes[v] for v in chunks]
        out.append(f"{sum(mine)}" + (f" ({'+'.join(map(str, mine))})" if len(mine) > 1 else ""))
    return " / ".join(out)


def _chunk_rows(rows: dict[str, Any]) -> list[str]:
    """Config names of the chunked comparison in display order: per worker count, pipewave 1f1b,
    the chunked pipewave configs, torch 1F1B, torch interleaved 1F1B."""
    ranks = sorted({r["ranks"] for r in rows.values() if r["chunks"] > 1
                    and r["system"] in ("pipewave", "torch")})
    out: list[str] = []
    for P in ranks:
        out += [n for n in (f"pipewave:1f1b:{P}",) if n in rows]
        out += [n for n, r in rows.items() if r["system"] == "pipewave" and r["chunks"] > 1
                and r["ranks"] == P]
        out += [n for n in (f"torch:1f1b:{P}",) if n in rows]
        out += [n for n, r in rows.items() if r["system"] == "torch" and r["chunks"] > 1
                and r["ranks"] == P]
    return out


def render_chunked(rows: dict[str, Any]) -> list[str]:
    """The chunked schedules' comparison and the profile explaining it (issue 7)."""
    names = _chunk_rows(rows)
    if not names:
        return []
    L = [
        "",
        "## Chunked schedules (issue 7)",
        "",
        "Several model chunks (virtual stages) per worker: `interleaved-1f1b` (2 chunks, worker w "
        "holds virtual stages w and w + P) and `hanayo` (W waves, 2W chunks per worker in a wave "
        "placement; consecutive chunks at a wave's turn sit on one worker and hand over in "
        "memory). The partition is uniform over all P x V chunks; torch's "
        "ScheduleInterleaved1F1B gets the same cut and placement as pipewave's interleaved-1f1b. "
        "Ratios: median over rounds of the ratio within the round. Bubbles as in the bubbles "
        "table; simulated with per-chunk measured forward/backward costs (comm only between "
        "different workers). Simulated samples/s: the same simulation's window; its ratio is "
        "paired within the round against pipewave 1f1b's simulation.",
        "",
        "| config | run | samples/s | x pipewave 1f1b same workers | x torch Interleaved1F1B same "
        "ranks | x torch 1F1B same ranks | bubble measured | bubble simulated | simulated "
        "samples/s (x 1f1b simulated) | loss at last step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        r = rows[n]
        bub = (f"{r['bubble_mean']:.2%}" if r.get("bubble_mean") is not None else "-")
        sbub = (f"{r['sim_bubble_mean']:.2%}" if r.get("sim_bubble_mean") is not None else "-")
        sim = "-"
        if r.get("sim_samples_per_s") is not None:
            sim = f"{r['sim_samples_per_s']:.2f}"
            if r["chunks"] > 1 and r.get("sim_vs_pipewave_1f1b_same") is not None:
                sim += f" ({r['sim_vs_pipewave_1f1b_same']:.3f})"
        L.append(f"| `{n}` | {r['label']} | {fmt(r['samples_per_s'], '.2f', 'failed')} | "
                 f"{fmt(r.get('vs_pipewave_1f1b_same'), '.3f')} | "
                 f"{fmt(r.get('vs_torch_interleaved_same'), '.3f')} | "
                 f"{fmt(r.get('vs_torch_1f1b_same'), '.3f')} | {bub} | {sbub} | {sim} | "
                 f"{fmt(r['final_loss'], '.4f')} |")
    pw = [n for n in names if rows[n]["system"] == "pipewave" and "profile" in rows[n]]
    analysed = [n for n in pw if "analysis" in rows[n]]
    if not pw:
        return L
    cores = os.cpu_count() or 1
    L += [
        "",
        "## Why the chunked schedules are or are not faster here (profile)",
        "",
        "From the measured spans of the measured steps (medians over rounds). A span is one "
        "action on one worker: compute, posting its sends, and for the last backward of a step "
        "the optimizer step. Work (CPU) times are the worker thread's CPU seconds, which sharing a "
        "core does not inflate; wall times are what the schedule sees. *F+B per microbatch*: "
        "the mean forward plus backward of each chunk, summed over a worker's chunks (the "
        "worker's work per microbatch) and over all workers (the whole model's); 1f1b does the "
        "same layers in P chunks, so the difference is the cost of cutting the model finer "
        "(per-chunk fixed overhead: smaller matrix products, more autograd graphs, the Python "
        "loop and bookkeeping per action), shown per extra chunk.",
        "",
        "### Compute per microbatch",
        "",
        "| config | layers per worker (chunks) | forward / backward per chunk, ms (mean) | F+B per "
        "microbatch, all chunks: wall ms | CPU ms | x 1f1b (CPU) | per extra chunk, CPU ms "
        "(wall) | slowest worker's F+B, wall ms (x 1f1b's) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in pw:
        r, p = rows[n], rows[n]["profile"]
        vm = p["virtual_ms"]
        a = r.get("analysis")
        fb = f"{statistics.mean(vm['forward']):.1f} / {statistics.mean(vm['backward']):.1f}"
        tot, cpu = sum(p["work_ms_per_mb"]), sum(p["work_cpu_ms_per_mb"])
        if a:
            x = f"{cpu / a['work_cpu_ms_per_mb_ref']:.3f}"
            per = f"{a['per_extra_chunk_cpu_ms']:+.1f} ({a['per_extra_chunk_ms']:+.1f})"
            slow = (f"{a['slowest_work_ms_per_mb']:.1f} "
                    f"({a['slowest_work_ms_per_mb'] / a['slowest_work_ms_per_mb_ref']:.3f})")
        else:
            x, per, slow = ("1" if r["chunks"] == 1 else "-"), "-", f"{max(p['work_ms_per_mb']):.1f}"
        L.append(f"| `{n}` | {_per_worker_layers(p)} | {fb} | {tot:.1f} | {cpu:.1f} | {x} | {per} | "
                 f"{slow} |")
    L += [
        "",
        "### Time per step, per worker (mean over workers, ms)",
        "",
        "Busy + idle when ready + waiting = the step. *Idle when ready*: the worker sat idle "
        "although its next action's input had been produced on the other worker (transfer "
        "latency plus the engine's per-action overhead between spans). *Waiting*: for inputs not "
        "produced yet (the schedule's bubble, imbalance, the drain). Transfers: messages between "
        "different workers per step (activations and gradients), in-memory hand-overs between "
        "chunks on one worker in brackets. Comm: the median activation latency between workers. "
        f"Cores busy: all workers' CPU seconds over window x {cores} cores.",
        "",
        "| config | step | busy | of which update | idle when ready | waiting | bubble measured / "
        "simulated | transfers per step | comm ms | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in pw:
        r, p = rows[n], rows[n]["profile"]
        mean = statistics.mean
        L.append(
            f"| `{n}` | {p['window_ms_per_step']:.0f} | {mean(p['busy_ms_per_step']):.0f} | "
            f"{mean(p['update_ms_per_step']):.1f} | {mean(p['idle_ready_ms_per_step']):.1f} | "
            f"{mean(p['idle_wait_ms_per_step']):.0f} | {r['bubble_mean']:.1%} / "
            f"{r['sim_bubble_mean']:.1%} | {p['transfers_per_step']:.0f} "
            f"({p['local_handovers_per_step']:.0f}) | {r['costs_ms']['comm']:.2f} | "
            f"{p['cores_busy']:.0%} |")
    if not analysed:
        return L
    L += [
        "",
        "### The ratio to 1f1b, factorised",
        "",
        "All workers share the step's wall time, so step = mean busy / (1 - mean bubble), and "
        "the throughput ratio to 1f1b is exactly (1f1b's busy / this busy) x ((1 - this bubble) / "
        "(1 - 1f1b's bubble)): a work factor times a bubble factor (from the medians, so their "
        "product differs slightly from the paired ratio). *Ideal*: the chunked schedule "
        "simulated with 1f1b's measured stage costs split evenly over the chunks (no per-chunk "
        "overhead, the same comm), against 1f1b simulated with the same costs: the most the "
        "smaller bubble can give here on one core per worker.",
        "",
        "| config | x 1f1b (paired) | work factor | bubble factor | product | simulated, own "
        "costs (paired) | ideal: simulated, 1f1b's costs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in analysed:
        r, a = rows[n], rows[n]["analysis"]
        L.append(f"| `{n}` | {fmt(r.get('vs_pipewave_1f1b_same'), '.3f')} | {a['work_factor']:.3f} | "
                 f"{a['bubble_factor']:.3f} | {a['product']:.3f} | "
                 f"{fmt(r.get('sim_vs_pipewave_1f1b_same'), '.3f')} | "
                 f"{fmt(a['ideal_sim_ratio'], '.3f')} |")
    L += ["", "### Per configuration", ""]
    for n in analysed:
        r, a = rows[n], rows[n]["analysis"]
        ref = rows[a["ref"]]
        p, q = r["profile"], ref["profile"]
        v = r.get("vs_pipewave_1f1b_same")
        verdict = ("no paired ratio" if v is None else
                   f"{v:.3f}x 1f1b, {'faster' if v > 1 else 'slower'} by {abs(v - 1):.1%}")
        cpu, cpu_ref = a["work_cpu_ms_per_mb"], a["work_cpu_ms_per_mb_ref"]
        bigger = "larger" if a["work_factor"] < 1 else "smaller"
        line = (
            f"- `{n}` ({verdict}; {fmt(r['samples_per_s'], '.2f')} vs "
            f"{fmt(ref['samples_per_s'], '.2f')} samples/s): the bubble went from "
            f"{ref['bubble_mean']:.1%} to {r['bubble_mean']:.1%} (bubble factor "
            f"{a['bubble_factor']:.3f}), the busy time per worker and step from "
            f"{a['busy_ms_per_step_ref']:.0f} to {a['busy_ms_per_step']:.0f} ms (work factor "
            f"{a['work_factor']:.3f}: {bigger} work). The model's F+B per microbatch over its "
            f"{r['ranks'] * r['chunks']} chunks is {cpu:.1f} CPU ms against {cpu_ref:.1f} over "
            f"1f1b's {r['ranks']} ({cpu / cpu_ref - 1:+.1%}, {a['per_extra_chunk_cpu_ms']:+.1f} ms "
            f"per extra chunk); the update {a['update_ms_per_step_ref']:.1f} -> "
            f"{a['update_ms_per_step']:.1f} ms per step; idle when ready "
            f"{a['idle_ready_ms_per_step_ref']:.1f} -> {a['idle_ready_ms_per_step']:.1f} ms per "
            f"step ({a['transfers_per_step_ref']:.0f} -> {a['transfers_per_step']:.0f} transfers "
            f"per step, {p['local_handovers_per_step']:.0f} in memory); waiting "
            f"{a['idle_wait_ms_per_step_ref']:.0f} -> {a['idle_wait_ms_per_step']:.0f} ms per step. "
            f"Without per-chunk overhead the schedule would simulate at "
            f"{fmt(a['ideal_sim_ratio'], '.3f')}x 1f1b.")
        if r["ranks"] > cores:
            bound = 1 / q["cores_busy"] if q["cores_busy"] > 0 else float("inf")
            line += (f" With {r['ranks']} one-thread workers on {cores} cores, a waiting worker "
                     f"leaves its core to the others: the cores were already {q['cores_busy']:.0%} "
                     f"busy under 1f1b ({p['cores_busy']:.0%} here), so no schedule can gain more "
                     f"than {bound:.2f}x on this machine by filling the bubble, while extra work "
                     "costs in full (the simulation gives each worker its own core and so "
                     "overstates the gain of a smaller bubble).")
        L.append(line)
    return L
