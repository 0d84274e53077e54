"""A pipeline stage: a contiguous slice of the model, its optimizer and its weight versions.

The controller wraps ``StageWorker`` as a Ray actor (one per stage). Each schedule run executes
the stage's action list on its own: activations and gradients go straight to the neighbouring
stages over torch.distributed point-to-point; the controller only starts runs and observes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call

from pipewave.workers import comm
from pipewave.workers.actions import Action, Kind
from pipewave.workers.config import StageConfig
from pipewave.workers.contract import PipelineModel
from pipewave.workers.data import get_batch, load_corpus, microbatch
from pipewave.workers.models import model_for
from pipewave.workers.optim import OutOfPlaceOptimizer, Version
from pipewave.workers.state import (
    Chunks,
    describe,
    hull,
    keep_freed_memory,
    merge_payloads,
    save_stage_file,
)
from pipewave.workers.tree import Layout, Tree, differentiable, leaves

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One schedule run of one stage: ``actions`` from the generator, steps from ``first_step``."""

    actions: list[Action]
    first_step: int
    grad_scale: float  # multiplies the loss: 1/M when an update averages M microbatches
    carry_versions: int  # latest versions to keep when the run ends
    # per source stage, its messages to this stage (kind "act" | "grad", microbatch, receiving
    # virtual stage) in the order it sends them: given, receives match in that order (NCCL)
    inbound: dict[int, list[tuple[str, int, int]]] | None = None


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
    matching: str = "tag"  # how receives matched their sends: "tag" | "send order" (NCCL's)


@dataclass
class Progress:
    step: int = 0  # steps fully finished on this stage
    loss: float | None = None


