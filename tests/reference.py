"""Single-process reference executors for pipewave's training semantics, written for clarity.

Nothing here comes from the runtime's scheduling code (no ``pipewave.service.schedules``,
``pipewave.workers.stage`` or ``pipewave.workers.optim``): only the model zoo and the data, which
define *what* is trained. Each
executor walks the microbatches in order and computes, for each one, the gradient of the
full-model loss where every stage's layers use the weight version the semantics assign to that
stage for that microbatch; the optimizer steps are torch.optim's standard (non-fused)
optimizers, one per stage, on per-stage live parameters whose every state is kept in a version
history (``history[s][k]``: stage s's weights after k of its own updates since training began).

Semantics (microbatch m of a run is row block ``m % M`` of step ``first + m // M``):

- sync (gpipe, 1f1b, interleaved-1f1b, hanayo): one step per global batch on the full-batch mean
  loss (equal to the average of the M microbatch losses); every stage uses version t for step t.
- pipedream: an update per microbatch. Within a run of N microbatches stage s warms up with
  ``w_s = min(S - s, N)`` forwards, so F(m) and B(m) use version ``base + max(0, m - w_s + 1)``
  (base: updates before the run); with vertical sync every stage uses stage 0's
  ``base + max(0, m - S + 1)``. The update after B(m) applies to the stage's latest weights.
- 2bw: per step, microbatch gradients scaled by 1/M are accumulated at version t - 1
  (W(-1) = W(0)) and applied to W(t): W(t+1) = W(t) - lr * update(grad(W(t-1))).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pipewave.workers.data import get_batch, load_corpus, microbatch
from pipewave.workers.models import build_model, model_for, num_layers

ATOL, RTOL = 1e-5, 1e-4  # runtime (fused kernels, microbatches) vs reference (full batch)

Versions = list[tuple[int, int]]  # (microbatch within the run, global version id) in order of m


@dataclass
class Result:
    state: dict[str, Tensor]  # final full state_dict, keys of build_model(cfg, seed)
    step_losses: list[float]  # per step: mean of its microbatch losses (full-batch loss if sync)
    runs: list[list[Versions]] = field(default_factory=list)  # per run, per stage
    peak_versions: list[int] = field(default_factory=list)  # per stage, distinct versions alive


def stage_bounds(layers: int, stages: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) layer ranges of equal count, the first stages take the remainder."""
    base, extra = divmod(layers, stages)
    bounds, start = [], 0
    for s in range(stages):
        end = start + base + (s < extra)
        bounds.append((start, end))
        start = end
    return bounds


