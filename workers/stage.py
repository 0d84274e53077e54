"""A pipeline stage: a contiguous slice of the model, its optimizer and its weight versions.

The controller wraps ``StageWorker`` as a Ray actor (one per stage). Each schedule run executes
the stage's action list on its own: activations and gradients go straight to the neighbouring
stages over torch.distributed point-to-point; the controller only starts runs and observes.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from service.schedules import Action, Kind
from service.spec import JobSpec
from workers import comm
from workers.data import get_batch, load_corpus, microbatch
from workers.models import build_layers, loss_fn, num_layers
from workers.optim import OutOfPlaceOptimizer, Version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One schedule run of one stage: ``actions`` from the generator, steps from ``first_step``."""

    actions: list[Action]
    first_step: int
    grad_scale: float  # multiplies the loss: 1/M when an update averages M microbatches
    carry_versions: int  # latest versions to keep when the run ends


@dataclass
class RunReport:
    stage: int
    losses: dict[int, float] = field(default_factory=dict)  # microbatch -> loss (last stage)
    spans: list[tuple[Action, float, float]] = field(default_factory=list)  # (action, start, end)
    versions_used: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, mb, version)
    peak_versions: int = 0
    peak_activations: int = 0
    busy_s: float = 0.0  # wall seconds computing (the spans' total)
    cpu_s: list[float] = field(default_factory=list)  # per span: its work seconds (see run)
    update_s: float = 0.0  # time in optimizer steps (inside the backward spans)


@dataclass
class Progress:
    step: int = 0  # steps fully finished on this stage
    loss: float | None = None