class StageWorker:
    """Stage ``stage`` of ``num_stages``: one model chunk per entry of ``chunks`` ([start, end)
    layer ranges, in chunk order; the config's placement says which virtual stage each is).
    ``config``: the job as its stages see it (the service builds it from the job spec)."""

    def __init__(self, config: StageConfig, stage: int, num_stages: int,
                 chunks: Sequence[tuple[int, int]], threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        keep_freed_memory()
        self.device = _pick_device()
        self.corpus: torch.Tensor | None = None
        self.replicas: dict[tuple[int, int], dict[str, Any]] = {}  # (stage, step) -> payload
        self._build(config, stage, num_stages, chunks)

    def _build(self, config: StageConfig, stage: int, num_stages: int,
               chunks: Sequence[tuple[int, int]]) -> None:
        """Hold ``chunks`` as stage ``stage`` of ``num_stages`` (fresh weights)."""
        if config.num_stages != num_stages or not 0 <= stage < num_stages:
            raise ValueError(f"stage {stage} of {num_stages}: the stage config places "
                             f"{config.schedule} on {config.num_stages} stages")
        self.config = config
        self.stage, self.num_stages = stage, num_stages
        self.placement = config.placement
        self.num_virtual = self.placement.num_virtual_stages
        self.virtual = list(self.placement.workers[stage])  # chunk -> virtual stage
        self.chunks: Chunks = tuple((int(a), int(b)) for a, b in chunks)
        self.model = model_for(config.model)
        n = self.model.num_layers()
        if len(self.chunks) != len(self.virtual):
            raise ValueError(f"stage {stage} of {num_stages} under {config.schedule} holds "
                             f"{len(self.virtual)} chunks, given {len(self.chunks)}")
        for v, (a, b) in zip(self.virtual, self.chunks, strict=True):
            if not (0 <= a < b <= n) or (v == 0 and a != 0) or (v == self.num_virtual - 1 and b != n):
                raise ValueError(f"stage {stage} of {num_stages} cannot hold layers [{a}, {b}) as "
                                 f"virtual stage {v} of {self.num_virtual} of a {n}-layer model")
        self.first = 0 in self.virtual  # holds the first virtual stage: makes inputs from data
        self.last = self.num_virtual - 1 in self.virtual  # holds the last: computes the loss
        self.modules: list[nn.Module] = []
        self.names: list[str] = []  # every parameter's global name, chunk after chunk
        self.param_slices: list[slice] = []  # chunk -> its parameters' positions in a version
        for a, b in self.chunks:
            layers = self.model.build_layers(config.seed, range(a, b))
            module = nn.Sequential(
                OrderedDict((str(i), layer) for i, layer in zip(range(a, b), layers, strict=True))
            ).to(self.device)
            names = [name for name, _ in module.named_parameters()]
            if config.init_from is not None:
                _initialise(module, names, self.model, Path(config.init_from))
            self.param_slices.append(slice(len(self.names), len(self.names) + len(names)))
            self.modules.append(module)
            self.names += names
        v0: Version = tuple(p.detach().requires_grad_() for m in self.modules for p in m.parameters())
        self.versions: dict[int, Version] = {0: v0, -1: v0}  # -1: "before the start" (2BW)
        self.latest = 0
        o = config.optimizer
        self.opt = OutOfPlaceOptimizer(o.kind, v0, lr=o.lr, betas=o.betas, eps=o.eps,
                                       weight_decay=o.weight_decay, momentum=o.momentum)
        if (self.first or self.last) and self.corpus is None:
            self.corpus = load_corpus(config.data)
        self._batch: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.progress = Progress()
        # what crosses each chunk's edges: its input (layer a-1's output) and its output
        bounds = self.model.boundaries(config.microbatch_size)
        self.inputs = [Layout.of(bounds[a - 1]) if a > 0 else None for a, _ in self.chunks]
        self.outputs = [Layout.of(bounds[b - 1]) for _, b in self.chunks]

    # -- control ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        import ray

        return {"stage": self.stage, "pid": os.getpid(), "device": str(self.device),
                "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "layers": hull(self.chunks),
                "chunks": [list(c) for c in self.chunks],
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
            "format": "pipewave-stage/2",
            "stage": self.stage,
            "layers": list(hull(self.chunks)),
            "chunks": [list(c) for c in self.chunks],
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
        self._apply(merge_payloads(payloads, self.chunks), f"checkpoint files {paths}")

    def import_state(self, refs: list[Any]) -> int:
        """Take this stage's layers from other stages' exported payloads (object refs, pulled
        from their nodes' object stores); returns the bytes received."""
        import ray

        payloads = ray.get(refs)
        self._apply(merge_payloads(payloads, self.chunks), "the previous stages")
        return sum(t.numel() * t.element_size() for p in payloads for t in p["model"].values())

    def reconfigure(self, config: StageConfig, stage: int, num_stages: int,
                    chunks: Sequence[tuple[int, int]], refs: list[Any]) -> int:
        """Become stage ``stage`` of ``num_stages`` holding ``chunks``, taking their state from
        the exported payloads ``refs`` (this actor's own among them); the caller connects the
        new stage group afterwards. Returns the bytes received."""
        comm.close_group()
        self._build(config, stage, num_stages, chunks)
        return self.import_state(refs)

    def _apply(self, merged: dict[str, Any], source: str) -> None:
        self.latest = int(merged["latest_version"])
        missing = [n for n in self.names if n not in merged["model"]]
        if missing:
            raise ValueError(f"{source} lack parameters {missing[:3]} of layers "
                             f"{describe(self.chunks)}")

        def version(d: dict[str, torch.Tensor]) -> Version:
            return tuple(d[n].to(self.device).requires_grad_() for n in self.names)

        self.versions = {self.latest: version(merged["model"])}
        for off, d in merged["older_versions"].items():
            if any(n not in d for n in self.names):
                raise ValueError(f"{source} hold weight version {off:+d} for only some of layers "
                                 f"{describe(self.chunks)}")
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
            x, y = get_batch(self.corpus, self.config.seed, step, self.config.batch_size,
                             self.config.model.seq_len)
            self._batch = (step, x, y)
        _, x, y = self._batch
        m = self.config.num_microbatches
        return microbatch(x, mb, m).to(self.device), microbatch(y, mb, m).to(self.device)

    # -- one schedule run ----------------------------------------------------------------------
    def _neighbour(self, virtual: int) -> tuple[int, int]:
        """(worker, chunk) of a virtual stage; the worker is this one at a wave's turn."""
        return self.placement.locate(virtual)

    def _needs(self, actions: list[Action]) -> list[tuple[Any, int, int]]:
        """The messages the run receives from other workers, in the order it consumes them:
        (key, tag, peer); a neighbouring chunk on this worker hands its tensor over locally."""
        N, needs = self.num_virtual, []
        for a in actions:
            v = self.virtual[a.chunk]
            kind, other = (comm.ACT, v - 1) if a.kind is Kind.F else (comm.GRAD, v + 1)
            if 0 <= other < N and self._neighbour(other)[0] != self.stage:
                needs.append(((kind, a.microbatch, a.chunk), comm.tag(kind, a.microbatch, v, N),
                              self._neighbour(other)[0]))
        return needs

    def run(self, run: Run) -> RunReport:
        """Execute this stage's actions; returns timings, losses and the versions used."""
        s, M, N = self.stage, self.config.num_microbatches, self.num_virtual
        # work seconds: a one-thread CPU stage's CPU time (what sharing a core does not inflate);
        # wall time where CPU time would count idle threads (several threads) or miss a GPU's
        cpu_clock = (time.thread_time if torch.get_num_threads() == 1 and self.device.type == "cpu"
                     else time.perf_counter)
        base = self.latest  # action.version v means global version base + v
        report = RunReport(stage=s)
        order: dict[int, list[tuple[Hashable, int]]] | None = None
        if run.inbound is not None:  # (the key and tag of each message, in its sender's order)
            kinds = {"act": comm.ACT, "grad": comm.GRAD}
            order = {peer: [((kinds[k], mb, self.placement.locate(v)[1]), comm.tag(kinds[k], mb, v, N))
                            for k, mb, v in msgs] for peer, msgs in run.inbound.items()}
        box = comm.Mailbox(self._needs(run.actions), self._buffer,
                           depth=0 if self.device.type == "cuda" else 2, sender_order=order)
        report.matching = "tag" if order is None else "send order"
        local: dict[tuple[int, int, int], list[torch.Tensor]] = {}  # (kind, mb, chunk) -> leaves
        last_use = {base + a.version: i for i, a in enumerate(run.actions)}
        last_of_step = {run.first_step + a.microbatch // M: i for i, a in enumerate(run.actions)}
        # (mb, chunk) -> (input leaves that take gradients, output leaves that give them, version)
        stash: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], int]] = {}
        acc: list[torch.Tensor | None] = [None] * len(self.names)  # gradients since the update
        step_losses: dict[int, list[float]] = {}

        def receive(kind: int, mb: int, c: int) -> list[torch.Tensor]:
            got = local.pop((kind, mb, c), None)
            return self._layout(kind, c).unpack(box.recv((kind, mb, c))) if got is None else got

        def hand_on(flat: list[torch.Tensor], kind: int, mb: int, virtual: int) -> None:
            worker, chunk = self._neighbour(virtual)
            if worker == s:
                local[kind, mb, chunk] = flat
            else:  # (packed by the layout the receiver unpacks with: the same boundary's)
                layout = self._layout(kind, chunk, worker)
                box.send(layout.pack(flat), comm.tag(kind, mb, virtual, N), worker)

        box.start()
        for i, a in enumerate(run.actions):
            mb, c, step = a.microbatch, a.chunk, run.first_step + a.microbatch // M
            v, module, own = self.virtual[c], self.modules[c], self.param_slices[c]
            if a.kind is Kind.F:
                # ---- forward: input from the data (first virtual stage) or the previous one
                x: Tree
                if v == 0:  # (making the input from the data is work: busy)
                    t0, c0 = time.time(), cpu_clock()
                    x, _ = self._data(step, mb % M)
                    xin: list[torch.Tensor] = []
                else:  # (waiting for the previous stage is not)
                    flat = [t.detach().requires_grad_(differentiable(t))
                            for t in receive(comm.ACT, mb, c)]
                    layout = self.inputs[c]
                    assert layout is not None
                    x, xin = layout.tree(flat), [t for t in flat if t.requires_grad]
                    t0, c0 = time.time(), cpu_clock()
                vid = base + a.version
                params = self.versions[vid][own]
                out = functional_call(module, dict(zip(self.names[own], params, strict=True)), (x,))
                if v == N - 1:
                    loss_t = self.model.loss(out, self._data(step, mb % M)[1])
                    report.losses[mb] = loss = loss_t.item()
                    step_losses.setdefault(step, []).append(loss)
                    outs = [loss_t]
                else:
                    produced = leaves(out)
                    hand_on([t.detach() for t in produced], comm.ACT, mb, v + 1)
                    outs = [t for t in produced if differentiable(t)]
                stash[mb, c] = (xin, outs, vid)
                report.peak_activations = max(report.peak_activations, len(stash))
            else:
                # ---- backward: gradient from the loss (last virtual stage) or the next one
                xin, outs, vid = stash.pop((mb, c))
                # (the loss is seeded with the loss scale: 1/M when M microbatches make a step)
                grad_out = [torch.full_like(outs[0], run.grad_scale)] if v == N - 1 \
                    else receive(comm.GRAD, mb, c)
                t0, c0 = time.time(), cpu_clock()
                params = self.versions[vid][own]
                live = [(o, g) for o, g in zip(outs, grad_out, strict=True) if o.requires_grad]
                inputs = [*xin, *params]
                grads = _zeros_for_unused(torch.autograd.grad(
                    [o for o, _ in live], inputs, [g for _, g in live], allow_unused=True), inputs)
                if v > 0:
                    hand_on(grads[:len(xin)], comm.GRAD, mb, v - 1)
                for k, g in zip(range(own.start, own.stop), grads[len(xin):], strict=True):
                    prev = acc[k]
                    acc[k] = g if prev is None else prev.add_(g)
                del xin, outs, grads, live
                if a.update:
                    # ---- optimizer step over all chunks: a new immutable version
                    self._update(run, i, acc, stash, last_use, report)
                    acc = [None] * len(self.names)
            report.versions_used.append((a.kind.value, mb, vid))
            # ---- release versions no later action of this run needs
            for old in [u for u in self.versions if u < self.latest and last_use.get(u, -1) <= i
                        and u < self.latest - run.carry_versions + 1]:
                del self.versions[old]
            report.peak_versions = max(report.peak_versions, len(self._live_versions()))
            t1 = time.time()
            report.busy_s += t1 - t0
            report.cpu_s.append(cpu_clock() - c0)  # (what the work costs, whatever else runs)
            report.spans.append((a, t0, t1))
            if i == last_of_step[step]:
                self._finish_step(step, step_losses)
        box.flush()
        if any(g is not None for g in acc):
            raise RuntimeError(f"stage {s}: run ended with gradients not applied")
        if local:
            raise RuntimeError(f"stage {s}: run ended with hand-overs unused: {sorted(local)[:3]}")
        return report

    def _layout(self, kind: int, chunk: int, worker: int | None = None) -> Layout:
        """The wire layout of a ``kind`` message that ``chunk`` of ``worker`` (this one if None)
        consumes: its input activation, or the gradients of its output."""
        if worker is not None and worker != self.stage:  # a peer's chunk: its boundary is ours
            v = self.placement.workers[worker][chunk]
            mine = self.virtual.index(v - 1 if kind == comm.ACT else v + 1)
            return self.outputs[mine] if kind == comm.ACT else _input_grads(self.inputs[mine])
        if kind == comm.ACT:
            layout = self.inputs[chunk]
            assert layout is not None, "the first virtual stage receives no activations"
            return layout
        return self.outputs[chunk].grads()

    def _buffer(self, key: Hashable) -> torch.Tensor:
        kind, _, chunk = cast(tuple[int, int, int], key)
        return self._layout(kind, chunk).buffer(self.device)

    def _update(self, run: Run, i: int, acc: list[torch.Tensor | None],
                stash: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor], int]],
                last_use: dict[int, int], report: RunReport) -> None:
        """One optimizer step after action ``i``: the latest version + the accumulated
        gradients of every chunk make the next version; stashed versions stay intact."""
        missing = [self.names[k] for k, g in enumerate(acc) if g is None]
        if missing:
            raise RuntimeError(f"stage {self.stage}: an update without gradients for {missing[:3]}")
        tu = time.time()
        cur = self.versions[self.latest]
        alone = (run.carry_versions == 1 and last_use.get(self.latest, -1) <= i
                 and all(v != self.latest for _, _, v in stash.values())
                 and sum(t is cur for t in self.versions.values()) == 1)
        self.versions[self.latest + 1] = self.opt.step(cur, [g for g in acc if g is not None],
                                                       in_place=alone)
        if alone:
            del self.versions[self.latest]
        self.latest += 1
        report.update_s += time.time() - tu

    def _live_versions(self) -> set[int]:
        return {id(v) for v in self.versions.values()}

    def _finish_step(self, step: int, step_losses: dict[int, list[float]]) -> None:
        losses = step_losses.pop(step, None)
        loss = sum(losses) / len(losses) if losses else None
        self.progress = Progress(step=step + 1, loss=loss)


