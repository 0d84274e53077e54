"""Engine benchmark: pipewave's schedules against torch.distributed.pipelining and one process.

Every configuration trains the same workload, ``examples/gpt-small.yaml``'s model and data
(byte-level GPT, vocab 256, d_model 256, 8 blocks, 4 heads, seq 128; batch 32 in 8 microbatches;
Adam lr 3e-4; stdlib corpus; seed 0), on the same total of 2 torch threads:

- ``pipewave:<schedule>:<stages>``: a pipewave job (embedded Ray cluster on loopback, one stage
  actor per stage, ``2 // stages`` threads each, at least 1), schedules gpipe, 1f1b, pipedream, 2bw;
- ``torch:<gpipe|1f1b>:<ranks>``: torch.distributed.pipelining ScheduleGPipe / Schedule1F1B over
  gloo, one process and one thread per rank (``benchmarks/torch_pipelining.py``);
- ``single`` (``single:<M>``: with M microbatches of gradient accumulation): the whole model in one
  process, ``torch.set_num_threads(2)``, fused Adam, no pipeline.

Each run of a configuration is a fresh process (so Ray's background processes exist only while a
pipewave run does) and trains ``warmup + steps`` steps; only the ``steps`` after the warm-up count,
startup never does. Configurations are interleaved round-robin over ``rounds`` rounds (the start
rotated each round) because the machine's speed drifts; the table gives per-configuration medians
and ratios as the median over rounds of the ratio within a round.

    .venv/bin/python benchmarks/engine.py --output benchmarks/results.md

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
THREADS = 2  # torch threads per configuration, in total (the machine's 2 cores)
PIPEWAVE_SCHEDULES = ("gpipe", "1f1b", "pipedream", "2bw")
TORCH_SCHEDULES = ("gpipe", "1f1b")
DEFAULT_CONFIGS = (
    [f"pipewave:{s}:{n}" for n in (2, 4) for s in PIPEWAVE_SCHEDULES]
    + [f"torch:{s}:{n}" for n in (2, 4) for s in TORCH_SCHEDULES]
    + ["single", "single-1t"]
)
DEFAULT_STEPS, DEFAULT_WARMUP, DEFAULT_ROUNDS = 14, 2, 3
# Targets (the issue): pipedream on 2 stages against torch's 2-rank 1F1B and the single process;
# every pipewave run's measured mean bubble within 10% (relative) of its simulated figure.
HEADLINE = "pipewave:pipedream:2"
TARGET_VS_TORCH = 1.10
TARGET_VS_SINGLE = 0.93
BUBBLE_REL_TOL = 0.10


# ----------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    system: str  # pipewave | torch | single
    schedule: str = ""
    ranks: int = 1  # stages (pipewave), ranks (torch); 1 for single
    microbatches: int = 1  # single only: gradient-accumulation microbatches
    threads: int = THREADS  # single only: torch threads

    @property
    def name(self) -> str:
        if self.system == "single":
            base = "single" if self.microbatches == 1 else f"single:{self.microbatches}"
            return base if self.threads == THREADS else f"{base}-{self.threads}t"
        return f"{self.system}:{self.schedule}:{self.ranks}"

    @property
    def label(self) -> str:
        if self.system == "pipewave":
            return f"pipewave {self.schedule}, {self.ranks} stages"
        if self.system == "torch":
            cls = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}[self.schedule]
            return f"torch {cls}, {self.ranks} ranks"
        mb = "" if self.microbatches == 1 else f", {self.microbatches} microbatches"
        return f"single process, {self.threads} thread{'s' if self.threads > 1 else ''}{mb}"

    @staticmethod
    def parse(text: str) -> Config:
        parts = text.strip().split(":")
        try:
            if text.strip() == "single-1t":
                return Config("single", threads=1)
            if parts[0] == "single" and len(parts) in (1, 2):
                mb = int(parts[1]) if len(parts) == 2 else 1
                if mb < 1 or 32 % mb:
                    raise ValueError
                return Config("single", microbatches=mb)
            if len(parts) == 3 and parts[0] in ("pipewave", "torch"):
                allowed = PIPEWAVE_SCHEDULES if parts[0] == "pipewave" else TORCH_SCHEDULES
                n = int(parts[2])
                if parts[1] in allowed and 2 <= n <= 10:
                    return Config(parts[0], parts[1], n)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(
            f"bad config {text!r}: use pipewave:<{'|'.join(PIPEWAVE_SCHEDULES)}>:<stages>, "
            f"torch:<{'|'.join(TORCH_SCHEDULES)}>:<ranks> (2..10), single or single:<microbatches>")


# ----------------------------------------------------------------------------- one run (child)


def _repo_on_path() -> None:
    for p in (str(REPO), str(HERE)):
        if p not in sys.path:
            sys.path.insert(0, p)


def run_pipewave(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    """One pipewave job of warmup + steps steps in an embedded Ray cluster; figures after warm-up."""
    _repo_on_path()
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # explicit, as the tests do (Ray 2.60 default)
    from service.runtime import connect, disconnect

    t_start = time.time()
    connect(None, max(4, cfg.ranks))  # before anything imports ray: loopback-only cluster
    try:
        from service.controller import ControllerOptions, JobController
        from service.schedules import Costs, make_schedule, simulate
        from service.spec import load_spec

        spec = load_spec(SPEC_FILE, overrides={
            "name": f"bench-{cfg.schedule}-{cfg.ranks}", "schedule": cfg.schedule,
            "stages": cfg.ranks, "partition": "uniform", "steps": warmup + steps,
            "checkpoint": {"every_steps": None}})  # uniform: the cut torch pipelining gets
        opts = ControllerOptions(cpus_per_stage=1, threads_per_stage=max(1, THREADS // cfg.ranks),
                                 resume=False)
        with tempfile.TemporaryDirectory(prefix="pipewave-bench-") as out:
            ctl = JobController(spec, Path(out), opts)
            summary = ctl.run()
        if summary.state != "SUCCEEDED":
            raise RuntimeError(f"pipewave job {summary.state}: {summary.reason}")
        if len(ctl.figures) != 1:
            raise RuntimeError(f"expected one schedule run, got {len(ctl.figures)}")
        measured = ctl.metrics[warmup:]
        window = sum(m.time_s for m in measured)
        fig = ctl.figures[0]
        comm = _estimate_comm(ctl.last_run)
        M = spec.microbatches
        spans = [r.spans for r in ctl.last_run]
        fwd, bwd = _mean_costs(spans, M, warmup, tuple(fig.mean_update_s))
        sched = make_schedule(spec.schedule, spec.stages, M, spec.steps)
        sim = simulate(sched, Costs(forward=fwd, backward=bwd,
                                    update=tuple(fig.mean_update_s), comm=comm))
        # Both bubbles over the same window: the measured steps, warm-up steps excluded
        bubble = _window_bubble(spans, M, warmup)
        sim_bubble = _window_bubble([sim.spans[s] for s in range(spec.stages)], M, warmup)
        gaps = _ready_gaps(ctl.last_run, tuple(fig.mean_update_s))
        return {
            "samples_per_s": steps * spec.batch_size / window if window > 0 else 0.0,
            "window_s": window,
            "step_s": [m.time_s for m in measured],
            "losses": [m.loss for m in ctl.metrics],
            "final_loss": ctl.metrics[-1].loss,
            "startup_s": summary.startup_s,
            "total_s": time.time() - t_start,
            "bubble": bubble,
            "bubble_mean": sum(bubble) / len(bubble),
            "sim_bubble": sim_bubble,
            "sim_bubble_mean": sum(sim_bubble) / len(sim_bubble),
            "wall_s": fig.wall_s,
            "sim_makespan_s": sim.makespan,
            "costs_ms": {"forward": [1e3 * c for c in fig.mean_forward_s],
                         "backward": [1e3 * c for c in fig.mean_backward_s],
                         "update": [1e3 * c for c in fig.mean_update_s], "comm": 1e3 * comm},
            "peak_versions": list(fig.peak_versions),
            "ready_gap": gaps,
            "ready_gap_mean": sum(gaps) / len(gaps),
        }
    finally:
        disconnect()


def _window_bubble(spans: list[list[Any]], M: int, first_step: int) -> list[float]:
    """Per stage, idle / wall over the steps from ``first_step`` on: a step ends when its last
    action (on any stage) ends; each action's busy time counts to its microbatch's step.
    ``spans[s]`` is stage s's list of (Action, start, end); the same definition serves measured
    and simulated spans."""
    ends: dict[int, float] = {}
    for stage in spans:
        for a, _, t1 in stage:
            k = a.microbatch // M
            ends[k] = max(ends.get(k, t1), t1)
    last = max(ends)
    if first_step > last:
        raise ValueError("no steps after the warm-up")
    start = ends[first_step - 1] if first_step > 0 else min(t0 for st in spans for _, t0, _ in st)
    wall = ends[last] - start
    out = []
    for stage in spans:
        busy = sum(t1 - t0 for a, t0, t1 in stage if a.microbatch // M >= first_step)
        out.append(max(0.0, 1 - busy / wall))
    return out


def _mean_costs(spans: list[list[Any]], M: int, first_step: int,
                update_s: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stage mean forward and backward seconds over the measured steps (backward without the
    optimizer step, whose mean is ``update_s``)."""
    from service.schedules import Kind

    fwd, bwd = [], []
    for s, stage in enumerate(spans):
        f = [t1 - t0 for a, t0, t1 in stage if a.kind is Kind.F and a.microbatch // M >= first_step]
        b = [t1 - t0 - (update_s[s] if a.update else 0.0)
             for a, t0, t1 in stage if a.kind is Kind.B and a.microbatch // M >= first_step]
        fwd.append(sum(f) / max(1, len(f)))
        bwd.append(sum(b) / max(1, len(b)))
    return tuple(fwd), tuple(bwd)


def _ready_gaps(reports: list[Any], update_s: tuple[float, ...]) -> list[float]:
    """Per stage, the fraction of the run's wall time the stage sat idle although its next action's
    inputs had already been produced (transfer latency plus the engine's own per-action overhead:
    the part of the measured bubble a cost-only simulation cannot see)."""
    from service.schedules import Kind

    made: dict[tuple[int, Kind, int], float] = {}  # when each action's output left its stage
    for r in reports:
        for a, _, t1 in r.spans:
            made[a.key] = t1 - (update_s[r.stage] if a.update else 0.0)  # gradients leave first
    begin = min(r.spans[0][1] for r in reports if r.spans)
    end = max(r.spans[-1][2] for r in reports if r.spans)
    S = len(reports)
    out = []
    for r in reports:
        prev, gap = begin, 0.0
        for a, t0, t1 in r.spans:
            ready = max([prev] + [made[d] for d in a.dependencies(S) if d[0] != r.stage])
            gap += max(0.0, t0 - ready)
            prev = t1
        out.append(gap / (end - begin) if end > begin else 0.0)
    return out


def _estimate_comm(reports: list[Any]) -> float:
    """Median stage-to-stage activation latency: from the end of stage s-1's forward of a
    microbatch to the start of stage s's, over the forwards stage s was idle waiting for."""
    from service.schedules import Kind

    ends: dict[tuple[int, int], float] = {}
    for r in reports:
        for a, _, t1 in r.spans:
            if a.kind is Kind.F:
                ends[(r.stage, a.microbatch)] = t1
    samples = []
    for r in reports:
        if r.stage == 0:
            continue
        prev_end = float("-inf")
        for a, t0, t1 in r.spans:
            if a.kind is Kind.F:
                sent = ends[(r.stage - 1, a.microbatch)]
                if prev_end <= sent:  # the stage was free before the activation left: it waited
                    samples.append(t0 - sent)
            prev_end = t1
    return max(0.0, statistics.median(samples)) if samples else 0.0


def run_torch(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    _repo_on_path()
    import torch_pipelining

    t_start = time.time()
    result = torch_pipelining.run(cfg.schedule, cfg.ranks, steps, warmup, SPEC_FILE)
    result["total_s"] = time.time() - t_start
    return result


def run_single(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    """The unpipelined reference: whole model, one process, 2 threads, fused Adam."""
    _repo_on_path()
    t_start = time.time()
    import torch

    from service.spec import load_spec
    from workers.data import get_batch, load_corpus, microbatch
    from workers.models import build_model, loss_fn

    torch.set_num_threads(cfg.threads)
    spec = load_spec(SPEC_FILE)
    m, B, M = spec.model, spec.batch_size, cfg.microbatches
    model = build_model(m, spec.seed)
    o = spec.optimizer
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                           weight_decay=o.weight_decay, fused=True)
    corpus = load_corpus(spec.data)
    step_s, losses = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = get_batch(corpus, spec.seed, step, B, m.seq_len)  # (B, T), (B, T)
        if M == 1:
            loss = loss_fn(model(x), y)
            loss.backward()
            value = loss.item()
        else:  # gradient accumulation: mean of the microbatches' mean losses
            value = 0.0
            for i in range(M):
                loss = loss_fn(model(microbatch(x, i, M)), microbatch(y, i, M)) / M
                loss.backward()
                value += loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        losses.append(value)
    window = sum(step_s[warmup:])
    return {"samples_per_s": steps * B / window if window > 0 else 0.0, "window_s": window,
            "step_s": step_s[warmup:], "losses": losses, "final_loss": losses[-1],
            "total_s": time.time() - t_start}


def run_one(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    fn = {"pipewave": run_pipewave, "torch": run_torch, "single": run_single}[cfg.system]
    return fn(cfg, steps, warmup)


# ----------------------------------------------------------------------------- orchestration


def launch(cfg: Config, steps: int, warmup: int, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    """Run one configuration in a fresh process; its result, or {"error": ...}."""
    result_file = log_dir / f"{cfg.name.replace(':', '-')}-{time.time_ns()}.json"
    log_file = result_file.with_suffix(".log")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", cfg.name, "--steps", str(steps),
           "--warmup", str(warmup), "--result", str(result_file)]
    t0 = time.time()
    with log_file.open("w") as log:
        # its own session: on a timeout the run's whole process group (ranks, Ray) is stopped
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as err:
            _stop_group(proc)
            if isinstance(err, KeyboardInterrupt):
                raise
            rc = f"timed out after {timeout_s:.0f} s"
    wall = time.time() - t0
    if rc == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        result["run_wall_s"] = wall
        return result
    tail = log_file.read_text(errors="replace").strip().splitlines()[-25:]
    return {"error": rc if isinstance(rc, str) else f"exit code {rc}", "log_tail": tail, "run_wall_s": wall}


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group of one run this benchmark started."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def rotated(configs: list[Config], r: int, rounds: int) -> list[Config]:
    k = (r * len(configs)) // max(1, rounds) % max(1, len(configs))
    return configs[k:] + configs[:k]


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def the_command() -> str:
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(REPO))  # don't resolve: keep the venv's python
    except ValueError:
        shown = str(exe)
    script = Path(sys.argv[0])
    try:
        script_shown = str(script.resolve().relative_to(REPO))
    except ValueError:
        script_shown = sys.argv[0]
    return shlex.join([shown, script_shown, *sys.argv[1:]])


# ----------------------------------------------------------------------------- aggregation


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def paired_ratio(runs: dict[str, list[dict[str, Any]]], name: str, ref: str) -> float | None:
    """Median over rounds of (this config's samples/s) / (ref's samples/s) within the round."""
    if name not in runs or ref not in runs:
        return None
    ratios = [a["samples_per_s"] / b["samples_per_s"]
              for a, b in zip(runs[name], runs[ref], strict=True)
              if "error" not in a and "error" not in b and b["samples_per_s"] > 0]
    return median(ratios)


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
        }
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
        rows[c.name] = row
    return rows


def targets(rows: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    h = rows.get(HEADLINE)
    for ref, goal, what in (("torch:1f1b:2", TARGET_VS_TORCH, "torch Schedule1F1B, 2 ranks"),
                            ("single", TARGET_VS_SINGLE, "the unpipelined single process")):
        key = "vs_torch_1f1b_2" if ref.startswith("torch") else "vs_single"
        value = h[key] if h else None
        t = {"target": f"pipewave pipedream, 2 stages >= {goal:.2f}x {what}", "goal": goal,
             "value": value}
        if value is None:
            t.update(result="NOT RUN", detail=f"needs configs {HEADLINE} and {ref}")
        else:
            diff = value - goal
            t.update(result="PASS" if diff >= 0 else "MISS",
                     detail=f"{value:.3f}x, {'above' if diff >= 0 else 'below'} the target by "
                            f"{abs(diff):.3f}x ({abs(diff) / goal:.1%})")
        out.append(t)
    one = rows.get("single-1t")
    if one and h and rows.get("torch:1f1b:2"):
        bound = 2 * one["samples_per_s"]
        t1 = rows["torch:1f1b:2"]["samples_per_s"]
        out.append({
            "target": "context: ideal 2-core pipeline = 2 x one core (single-1t)", "goal": None,
            "value": bound, "result": "INFO",
            "detail": f"{bound:.2f} samples/s; torch 1F1B 2 ranks reaches {t1 / bound:.1%} of it, "
                      f"pipedream 2 stages {h['samples_per_s'] / bound:.1%}; "
                      f"{TARGET_VS_TORCH:.2f}x torch 1F1B would need {TARGET_VS_TORCH * t1 / bound:.1%}",
        })
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


# ----------------------------------------------------------------------------- report


def _f(x: float | None, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def render(report: dict[str, Any]) -> str:
    a, rows, runs = report["args"], report["rows"], report["runs"]
    L = [
        "# pipewave engine benchmark",
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
        "- Workload: `examples/gpt-small.yaml`'s model and data: byte-level GPT (vocab 256, d_model "
        "256, 8 blocks, 4 heads, seq 128, 6.48 M parameters), batch 32 in 8 microbatches, Adam lr "
        "3e-4, stdlib corpus, seed 0; 2 torch threads per configuration in total",
        f"- Each run: a fresh process, {_n(a['warmup'], 'warm-up step')} (not counted) then "
        f"{_n(a['steps'], 'measured step')}; {_n(a['rounds'], 'round')}, configurations "
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
        L.append(f"| `{name}` | {r['label']}{fails} | {_f(r['samples_per_s'], '.2f', 'failed')} | "
                 f"{spread} | {_f(r['vs_torch_1f1b_same'], '.3f')} | {_f(r['vs_torch_1f1b_2'], '.3f')} | "
                 f"{_f(r['vs_single'], '.3f')} | {_f(r['final_loss'], '.4f')} | "
                 f"{_f(r['run_wall_s'], '.1f')} |")
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
            "excluded). Simulated: `service.schedules.simulate` of the same schedule and step "
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
    L += ["", "## Samples/s per round", "",
          "| config | " + " | ".join(f"round {i + 1}" for i in range(a["rounds"])) + " |",
          "|---|" + "---:|" * a["rounds"]]
    for name, rs in runs.items():
        cells = [("failed: " + r["error"]) if "error" in r else f"{r['samples_per_s']:.2f}" for r in rs]
        L.append(f"| `{name}` | " + " | ".join(cells) + " |")
    L += ["", "Run order: " + " ; ".join(f"round {i + 1}: " + ", ".join(o)
                                          for i, o in enumerate(report["order"])), ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Train the gpt-small workload with pipewave's schedules, torch.distributed."
                    "pipelining and one process, interleaved; write a results table.")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"measured steps per run (default {DEFAULT_STEPS})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"warm-up steps per run, not counted (default {DEFAULT_WARMUP}, at least 1)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"round-robin rounds over the configurations (default {DEFAULT_ROUNDS})")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help="comma-separated subset, e.g. pipewave:pipedream:2,torch:1f1b:2,single "
                        "(default: all 13)")
    p.add_argument("--output", type=Path, default=HERE / "results.md",
                   help="markdown results file (default benchmarks/results.md)")
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

    if a.one:
        result = run_one(Config.parse(a.one), a.steps, a.warmup)
        Path(a.result).write_text(json.dumps(result))
        return 0

    try:
        configs = [Config.parse(t) for t in a.configs.split(",") if t.strip()]
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
    print(f"engine benchmark: {len(configs)} configs x {a.rounds} rounds, {a.warmup} warm-up + "
          f"{a.steps} measured steps each; load average {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pipewave-bench-logs-") as logs:
        done = 0
        for r in range(a.rounds):
            this = rotated(configs, r, a.rounds)
            order.append([c.name for c in this])
            for c in this:
                if done:
                    time.sleep(a.settle)
                res = launch(c, a.steps, a.warmup, timeout, Path(logs))
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
                print(f"{head} {res['samples_per_s']:7.2f} samples/s  loss {res['final_loss']:.4f}"
                      f"  run {res['run_wall_s']:.1f} s{extra}", flush=True)
    rows = aggregate(configs, runs)
    report = {
        "command": the_command(),
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
    report["targets"] = targets(rows)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(report))
    print(f"\nwrote {a.output} ({report['duration_s'] / 60:.1f} min)")
    for t in report["targets"]:
        print(f"  {t['result']:<7} {t['target']}: {t['detail']}")
    if a.json == "-":
        print(json.dumps(report, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
