"""Engine benchmark: pipewave's schedules against torch.distributed.pipelining and one process.

Every configuration trains the same workload, ``examples/gpt-small.yaml``'s model and data
(byte-level GPT, vocab 256, d_model 256, 8 blocks, 4 heads, seq 128; batch 32 in 8 microbatches;
Adam lr 3e-4; stdlib corpus; seed 0), on the same total of 2 torch threads:

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

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
# chunked schedules, as config tokens: interleaved-1f1b (2 chunks per worker), hanayo (1 wave),
# hanayo-w2 (2 waves); interleaved-1f1b-c<V> and hanayo-w<W> take other counts
CHUNKED_CONFIGS = ("interleaved-1f1b", "hanayo", "hanayo-w2")
TORCH_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
TORCH_CHUNKS = 2  # torch interleaved-1f1b: stages per rank (torch_pipelining.CHUNKS)
DEFAULT_CONFIGS = (
    [f"pipewave:{s}:{n}" for n in (2, 4) for s in PIPEWAVE_SCHEDULES]
    + [f"pipewave:{s}:{n}" for n in (2, 4) for s in CHUNKED_CONFIGS]
    + [f"torch:{s}:{n}" for n in (2, 4) for s in TORCH_SCHEDULES]
    + ["single", "single-1t"]
)
_PIPEWAVE_TOKEN = re.compile(r"(gpipe|1f1b|pipedream|2bw|interleaved-1f1b(?:-c(\d+))?|hanayo(?:-w(\d+))?)")
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
    schedule: str = ""  # the schedule's name (interleaved-1f1b, hanayo: chunk count in ``chunks``)
    ranks: int = 1  # stages (workers: pipewave), ranks (torch); 1 for single
    microbatches: int = 1  # single only: gradient-accumulation microbatches
    threads: int = THREADS  # single only: torch threads
    chunks: int = 1  # model chunks (virtual stages) per worker / rank: 2W for hanayo with W waves

    @property
    def token(self) -> str:
        """The schedule as written in the config name (``hanayo-w2``, ``interleaved-1f1b-c3``)."""
        if self.schedule == "hanayo" and self.chunks != 2:
            return f"hanayo-w{self.chunks // 2}"
        if self.schedule == "interleaved-1f1b" and self.chunks != 2:
            return f"interleaved-1f1b-c{self.chunks}"
        return self.schedule

    @property
    def name(self) -> str:
        if self.system == "single":
            base = "single" if self.microbatches == 1 else f"single:{self.microbatches}"
            return base if self.threads == THREADS else f"{base}-{self.threads}t"
        return f"{self.system}:{self.token}:{self.ranks}"

    @property
    def chunked(self) -> bool:
        return self.chunks > 1

    @property
    def spec_fields(self) -> dict[str, Any]:
        """The job spec's schedule fields (``schedule`` and its ``chunks`` or ``waves``)."""
        if self.schedule == "hanayo":
            return {"schedule": "hanayo", "waves": self.chunks // 2}
        if self.schedule == "interleaved-1f1b":
            return {"schedule": "interleaved-1f1b", "chunks": self.chunks}
        return {"schedule": self.schedule}

    @property
    def label(self) -> str:
        if self.system == "pipewave":
            if self.schedule == "hanayo":
                return (f"pipewave hanayo W={self.chunks // 2}, {self.ranks} workers x "
                        f"{self.chunks} chunks")
            if self.schedule == "interleaved-1f1b":
                return f"pipewave interleaved-1f1b, {self.ranks} workers x {self.chunks} chunks"
            return f"pipewave {self.schedule}, {self.ranks} stages"
        if self.system == "torch":
            cls = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                   "interleaved-1f1b": "ScheduleInterleaved1F1B"}[self.schedule]
            per = f" x {self.chunks} stages" if self.chunked else ""
            return f"torch {cls}, {self.ranks} ranks{per}"
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
                n = int(parts[2])
                if not 2 <= n <= 10:
                    raise ValueError
                if parts[0] == "torch" and parts[1] in TORCH_SCHEDULES:
                    chunks = TORCH_CHUNKS if parts[1] == "interleaved-1f1b" else 1
                    return Config("torch", parts[1], n, chunks=chunks)
                m = _PIPEWAVE_TOKEN.fullmatch(parts[1]) if parts[0] == "pipewave" else None
                if m is not None:
                    if m[1].startswith("interleaved-1f1b"):
                        chunks, name = int(m[2] or 2), "interleaved-1f1b"
                    elif m[1].startswith("hanayo"):
                        chunks, name = 2 * int(m[3] or 1), "hanayo"
                    else:
                        chunks, name = 1, m[1]
                    if chunks >= 1 and not (name == "interleaved-1f1b" and chunks < 2):
                        return Config("pipewave", name, n, chunks=chunks)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(
            f"bad config {text!r}: use pipewave:<schedule>:<stages> with schedule "
            f"{', '.join(PIPEWAVE_SCHEDULES)}, interleaved-1f1b (2 chunks per worker; "
            "interleaved-1f1b-c<V>: V >= 2 chunks), hanayo (1 wave: 2 chunks per worker; "
            "hanayo-w<W>: W waves, 2W chunks), e.g. pipewave:hanayo-w2:4; "
            f"torch:<{'|'.join(TORCH_SCHEDULES)}>:<ranks> (interleaved-1f1b: {TORCH_CHUNKS} stages "
            "per rank); stages and ranks 2..10; single, single-1t or single:<microbatches>")


