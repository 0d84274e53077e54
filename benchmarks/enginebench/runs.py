"""One configuration trained in this process (the child of ``engine.py --one``): a pipewave job
on an embedded Ray cluster, torch.distributed.pipelining, or the single process, each on the
workload of a job spec file (``Workload.spec_file``)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from enginebench.config import THREADS, Config, repo_on_path
from enginebench.spans import (
    estimate_comm,
    ready_gaps,
    virtual_costs,
    window_bubble,
    window_edges,
    worker_profile,
)


def run_pipewave(cfg: Config, steps: int, warmup: int, spec_file: Path) -> dict[str, Any]:
    """One pipewave job of warmup + steps steps in an embedded Ray cluster; figures after warm-up."""
    repo_on_path()
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # explicit, as the tests do (Ray 2.60 default)
    from pipewave.service.cluster.runtime import connect, disconnect

    t_start = time.time()
    connect(None, max(4, cfg.ranks))  # before anything imports ray: loopback-only cluster
    try:
        from pipewave.service.control.controller import ControllerOptions, JobController
        from pipewave.service.schedules import Costs, make_schedule, simulate
        from pipewave.service.spec import load_spec

        spec = load_spec(spec_file, overrides={
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
        comm = estimate_comm(reports, placement)
        # per virtual stage (chunk) costs; comm is charged only between different workers
        vc = virtual_costs(reports, placement, M, warmup, update)
        sim = simulate(sched, Costs(forward=tuple(vc["forward"]), backward=tuple(vc["backward"]),
                                    update=update, comm=comm))
        # Both bubbles over the same window: the measured steps, warm-up steps excluded
        spans = [r.spans for r in reports]
        sim_spans = [sim.spans[s] for s in range(P)]
        bubble = window_bubble(spans, M, warmup)
        sim_bubble = window_bubble(sim_spans, M, warmup)
        s0, s1 = window_edges(sim_spans, M, warmup)
        gaps = ready_gaps(reports, update, sched.placement)
        profile = worker_profile(reports, placement, sched.placement, M, warmup, steps, update, vc)
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


def run_torch(cfg: Config, steps: int, warmup: int, spec_file: Path) -> dict[str, Any]:
    repo_on_path()
    import torch_pipelining

    t_start = time.time()
    result = torch_pipelining.run(cfg.schedule, cfg.ranks, steps, warmup, spec_file)
    result["total_s"] = time.time() - t_start
    return result


def run_single(cfg: Config, steps: int, warmup: int, spec_file: Path) -> dict[str, Any]:
    """The unpipelined reference: whole model, one process, 2 threads, fused Adam."""
    repo_on_path()
    t_start = time.time()
    import torch

    from pipewave.service.spec import load_spec
    from pipewave.workers.data import get_batch, load_corpus, microbatch
    from pipewave.workers.models import model_for

    torch.set_num_threads(cfg.threads)
    spec = load_spec(spec_file)
    B, M, T = spec.batch_size, cfg.microbatches, spec.seq_len
    pm = model_for(spec.model_settings)
    model, loss_fn = pm.build_model(spec.seed), pm.loss
    o = spec.optimizer
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                           weight_decay=o.weight_decay, fused=True)
    corpus = load_corpus(spec.data)
    step_s, losses = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = get_batch(corpus, spec.seed, step, B, T)  # (B, T), (B, T)
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


def run_one(cfg: Config, steps: int, warmup: int, spec_file: Path) -> dict[str, Any]:
    fn = {"pipewave": run_pipewave, "torch": run_torch, "single": run_single}[cfg.system]
    return fn(cfg, steps, warmup, spec_file)