def _initialise(module: nn.Module, names: list[str], model: PipelineModel, source: Path) -> None:
    """Copy the weights of ``names`` (global names) from ``source``: a checkpoint folder (the
    stage files holding them) or an exported model folder (``PipelineModel.read_export``)."""
    if (source / "manifest.json").is_file():
        import json

        tensors: dict[str, torch.Tensor] = {}
        wanted = set(names)
        for entry in json.loads((source / "manifest.json").read_text())["stages"]:
            payload = torch.load(source / entry["file"], map_location="cpu", weights_only=True)
            tensors.update({k: v for k, v in payload["model"].items() if k in wanted})
    else:
        tensors = model.read_export(source, names)
    params = dict(module.named_parameters())
    for name in names:
        t = tensors.get(name)
        if t is None or tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(f"init_from {source}: no tensor of shape "
                             f"{tuple(params[name].shape)} for parameter {name}")
        with torch.no_grad():
            params[name].copy_(t)


def _input_grads(layout: Layout | None) -> Layout:
    assert layout is not None, "the first virtual stage sends no gradients"
    return layout.grads()


def _zeros_for_unused(grads: Sequence[torch.Tensor | None],
                      inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients, with zeros where an input did not reach the outputs (an unused leaf)."""
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]


def _pick_device() -> torch.device:
    """The GPU Ray assigned to this actor, if any; the CPU otherwise (CUDA is never required)."""
    import ray

    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")