# ----------------------------------------------------------------------------- one run (child)


def _repo_on_path() -> None:
    for p in (str(REPO), str(HERE)):
        if p not in sys.path:
            sys.path.insert(0, p)


def run_pipewave(cfg: Config, steps: int, warmup: int) -> dict[str, Any]:
    """One pipewave job of warmup + steps steps in an embedded Ray cluster; figures after warm-up."""
    _repo_on_path()
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # explicit, as the tests do (Ray 2.60 default)
    from pipewave.service.cluster.runtime import connect, disconnect

    t_start = time.time()
    connect(None, max(4, cfg.ranks))  # before anything imports ray: loopback-only cluster
    try:
        from pipewave.service.control.controller import ControllerOptions, JobController
        from pipewave.service.schedules import Costs, make_schedule, simulate
        from pipewave.service.spec import load_spec

        spec = load_spec(SPEC_FILE, overrides={
            "name": f"bench-{cfg.token}-{cfg.ranks}", **cfg.spec_fields,
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
        reports = sorted(ctl.last_run, key=lambda r: r.stage)
        M, P = spec.num_microbatches, spec.num_stages
        sched = make_schedule(spec.schedule, P, M, spec.steps, **spec.schedule_args)
        placement = spec.placement()  # (one chunk per stage: virtual stage = stage)
        update = tuple(fig.mean_update_s)
        comm = _estimate_comm(reports, placement)
        # per virtual stage (chunk) costs; comm is charged only between different workers
        vc = _virtual_costs(reports, placement, M, warmup, update)
        sim = simulate(sched, Costs(forward=tuple(vc["forward"]), backward=tuple(vc["backward"]),
                                    update=update, comm=comm))
        # Both bubbles over the same window: the measured steps, warm-up steps excluded
        spans = [r.spans for r in reports]
        sim_spans = [sim.spans[s] for s in range(P)]
        bubble = _window_bubble(spans, M, warmup)
        sim_bubble = _window_bubble(sim_spans, M, warmup)
        s0, s1 = _window_edges(sim_spans, M, warmup)
        gaps = _ready_gaps(reports, update, sched.placement)
        profile = _profile(reports, placement, sched.placement, M, warmup, steps, update, vc)
        profile["layers"] = [list(c) for c in ctl.partition]
        return {
            "samples_per_s": steps * spec.batch_size / window if window > 0 else 0.0,
            "window_s": window,
            "step_s": [m.time_s for m in measured],
            "losses": [m.loss for m in ctl.metrics],
            "final_loss": ctl.metrics[-1].loss,
            "startup_s": summary.startup_s,
            "total_s": time.time() - t_start,
            "chunks": spec.chunks_per_stage,
            "bubble": bubble,
            "bubble_mean": sum(bubble) / len(bubble),
            "sim_bubble": sim_bubble,
            "sim_bubble_mean": sum(sim_bubble) / len(sim_bubble),
            "wall_s": fig.wall_s,
            "sim_makespan_s": sim.makespan,
            "sim_samples_per_s": steps * spec.batch_size / (s1 - s0) if s1 > s0 else 0.0,
            "costs_ms": {"forward": [1e3 * c for c in fig.mean_forward_s],
                         "backward": [1e3 * c for c in fig.mean_backward_s],
                         "update": [1e3 * c for c in fig.mean_update_s], "comm": 1e3 * comm},
            # what the simulation got, in seconds (per virtual stage; update per stage)
            "sim_costs": {"forward": vc["forward"], "backward": vc["backward"],
                          "update": list(update), "comm": comm},
            "peak_versions": list(fig.peak_versions),
            "ready_gap": gaps,
            "ready_gap_mean": sum(gaps) / len(gaps),
            "profile": profile,
        }
    finally:
        disconnect()


def _window_edges(spans: list[list[Any]], M: int, first_step: int) -> tuple[float, float]:
    """(start, end) of the steps from ``first_step`` on: from the end of step ``first_step - 1``
    (the first action's start for step 0) to the end of the last step; a step ends when its last
    action (on any stage) ends. ``spans[s]`` is stage s's list of (Action, start, end)."""
    ends: dict[int, float] = {}
    for stage in spans:
        for a, _, t1 in stage:
            k = a.microbatch // M
            ends[k] = max(ends.get(k, t1), t1)
    last = max(ends)
    if first_step > last:
        raise ValueError("no steps after the warm-up")
    start = ends[first_step - 1] if first_step > 0 else min(t0 for st in spans for _, t0, _ in st)
    return start, ends[last]


def _window_bubble(spans: list[list[Any]], M: int, first_step: int) -> list[float]:
    """Per stage, idle / wall over the steps from ``first_step`` on (see ``_window_edges``); each
    action's busy time counts to its microbatch's step. The same definition serves measured and
    simulated spans."""
    start, end = _window_edges(spans, M, first_step)
    wall = end - start
    out = []
    for stage in spans:
        busy = sum(t1 - t0 for a, t0, t1 in stage if a.microbatch // M >= first_step)
        out.append(max(0.0, 1 - busy / wall))
    return out


def _virtual_costs(reports: list[Any], placement: Any, M: int, first_step: int,
                   update_s: tuple[float, ...]) -> dict[str, list[float]]:
    """Per virtual stage (model chunk; the stage itself with one chunk per stage), the mean forward
    and backward over the measured steps: wall seconds (``forward``, ``backward``: the backward
    without the optimizer step, whose mean is ``update_s``) and work seconds (``forward_cpu``,
    ``backward_cpu``: the stage's CPU time, the backwards carrying an update left out)."""
    from pipewave.service.schedules import Kind

    n = placement.num_virtual_stages
    acc: dict[str, list[list[float]]] = {
        k: [[] for _ in range(n)] for k in ("forward", "backward", "forward_cpu", "backward_cpu")}
    for r in reports:
        for i, (a, t0, t1) in enumerate(r.spans):
            if a.microbatch // M < first_step:
                continue
            v = placement.virtual(r.stage, a.chunk)
            cpu = r.cpu_s[i] if i < len(r.cpu_s) else None
            if a.kind is Kind.F:
                acc["forward"][v].append(t1 - t0)
                if cpu is not None:
                    acc["forward_cpu"][v].append(cpu)
            else:
                acc["backward"][v].append(t1 - t0 - (update_s[r.stage] if a.update else 0.0))
                if cpu is not None and not a.update:
                    acc["backward_cpu"][v].append(cpu)
    return {k: [sum(x) / len(x) if x else 0.0 for x in rows] for k, rows in acc.items()}


def _profile(reports: list[Any], placement: Any, sched_placement: Any, M: int, first_step: int,
             steps: int, update_s: tuple[float, ...], vc: dict[str, list[float]]) -> dict[str, Any]:
    """Where each worker's wall time goes over the measured steps, per step (ms): busy (its
    spans: compute, posting sends, the optimizer step), of which the optimizer step, and idle,
    split into idle when ready (the inputs of its next action had been produced on the other
    worker: transfer latency plus the engine's per-action overhead between spans) and waiting (for
    inputs not produced yet: the schedule's bubble, imbalance, the drain). Plus per chunk costs,
    each worker's work per microbatch over its chunks, the transfers the placement implies, and
    how busy the machine's cores were (CPU seconds of all workers' spans / (window x cores))."""
    spans = [r.spans for r in reports]
    start, end = _window_edges(spans, M, first_step)
    wall = end - start
    P = len(reports)
    made: dict[Any, float] = {}  # when each action's output left its worker
    for r in reports:
        for a, _, t1 in r.spans:
            made[a.key] = t1 - (update_s[r.stage] if a.update else 0.0)  # gradients leave first
    busy, cpu, ready_idle, upd = [0.0] * P, [0.0] * P, [0.0] * P, [0.0] * P
    for r in reports:
        w, prev = r.stage, start
        for i, (a, t0, t1) in enumerate(r.spans):
            if a.microbatch // M < first_step:
                prev = max(prev, t1)
                continue
            ready = max([prev] + [made[d] for d in a.dependencies(P, sched_placement) if d[0] != w])
            ready_idle[w] += max(0.0, t0 - ready)
            busy[w] += t1 - t0
            cpu[w] += r.cpu_s[i] if i < len(r.cpu_s) else 0.0
            upd[w] += update_s[w] if a.update else 0.0
            prev = t1
    n = placement.num_virtual_stages
    cross = sum(1 for v in range(1, n) if placement.locate(v - 1)[0] != placement.locate(v)[0])
    work = [sum(vc["forward"][v] + vc["backward"][v] for v in placement.workers[w]) for w in range(P)]
    work_cpu = [sum(vc["forward_cpu"][v] + vc["backward_cpu"][v] for v in placement.workers[w])
                for w in range(P)]
    ms = 1e3 / steps
    return {
        "placement": [list(ws) for ws in placement.workers],
        "window_ms_per_step": wall * ms,
        "virtual_ms": {k: [1e3 * x for x in xs] for k, xs in vc.items()},
        "work_ms_per_mb": [1e3 * x for x in work],
        "work_cpu_ms_per_mb": [1e3 * x for x in work_cpu],
        "busy_ms_per_step": [x * ms for x in busy],
        "cpu_ms_per_step": [x * ms for x in cpu],
        "update_ms_per_step": [x * ms for x in upd],
        "idle_ready_ms_per_step": [x * ms for x in ready_idle],
        "idle_wait_ms_per_step": [max(0.0, wall - b - g) * ms for b, g in zip(busy, ready_idle, strict=True)],
        "transfers_per_step": 2 * cross * M,  # activations and gradients between different workers
        "local_handovers_per_step": 2 * (n - 1 - cross) * M,  # between chunks on one worker
        "cores_busy": sum(cpu) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0,
    }


def _ready_gaps(reports: list[Any], update_s: tuple[float, ...], sched_placement: Any = None
                ) -> list[float]:
    """Per stage, the fraction of the run's wall time the stage sat idle although its next action's
    inputs had already been produced (transfer latency plus the engine's own per-action overhead:
    the part of the measured bubble a cost-only simulation cannot see). ``sched_placement``: the
    schedule's chunk placement (None: one chunk per stage)."""
    made: dict[Any, float] = {}  # when each action's output left its stage
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
            ready = max([prev] + [made[d] for d in a.dependencies(S, sched_placement)
                                  if d[0] != r.stage])
            gap += max(0.0, t0 - ready)
            prev = t1
        out.append(gap / (end - begin) if end > begin else 0.0)
    return out


def _estimate_comm(reports: list[Any], placement: Any) -> float:
    """Median worker-to-worker activation latency: from the end of the forward of virtual stage
    v-1 on one worker to the start of virtual stage v's on another, over the forwards the
    receiving worker was idle waiting for (a wave's turn, two chunks on one worker, is no hop)."""
    from pipewave.service.schedules import Kind

    ends: dict[tuple[int, int], float] = {}  # (virtual stage, microbatch) -> end of its forward
    for r in reports:
        for a, _, t1 in r.spans:
            if a.kind is Kind.F:
                ends[(placement.virtual(r.stage, a.chunk), a.microbatch)] = t1
    samples = []
    for r in reports:
        prev_end = float("-inf")
        for a, t0, t1 in r.spans:
            if a.kind is Kind.F:
                v = placement.virtual(r.stage, a.chunk)
                if v > 0 and placement.locate(v - 1)[0] != r.stage:
                    sent = ends[(v - 1, a.microbatch)]
                    if prev_end <= sent:  # the worker was free before the activation left: it waited
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
    from pipewave.service.spec import load_spec
    from pipewave.workers.data import get_batch, load_corpus, microbatch
    from pipewave.workers.models import build_model, loss_fn

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
    t0, cpu0 = time.time(), _cpu_times()
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
    wall, cpu1 = time.time() - t0, _cpu_times()
    if rc == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        result["run_wall_s"] = wall
        result["machine_during_run"] = _cpu_share(cpu0, cpu1)
        return result
    tail = log_file.read_text(errors="replace").strip().splitlines()[-25:]
    return {"error": rc if isinstance(rc, str) else f"exit code {rc}", "log_tail": tail, "run_wall_s": wall}


def _cpu_times() -> list[int] | None:
    """The machine's CPU clock ticks from /proc/stat (user nice system idle iowait irq softirq
    steal ...), or None where there is none."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None


def _cpu_share(a: list[int] | None, b: list[int] | None) -> dict[str, float] | None:
    """Over one run, the share of the machine's CPU time that was busy (all processes, the run's
    own included) and stolen by the hypervisor (a sign of a noisy host)."""
    if a is None or b is None:
        return None
    d = [y - x for x, y in zip(a, b, strict=True)]
    total = sum(d)
    if total <= 0:
        return None
    idle = d[3] + d[4]
    return {"busy": (total - idle - d[7]) / total, "steal": d[7] / total}


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
    _repo_on_path()
    from pipewave.service.schedules import Costs, make_schedule, simulate

    sched = make_schedule(schedule, stages, microbatches, warmup + steps,
                          waves=chunks // 2 if schedule == "hanayo" else None,
                          chunks=chunks if schedule == "interleaved-1f1b" else None)
    sim = simulate(sched, Costs(forward=tuple(costs["forward"]), backward=tuple(costs["backward"]),
                                update=tuple(costs["update"]), comm=float(costs["comm"])))
    s0, s1 = _window_edges([sim.spans[s] for s in range(stages)], microbatches, warmup)
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


# ----------------------------------------------------------------------------- report


def _f(x: float | None, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _n(k: int, noun: str) -> str:
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
        L.append(f"| `{n}` | {r['label']} | {_f(r['samples_per_s'], '.2f', 'failed')} | "
                 f"{_f(r.get('vs_pipewave_1f1b_same'), '.3f')} | "
                 f"{_f(r.get('vs_torch_interleaved_same'), '.3f')} | "
                 f"{_f(r.get('vs_torch_1f1b_same'), '.3f')} | {bub} | {sbub} | {sim} | "
                 f"{_f(r['final_loss'], '.4f')} |")
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
        L.append(f"| `{n}` | {_f(r.get('vs_pipewave_1f1b_same'), '.3f')} | {a['work_factor']:.3f} | "
                 f"{a['bubble_factor']:.3f} | {a['product']:.3f} | "
                 f"{_f(r.get('sim_vs_pipewave_1f1b_same'), '.3f')} | "
                 f"{_f(a['ideal_sim_ratio'], '.3f')} |")
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
            f"- `{n}` ({verdict}; {_f(r['samples_per_s'], '.2f')} vs "
            f"{_f(ref['samples_per_s'], '.2f')} samples/s): the bubble went from "
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
            f"{_f(a['ideal_sim_ratio'], '.3f')}x 1f1b.")
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
                   help="comma-separated subset, e.g. pipewave:pipedream:2,pipewave:hanayo-w2:4,"
                        "torch:interleaved-1f1b:2,single (default: all "
                        f"{len(DEFAULT_CONFIGS)})")
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
                mach = res.get("machine_during_run")
                if mach:
                    extra += f"  cpu busy {mach['busy']:.0%} steal {mach['steal']:.1%}"
                print(f"{head} {res['samples_per_s']:7.2f} samples/s  loss {res['final_loss']:.4f}"
                      f"  run {res['run_wall_s']:.1f} s{extra}", flush=True)
    rows = aggregate(configs, runs)
    chunk_analysis(rows, a.steps, a.warmup)
    report: dict[str, Any] = {
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
