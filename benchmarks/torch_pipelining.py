"""Baseline: the engine benchmark's workload trained with torch.distributed.pipelining over gloo.

The workload is a job spec (``examples/gpt-small.yaml``'s GPT by default, ``llama-small.yaml``'s
transformers Llama with ``engine.py --model llama``). One process per rank
(``torch.multiprocessing.spawn``), one torch thread per rank, gloo on 127.0.0.1. Rank ``r`` holds
the layers ``planning.partition.uniform`` gives stage ``r`` (the same cut pipewave uses), built by
the job's ``PipelineModel`` (``workers.models.model_for``: the built-in GPT, or ``workers.hf``'s
``TransformersModel``) from the same seed, so every rank starts from bit-identical weights; the
loss is the model's own. ``interleaved-1f1b`` (``ScheduleInterleaved1F1B``): the layers are cut
uniformly into ``CHUNKS * ranks`` chunks (the cut pipewave's ``uniform`` partition gives
``interleaved-1f1b`` with ``chunks: 2``), and rank ``r`` holds chunks ``r, r + ranks, ...``
(torch's looped placement, pipewave's too), one ``PipelineStage`` each (``stage_index`` = the
chunk, ``num_stages`` = all chunks), under one Adam over all its chunks' parameters.

Each step: rank 0 feeds the batch's inputs, the last rank its targets (``pipewave.workers.data.get_batch``,
the same batches pipewave and the single process see), the schedule runs ``n_microbatches``
microbatches, then every rank does one fused Adam step and ``zero_grad``.

Timing: after ``warmup`` steps all ranks meet at a barrier and rank 0 starts the clock; after the
measured steps they meet again and rank 0 stops it. Samples/s = steps * batch_size / that window.

Run by ``benchmarks/engine.py`` (config ``torch:gpipe:2``, ``torch:1f1b:4``,
``torch:interleaved-1f1b:2``, ...); standalone:
``python benchmarks/torch_pipelining.py --schedule 1f1b --ranks 2 --steps 4 --warmup 1``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
CHUNKS = 2  # interleaved-1f1b: stages (model chunks) per rank


def _rank_main(rank: int, world: int, port: int, schedule: str, steps: int, warmup: int,
               spec_file: str, out_dir: str) -> None:
    """One rank: build this stage, run warmup + steps schedule steps, write its figures."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    from pipewave.service.planning.partition import uniform
    from pipewave.service.spec import load_spec
    from pipewave.workers.data import get_batch, load_corpus
    from pipewave.workers.models import model_for

    torch.set_num_threads(1)
    timeout = timedelta(seconds=300)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)  # run()'s store
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        spec = load_spec(spec_file)
        model, M, B = model_for(spec.model_settings), spec.num_microbatches, spec.batch_size
        loss_fn = model.loss
        V = CHUNKS if schedule == "interleaved-1f1b" else 1
        N = V * world  # pipeline stages (chunks) in all; rank r holds r, r + world, ... (looped)
        cuts = uniform(model.num_layers(), N)
        mine = [rank + c * world for c in range(V)]
        modules = [nn.Sequential(*model.build_layers(spec.seed, range(*cuts[v]))) for v in mine]
        # the first chunk is on rank 0, the last (N - 1) on rank world - 1 under the looped placement
        first, last = rank == 0, rank == world - 1
        stages: list[Any] = [PipelineStage(m, v, N, torch.device("cpu"))
                             for m, v in zip(modules, mine, strict=True)]
        # scale_grads (default True): the loss is a per-microbatch mean, gradients are divided by
        # M, so a step's gradient is that of the mean loss over the whole batch (as unpipelined).
        pipe: Any
        if V > 1:
            pipe = ScheduleInterleaved1F1B(stages, n_microbatches=M, loss_fn=loss_fn)
        else:
            cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
            pipe = cls(stages[0], n_microbatches=M, loss_fn=loss_fn)
        o = spec.optimizer
        opt = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=o.lr, betas=o.betas,
                               eps=o.eps, weight_decay=o.weight_decay, fused=True)
        corpus = load_corpus(spec.data) if (first or last) else None
        step_losses: list[float] = []
        step_ends: list[float] = []
        t0 = t1 = 0.0
        for step in range(warmup + steps):
            if step == warmup:
                dist.barrier()
                t0 = time.perf_counter()
            if corpus is not None:
                x, y = get_batch(corpus, spec.seed, step, B, spec.seq_len)  # (B, T), (B, T)
            if first and last:
                raise ValueError("torch pipelining baseline needs at least 2 ranks")
            if first:
                pipe.step(x)
            elif last:
                losses: list[Any] = []
                pipe.step(target=y, losses=losses)
                step_losses.append(float(torch.stack([loss.detach() for loss in losses]).mean()))
            else:
                pipe.step()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_ends.append(time.perf_counter())
        dist.barrier()
        t1 = time.perf_counter()
        result: dict[str, Any] = {"rank": rank, "layers": [list(cuts[v]) for v in mine]}
        if first:
            window = t1 - t0
            ends = step_ends[warmup - 1:] if warmup > 0 else [t0, *step_ends]
            result.update(window_s=window, samples_per_s=steps * B / window if window > 0 else 0.0,
                          step_s=[b - a for a, b in itertools.pairwise(ends)])
        if last:
            result["losses"] = step_losses
        Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run(schedule: str, ranks: int, steps: int, warmup: int, spec_file: str | Path = SPEC_FILE
        ) -> dict[str, Any]:
    """Spawn ``ranks`` processes; return samples/s (timed on rank 0) and the per-step losses."""
    if schedule not in SCHEDULES:
        raise ValueError(f"torch baseline schedule must be one of {SCHEDULES}, got {schedule!r}")
    if ranks < 2:
        raise ValueError("torch baseline needs at least 2 ranks")
    if warmup < 1:
        raise ValueError("torch baseline needs at least 1 warm-up step (shape inference, first step)")
    import torch.multiprocessing as mp
    from torch.distributed import TCPStore

    with tempfile.TemporaryDirectory(prefix="pipewave-bench-torch-") as out:
        # the ranks' rendezvous store, held here on a port bound now: a port looked up free and
        # bound only later by rank 0 can be taken meanwhile by another process (Ray's, a test's)
        store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=300))
        port = store.port
        mp.spawn(_rank_main, args=(ranks, port, schedule, steps, warmup, str(spec_file), out),
                 nprocs=ranks, join=True)
        r0 = json.loads(Path(out, "rank-0.json").read_text())
        rl = json.loads(Path(out, f"rank-{ranks - 1}.json").read_text())
        layers = [json.loads(Path(out, f"rank-{r}.json").read_text())["layers"] for r in range(ranks)]
    return {"samples_per_s": r0["samples_per_s"], "window_s": r0["window_s"],
            "step_s": r0["step_s"], "losses": rl["losses"], "final_loss": rl["losses"][-1],
            "layers": layers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedule", choices=SCHEDULES, default="1f1b")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--spec", type=Path, default=SPEC_FILE,
                   help="the workload's job spec (default examples/gpt-small.yaml)")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run(a.schedule, a.ranks, a.steps, a.warmup, a.spec), indent=2))


if __name__ == "__main__":
    main()