def run_lengths(spec: Any) -> list[int]:
    """Steps of each schedule run: runs end at multiples of checkpoint.every_steps."""
    every, total = spec.checkpoint.every_steps, spec.steps
    lengths, done = [], 0
    while done < total:
        end = min(total, (done // every + 1) * every) if every else total
        lengths.append(end - done)
        done = end
    return lengths


def make_optimizer(o: Any, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if o.kind == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps,
                                weight_decay=o.weight_decay)
    if o.kind == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps,
                                 weight_decay=o.weight_decay)
    if o.kind == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    raise ValueError(f"unknown optimizer {o.kind!r}")


class StagedModel:
    """The model cut into stages: per stage its parameter names, live parameters, optimizer and
    version history."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.S, self.M = spec.stages, spec.microbatches
        self.model = build_model(spec.model_settings, spec.seed)
        self.loss_fn = model_for(spec.model_settings).loss  # what is trained: the model's loss
        self.bounds = stage_bounds(num_layers(spec.model_settings), self.S)
        named = dict(self.model.named_parameters())
        assert set(named) == set(self.model.state_dict()), "the models have no buffers"
        self.names = [[n for n in named if lo <= int(n.split(".")[0]) < hi] for lo, hi in self.bounds]
        assert sum(map(len, self.names)) == len(named)
        self.live = [[nn.Parameter(named[n].detach().clone()) for n in names] for names in self.names]
        self.opts = [make_optimizer(spec.optimizer, live) for live in self.live]
        self.history: list[list[tuple[Tensor, ...]]] = [[self._snapshot(s)] for s in range(self.S)]
        self.corpus = load_corpus(spec.data)
        self._batch: tuple[int, Tensor, Tensor] | None = None

    def _snapshot(self, s: int) -> tuple[Tensor, ...]:
        return tuple(p.detach().clone() for p in self.live[s])

    def latest(self, s: int) -> int:
        return len(self.history[s]) - 1

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        if self._batch is None or self._batch[0] != step:
            sp = self.spec
            x, y = get_batch(self.corpus, sp.seed, step, sp.batch_size, sp.seq_len)
            self._batch = (step, x, y)
        return self._batch[1], self._batch[2]

    def microbatch(self, step: int, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch(step)
        return microbatch(x, index, self.M), microbatch(y, index, self.M)

    def loss_and_grads(self, versions: Sequence[int], x: Tensor, y: Tensor,
                       scale: float = 1.0) -> tuple[float, list[list[Tensor]]]:
        """Loss of (x, y) with stage s at version ``versions[s]`` (a negative id means version 0)
        and the per-stage gradients of ``scale * loss``."""
        leaves = [[t.detach().requires_grad_() for t in self.history[s][max(0, v)]]
                  for s, v in enumerate(versions)]
        params = {n: t for s in range(self.S) for n, t in zip(self.names[s], leaves[s], strict=True)}
        loss = self.loss_fn(functional_call(self.model, params, (x,)), y)
        flat = [t for ls in leaves for t in ls]
        grads = torch.autograd.grad(loss, flat, torch.tensor(scale))
        out, i = [], 0
        for ls in leaves:
            out.append(list(grads[i : i + len(ls)]))
            i += len(ls)
        return loss.item(), out

    def update(self, s: int, grads: Sequence[Tensor]) -> None:
        """One optimizer step of stage s on its latest weights; appends the new version."""
        for p, g in zip(self.live[s], grads, strict=True):
            p.grad = g.detach().clone()
        self.opts[s].step()
        self.opts[s].zero_grad(set_to_none=True)
        self.history[s].append(self._snapshot(s))

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.clone() for s in range(self.S)
                for n, t in zip(self.names[s], self.history[s][-1], strict=True)}

    def stage_state(self, s: int) -> dict[str, Tensor]:
        return dict(zip(self.names[s], self.history[s][-1], strict=True))


# ----------------------------------------------------------------------------- executors


def train_sync(spec: Any) -> Result:
    """gpipe / 1f1b: plain full-batch training, one optimizer step per global batch."""
    sm = StagedModel(spec)
    losses: list[float] = []
    runs: list[list[Versions]] = []
    step = 0
    for count in run_lengths(spec):
        runs.append([[(m, step + m // sm.M) for m in range(count * sm.M)] for _ in range(sm.S)])
        for _ in range(count):
            x, y = sm.batch(step)
            loss, grads = sm.loss_and_grads([step] * sm.S, x, y)
            for s in range(sm.S):
                assert sm.latest(s) == step
                sm.update(s, grads[s])
            losses.append(loss)
            step += 1
    return Result(sm.state_dict(), losses, runs, [1] * sm.S)


def train_pipedream(spec: Any, vertical_sync: bool | None = None) -> Result:
    """PipeDream with weight stashing: one update per microbatch on every stage."""
    if vertical_sync is None:
        vertical_sync = spec.vertical_sync
    sm = StagedModel(spec)
    S, M = sm.S, sm.M
    losses: list[float] = []
    runs: list[list[Versions]] = []
    peaks = [1] * S
    first = 0
    for count in run_lengths(spec):
        N = count * M
        base = sm.latest(0)
        warm = [min(S - s, N) for s in range(S)]

        def version(s: int, m: int, base: int = base, warm: list[int] = warm) -> int:
            if vertical_sync:
                return base + max(0, m - S + 1)
            return base + max(0, m - warm[s] + 1)

        used: list[Versions] = [[] for _ in range(S)]
        step_losses: dict[int, list[float]] = {}
        for m in range(N):
            step = first + m // M
            x, y = sm.microbatch(step, m % M)
            vs = [version(s, m) for s in range(S)]
            for s in range(S):
                assert vs[s] <= sm.latest(s), "a forward cannot use a version not made yet"
                used[s].append((m, vs[s]))
            loss, grads = sm.loss_and_grads(vs, x, y)
            step_losses.setdefault(step, []).append(loss)
            for s in range(S):
                sm.update(s, grads[s])
        for s in range(S):
            peak = peak_live_versions(N, warm[s], lambda m, s=s, base=base: version(s, m) - base,
                                      update_after=lambda m: True)
            peaks[s] = max(peaks[s], peak)
        losses += [sum(v) / len(v) for _, v in sorted(step_losses.items())]
        runs.append(used)
        first += count
    return Result(sm.state_dict(), losses, runs, peaks)


def train_2bw(spec: Any) -> Result:
    """PipeDream-2BW: step t accumulates gradients at W(t-1) and applies them to W(t)."""
    sm = StagedModel(spec)
    S, M = sm.S, sm.M
    losses: list[float] = []
    runs: list[list[Versions]] = []
    peaks = [1] * S
    step = 0
    for count in run_lengths(spec):
        N = count * M
        first = step
        used: list[Versions] = [[] for _ in range(S)]
        for _ in range(count):
            vid = step - 1  # -1 at the very start: W(-1) = W(0)
            acc: list[list[Tensor]] | None = None
            mb_losses = []
            for i in range(M):
                m = (step - first) * M + i
                for s in range(S):
                    used[s].append((m, vid))
                x, y = sm.microbatch(step, i)
                loss, grads = sm.loss_and_grads([vid] * S, x, y, scale=1.0 / M)
                mb_losses.append(loss)
                acc = grads if acc is None else [[a + g for a, g in zip(ac, gr, strict=True)]
                                                 for ac, gr in zip(acc, grads, strict=True)]
            assert acc is not None
            for s in range(S):
                assert sm.latest(s) == step
                sm.update(s, acc[s])
            losses.append(sum(mb_losses) / M)
            step += 1
        for s in range(S):
            peak = peak_live_versions(N, min(S - s, M + 1, N), lambda m: m // M - 1,
                                      update_after=lambda m: m % M == M - 1, carry=2)
            peaks[s] = max(peaks[s], peak)
        runs.append(used)
    return Result(sm.state_dict(), losses, runs, peaks)


def train(spec: Any) -> Result:
    """The reference executor for the spec's schedule."""
    if spec.schedule in ("gpipe", "1f1b", "interleaved-1f1b", "hanayo"):
        return train_sync(spec)
    if spec.schedule == "pipedream":
        return train_pipedream(spec, spec.vertical_sync)
    if spec.schedule == "2bw":
        return train_2bw(spec)
    raise ValueError(f"unknown schedule {spec.schedule!r}")


# ----------------------------------------------------------------------------- version counts


def peak_live_versions(n: int, warmup: int, version: Callable[[int], int],
                       update_after: Callable[[int], bool], carry: int = 1) -> int:
    """Most distinct weight versions one stage must hold during a run of ``n`` microbatches done
    in 1F1B order (``warmup`` forwards, then B(j), F(j + warmup) alternately).

    After each action a stage needs: its ``carry`` latest versions, the version of every
    microbatch forwarded but not yet backwarded, and every existing version a later forward will
    use. Version ids are relative to the run's start (0); negative ids are version 0.
    """
    order = [("F", m) for m in range(min(warmup, n))]
    for j in range(n):
        order.append(("B", j))
        if j + warmup < n:
            order.append(("F", j + warmup))
    latest, in_flight, peak = 0, set(), 1
    forwarded: set[int] = set()
    for kind, m in order:
        if kind == "F":
            assert version(m) <= latest
            in_flight.add(m)
            forwarded.add(m)
        else:
            in_flight.discard(m)
            latest += update_after(m)
        live = {max(0, latest - k) for k in range(carry)}
        live |= {max(0, version(j)) for j in in_flight}
        live |= {max(0, version(j)) for j in range(n) if j not in forwarded and version(j) <= latest}
        peak = max(peak, len(live))
    return peak


# ----------------------------------------------------------------------------- comparison


def versions_by_microbatch(report, chunks: int = 1) -> dict[int, int]:
    """microbatch -> version id from a stage's versions_used; every F and B of a microbatch (one
    of each per chunk the stage holds) must agree."""
    seen: dict[int, set[int]] = {}
    for _, m, v in report.versions_used:
        seen.setdefault(m, set()).add(v)
    count = {m: sum(1 for _, mm, _ in report.versions_used if mm == m) for m in seen}
    assert set(count.values()) == {2 * chunks}, "one F and one B per microbatch and chunk"
    assert all(len(vs) == 1 for vs in seen.values()), \
        f"stage {report.stage}: a backward used another version than its forward"
    return {m: next(iter(vs)) for m, vs in seen.items()}


def key_bias_bound(spec, updates: int) -> float:
    """How far Adam may move an attention key bias whose true gradient is exactly zero.

    Adding a constant vector to every key adds q.b to each row of attention scores, which the
    softmax cancels: d loss / d (key bias) is 0, and what autograd returns is rounding noise
    (about 1e-11 here). Adam divides by sqrt(v) + eps, so that noise moves the key bias by up to
    lr * |g| / (|g| + eps) per update, in a direction that depends on the summation order
    (microbatches vs the full batch): about 1e-5 after 5 steps at lr 1e-2, eps 1e-8, which the
    elementwise tolerance would call a mismatch although nothing was trained. We bound it by
    noise below 1e-10 (eps / 100) instead: updates * lr * 1e-2 from the initial value.
    (SGD moves it by lr * noise, far inside the elementwise tolerance: no special case.)
    """
    return updates * spec.optimizer.lr * 1e-2


def key_bias_part(spec, name: str, numel: int) -> slice | None:
    """The key part of an attention bias (see ``key_bias_bound``): the middle third of a fused
    q, k, v bias (gpt's and GPT-2's ``c_attn``), all of a separate key projection's bias
    (Qwen2's ``k_proj``); None for any other parameter, or where the optimizer is SGD."""
    if spec is None or spec.optimizer.kind == "sgd":
        return None
    if name.endswith("attn.c_attn.bias"):
        return slice(numel // 3, 2 * numel // 3)
    if name.endswith("k_proj.bias"):
        return slice(0, numel)
    return None


def assert_state_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                       spec=None, updates: int = 0, atol: float = ATOL,
                       rtol: float = RTOL) -> None:
    """Elementwise allclose on every parameter; with ``spec`` (an Adam/AdamW job), the key part
    of each attention bias is instead checked, in both states, to stay within
    ``key_bias_bound`` of its initial value (see there)."""
    assert sorted(actual) == sorted(expected)
    init = build_model(spec.model_settings, spec.seed).state_dict() if spec is not None else {}
    bad = []
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        key = key_bias_part(spec, name, want.numel())
        if key is not None:
            bound = key_bias_bound(spec, updates)
            for w in (got, want):
                moved = (w[key] - init[name][key]).abs().max().item()
                if moved > bound:
                    bad.append(f"{name}[{key.start}:{key.stop}] (key bias) moved {moved:.3g} > {bound:.3g}")
            keep = torch.ones(want.numel(), dtype=torch.bool)
            keep[key] = False
            got, want = got[keep], want[keep]
        if not torch.allclose(got, want, atol=atol, rtol=rtol):
            err = (got - want).abs()
            n_bad = int((err > atol + rtol * want.abs()).sum())
            bad.append(f"{name}: max |diff| {err.max().item():.3g} "
                       f"({n_bad} of {want.numel()} elements)")
    assert not bad, "weights differ from the reference:\n" + "\n".join(bad)