class StageWorker:
    def __init__(self, spec_json: str, stage: int, num_stages: int, start: int, end: int,
                 threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        keep_freed_memory()
        self.device = _pick_device()
        self.corpus: torch.Tensor | None = None
        self.replicas: dict[tuple[int, int], dict[str, Any]] = {}  # (stage, step) -> payload
        self._build(spec_json, stage, num_stages, start, end)

    def _build(self, spec_json: str, stage: int, num_stages: int, start: int, end: int) -> None:
        """Hold layers [start, end) as stage ``stage`` of ``num_stages`` (fresh weights)."""
        self.spec = JobSpec.model_validate_json(spec_json)
        self.stage, self.num_stages = stage, num_stages
        self.first, self.last = stage == 0, stage == num_stages - 1
        n = num_layers(self.spec.model)
        if not (0 <= start < end <= n) or (self.first and start != 0) or (self.last and end != n):
            raise ValueError(f"stage {stage} of {num_stages} cannot hold layers [{start}, {end}) "
                             f"of a {n}-layer model")
        self.layer_range = (start, end)
        layers = build_layers(self.spec.model, self.spec.seed, range(start, end))
        self.module = nn.Sequential(
            OrderedDict((str(i), layer) for i, layer in zip(range(start, end), layers, strict=True))
        ).to(self.device)
        self.names = [n for n, _ in self.module.named_parameters()]
        v0: Version = tuple(p.detach().requires_grad_() for p in self.module.parameters())
        self.versions: dict[int, Version] = {0: v0, -1: v0}  # -1: "before the start" (2BW)
        self.latest = 0
        o = self.spec.optimizer
        self.opt = OutOfPlaceOptimizer(o.kind, v0, lr=o.lr, betas=o.betas, eps=o.eps,
                                       weight_decay=o.weight_decay, momentum=o.momentum)
        if (self.first or self.last) and self.corpus is None:
            self.corpus = load_corpus(self.spec.data)
        self._batch: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.progress = Progress()
        self.act_shape = (self.spec.microbatch_size, self.spec.model.seq_len, self.spec.model.d_model)

    # -- control ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import ray

        return {"stage": self.stage, "pid": os.getpid(), "device": str(self.device),
                "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "layers": self.layer_range,
                "params": sum(p.numel() for p in self.versions[self.latest])}

    def rendezvous_port(self) -> int:
        import ray

        return comm.free_port(ray.util.get_node_ip_address())

    def init_comm(self, addr: str, port: int) -> None:
        comm.init_group(addr, port, self.stage, self.num_stages, self.device)

    def get_progress(self) -> Progress:
        return self.progress

    def shutdown(self) -> None:
        comm.close_group()

    # -- state: checkpoints and live moves ----------------------------------------------------
    def state_payload(self) -> dict[str, Any]:
        """This stage's state on the CPU: the latest weights (a plain state_dict slice), the
        older versions the schedule still needs (2BW's previous weights), optimizer state."""
        def cpu(v: Version) -> dict[str, torch.Tensor]:
            return {n: t.detach().cpu() for n, t in zip(self.names, v, strict=True)}

        older = {v - self.latest: cpu(t) for v, t in self.versions.items()
                 if v < self.latest and v >= 0}
        return {
            "format": "pipewave-stage/1",
            "stage": self.stage,
            "layers": list(self.layer_range),
            "latest_version": self.latest,
            "model": cpu(self.versions[self.latest]),
            "older_versions": older,
            "optimizer": self.opt.state_dict(self.names),
        }

    def save(self, path: str) -> dict[str, Any]:
        p = Path(path)
        save_stage_file(p, self.state_payload())
        return {"stage": self.stage, "file": p.name, "bytes": p.stat().st_size}

    def hold_replica(self, stage: int, step: int, refs: list[Any]) -> int:
        """Keep a copy of stage ``stage``'s exported state at ``step`` in this process (pulled
        from that stage's node): if its node dies, the job restarts from here. Returns bytes."""
        import ray

        (payload,) = ray.get(refs)
        self.replicas[stage, step] = payload
        for old in sorted(k for k in self.replicas if k[0] == stage)[:-2]:
            del self.replicas[old]  # keep the two latest: the newer may be incomplete elsewhere
        return sum(t.numel() * t.element_size() for t in payload["model"].values())

    def has_replica(self, stage: int, step: int) -> bool:
        return (stage, step) in self.replicas

    def replica(self, stage: int, step: int) -> dict[str, Any]:
        """The held copy of ``stage``'s state at ``step`` (into this node's object store)."""
        return self.replicas[stage, step]

    def export_state(self) -> dict[str, Any]:
        """The payload, returned into this node's object store: a new stage pulls it directly
        (``import_state``), never through the driver."""
        return self.state_payload()

    def load(self, paths: list[str]) -> None:
        """Load this stage's layers from stage files of a checkpoint, whatever partition wrote
        them: every key is a global layer index, so the files covering our layers are merged."""
        payloads = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
        self._apply(merge_payloads(payloads, self.layer_range), f"checkpoint files {paths}")

    def import_state(self, refs: list[Any]) -> int:
        """Take this stage's layers from other stages' exported payloads (object refs, pulled
        from their nodes' object stores); returns the bytes received."""
        import ray

        payloads = ray.get(refs)
        self._apply(merge_payloads(payloads, self.layer_range), "the previous stages")
        return sum(t.numel() * t.element_size() for p in payloads for t in p["model"].values())

    def reconfigure(self, spec_json: str, stage: int, num_stages: int, start: int, end: int,
                    refs: list[Any]) -> int:
        """Become stage ``stage`` of ``num_stages`` holding layers [start, end), taking their
        state from the exported payloads ``refs`` (this actor's own among them); the caller
        connects the new stage group afterwards. Returns the bytes received."""
        comm.close_group()
        self._build(spec_json, stage, num_stages, start, end)
        return self.import_state(refs)

    def _apply(self, merged: dict[str, Any], source: str) -> None:
        self.latest = int(merged["latest_version"])
        missing = [n for n in self.names if n not in merged["model"]]
        if missing:
            raise ValueError(f"{source} lack parameters {missing[:3]} of layers {self.layer_range}")

        def version(d: dict[str, torch.Tensor]) -> Version:
            return tuple(d[n].to(self.device).requires_grad_() for n in self.names)

        self.versions = {self.latest: version(merged["model"])}
        for off, d in merged["older_versions"].items():
            if any(n not in d for n in self.names):
                raise ValueError(f"{source} hold weight version {off:+d} for only some of layers "
                                 f"{self.layer_range}")
            self.versions[self.latest + int(off)] = version(d)
        self.opt.load_state_dict(merged["optimizer"], self.names, self.device)

    def state_digest(self) -> dict[str, str]:
        """A digest per tensor of the state (weights, older versions, optimizer state), keyed by
        what it is and the parameter's global name: equal dicts, bitwise equal state."""
        p = self.state_payload()
        flat: dict[str, Any] = {f"model/{n}": t for n, t in p["model"].items()}
        for off, d in p["older_versions"].items():
            flat.update({f"version{off:+d}/{n}": t for n, t in d.items()})
        for k, v in p["optimizer"].items():
            if isinstance(v, dict):
                flat.update({f"optimizer.{k}/{n}": t for n, t in v.items()})
        out = {"latest_version": str(self.latest)}
        for key, t in flat.items():
            if isinstance(t, torch.Tensor):
                blob = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                out[key] = f"{t.dtype}:{tuple(t.shape)}:{hashlib.sha256(blob).hexdigest()}"
            else:
                out[key] = repr(t)
        return out

    # -- data --------------------------------------------------------------------------------
    def _data(self, step: int, mb: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch is None or self._batch[0] != step:
            assert self.corpus is not None
            x, y = get_batch(self.corpus, self.spec.seed, step, self.spec.batch_size,
                             self.spec.model.seq_len)
            self._batch = (step, x, y)
        _, x, y = self._batch
        m = self.spec.num_microbatches
        return microbatch(x, mb, m).to(self.device), microbatch(y, mb, m).to(self.device)

    # -- one schedule run ----------------------------------------------------------------------
    def run(self, run: Run) -> RunReport:
        """Execute this stage's actions; returns timings, losses and the versions used."""
        s, M = self.stage, self.spec.num_microbatches
        # work seconds: a one-thread CPU stage's CPU time (what sharing a core does not inflate);
        # wall time where CPU time would count idle threads (several threads) or miss a GPU's
        cpu_clock = (time.thread_time if torch.get_num_threads() == 1 and self.device.type == "cpu"
                     else time.perf_counter)
        base = self.latest  # action.version v means global version base + v
        report = RunReport(stage=s)
        needs = []
        for a in run.actions:
            if a.kind is Kind.F and not self.first:
                needs.append((comm.ACT, a.microbatch, s - 1))
            elif a.kind is Kind.B and not self.last:
                needs.append((comm.GRAD, a.microbatch, s + 1))
        box = comm.Mailbox(needs, self.act_shape, torch.float32, self.device,
                           depth=0 if self.device.type == "cuda" else 2)
        last_use = {base + a.version: i for i, a in enumerate(run.actions)}
        last_of_step = {run.first_step + a.microbatch // M: i for i, a in enumerate(run.actions)}
        stash: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # mb -> (input, output, version)
        acc: list[torch.Tensor] | None = None
        step_losses: dict[int, list[float]] = {}
        box.start()
        for i, a in enumerate(run.actions):
            mb, step = a.microbatch, run.first_step + a.microbatch // M
            if a.kind is Kind.F:
                # ---- forward: input from the data (first stage) or the previous stage
                if self.first:  # (making the input from the data is work: busy)
                    t0, c0 = time.time(), cpu_clock()
                    x, _ = self._data(step, mb % M)
                else:  # (waiting for the previous stage is not)
                    x = box.recv(comm.ACT, mb).requires_grad_()
                    t0, c0 = time.time(), cpu_clock()
                vid = base + a.version
                params = self.versions[vid]
                out = functional_call(self.module, dict(zip(self.names, params, strict=True)), (x,))
                if self.last:
                    out = loss_fn(out, self._data(step, mb % M)[1])
                    report.losses[mb] = loss = out.item()
                    step_losses.setdefault(step, []).append(loss)
                else:
                    box.send(out.detach(), comm.ACT, mb, s + 1)
                stash[mb] = (x, out, vid)
                report.peak_activations = max(report.peak_activations, len(stash))
            else:
                # ---- backward: gradient from the loss (last stage) or the next stage
                x, out, vid = stash.pop(mb)
                # (the last stage seeds with the loss scale: 1/M when M microbatches make a step)
                grad_out = torch.full_like(out, run.grad_scale) if self.last else box.recv(comm.GRAD, mb)
                t0, c0 = time.time(), cpu_clock()
                params = self.versions[vid]
                inputs = list(params) if self.first else [x, *params]
                grads = torch.autograd.grad(out, inputs, grad_out)
                if not self.first:
                    box.send(grads[0], comm.GRAD, mb, s - 1)
                    grads = grads[1:]
                acc = list(grads) if acc is None else [g0.add_(g) for g0, g in zip(acc, grads, strict=True)]
                del x, out, grads
                if a.update:
                    # ---- optimizer step: a new immutable version; stashed ones stay intact
                    tu = time.time()
                    cur = self.versions[self.latest]
                    alone = (run.carry_versions == 1 and last_use.get(self.latest, -1) <= i
                             and all(v != self.latest for _, _, v in stash.values())
                             and sum(t is cur for t in self.versions.values()) == 1)
                    self.versions[self.latest + 1] = self.opt.step(cur, acc, in_place=alone)
                    if alone:
                        del self.versions[self.latest]
                    self.latest += 1
                    acc = None
                    report.update_s += time.time() - tu
            report.versions_used.append((a.kind.value, mb, vid))
            # ---- release versions no later action of this run needs
            for v in [v for v in self.versions if v < self.latest and last_use.get(v, -1) <= i
                      and v < self.latest - run.carry_versions + 1]:
                del self.versions[v]
            report.peak_versions = max(report.peak_versions, len(self._live_versions()))
            t1 = time.time()
            report.busy_s += t1 - t0
            report.cpu_s.append(cpu_clock() - c0)  # (what the work costs, whatever else runs)
            report.spans.append((a, t0, t1))
            if i == last_of_step[step]:
                self._finish_step(step, step_losses)
        box.flush()
        if acc is not None:
            raise RuntimeError(f"stage {s}: run ended with gradients not applied")
        return report

    def _live_versions(self) -> set[int]:
        return {id(v) for v in self.versions.values()}

    def _finish_step(self, step: int, step_losses: dict[int, list[float]]) -> None:
        losses = step_losses.pop(step, None)
        loss = sum(losses) / len(losses) if losses else None
        self.progress = Progress(step=step + 1, loss=loss)


def keep_freed_memory() -> None:
    """Keep freed heap memory in the process instead of returning it to the OS (glibc only).

    Every microbatch allocates and frees the same large tensors (activations, gradients, a new
    weight version); with glibc's defaults, blocks this large are mmap'ed and unmapped each time,
    so every reuse page-faults its memory back in. Measured here: a 5-layer GPT stage's
    forward + backward is about 3.5% faster with the heap kept.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: serve blocks up to 32 MiB from the heap
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: return heap memory only past 1 GiB free
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        logger.debug("mallopt unavailable", exc_info=True)


def _pick_device() -> torch.device:
    """The GPU Ray assigned to this actor, if any; the CPU otherwise (CUDA is never required)."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def merge_payloads(payloads: list[dict[str, Any]], layers: tuple[int, int]) -> dict[str, Any]:
    """The union of the stage payloads that hold any of ``layers`` [start, end): model, older
    versions and optimizer state, each a dict keyed by parameter name. They must agree on the
    version (taken when every stage has applied the same updates: a drained pipeline)."""
    start, end = layers
    merged: dict[str, Any] = {"model": {}, "older_versions": {}, "optimizer": {}}
    latest: int | None = None
    for state in payloads:
        a, b = state["layers"]
        if b <= start or a >= end:
            continue
        if latest is not None and int(state["latest_version"]) != latest:
            raise ValueError(f"stage {state['stage']} is at weight version "
                             f"{state['latest_version']}, other stages at {latest}")
        latest = int(state["latest_version"])
        merged["model"].update(state["model"])
        for off, d in state["older_versions"].items():
            merged["older_versions"].setdefault(int(off), {}).update(d)
        for k, v in state["optimizer"].items():
            if isinstance(v, dict):
                merged["optimizer"].setdefault(k, {}).update(v)
            else:
                merged["optimizer"][k] = v
    if latest is None:
        raise ValueError(f"no stage state holds layers {start}..{end - 1}")
    merged["latest_version"] = latest
    return merged


def save_stage_file(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
