"""The planners' cost model: what a contiguous range of layers costs a stage. Pure, no Ray, no torch.

One model for both partitioners (``partition.plan``: one range per stage; ``chunk_partition``:
one range per chunk of a stage worker):

- compute: the layers' measured forward + backward time / the slot's speed.
- send: each range is charged for its own sends, its output forward and the gradient of its
  input backward, ``latency + bytes / bandwidth`` each, not overlapped.
- memory: parameters x (weight versions + optimizer state + a gradient) + activation bytes x the
  microbatches held for the backward, versions and activations at the schedule's simulated peak
  (a ``Peak`` per stage worker).
- ``limited_by``: "memory" if the range cannot take a neighbouring layer within its budget, else
  "send" or "compute", whichever dominates its time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from pipewave.service.schedules import make_schedule, simulate

# optimizer state per parameter, in multiples of the parameter bytes
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd_momentum": 1, "momentum": 1, "sgd": 0}


@dataclass(frozen=True)
class LayerCost:
    """One layer, measured at the job's microbatch shape on a reference node.

    ``forward_fixed_s`` / ``backward_fixed_s``: the part of the times that does not shrink with
    a smaller microbatch (kernel launches, Python and autograd overhead); the rest scales with
    the microbatch size (see ``planner``)."""

    forward_s: float
    backward_s: float
    param_bytes: int
    activation_bytes: int  # kept for the backward, per in-flight microbatch
    output_bytes: int  # its output: what goes to the next stage if cut after it
    forward_fixed_s: float = 0.0
    backward_fixed_s: float = 0.0


@dataclass(frozen=True)
class Link:
    bandwidth_bytes_s: float = 1e9
    latency_s: float = 2e-4


@dataclass(frozen=True)
class Peak:
    """What a stage worker holds at its schedule's peak: weight versions, and activations in
    microbatches (for several chunks: of the worker's share, so possibly fractional)."""

    versions: int
    activations: float


def fmt_bytes(n: float) -> str:
    """``1.5 GiB``, ``300 MiB``, ``512 B``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def check_optimizer(optimizer: str) -> None:
    """ValueError naming the choices when ``optimizer`` has no ``OPTIMIZER_STATE`` entry."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATE)}")


@lru_cache(maxsize=256)
def stage_peaks(schedule: str, num_stages: int, microbatches: int) -> tuple[Peak, ...]:
    """Per stage, the steady-state peak of a schedule with one chunk per stage (simulated for
    enough steps that the asynchronous ones are past their warmup)."""
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    steps = 2 + -(-(2 * num_stages + 2) // microbatches)
    result = simulate(make_schedule(schedule, num_stages, microbatches, steps))
    return tuple(Peak(v, a) for a, v in zip(result.peak_activations, result.peak_versions, strict=True))


@lru_cache(maxsize=256)
def chunked_peaks(schedule: str, num_stages: int, microbatches: int, chunks: int | None,
                  waves: int | None) -> tuple[Peak, ...]:
    """Per stage worker, the peak of a schedule with several chunks per worker, simulated for one
    step (these schedules flush every step)."""
    sched = make_schedule(schedule, num_stages, microbatches, 1, chunks=chunks, waves=waves)
    result = simulate(sched)
    return tuple(Peak(v, a) for a, v in zip(result.peak_activation_memory, result.peak_versions,
                                            strict=True))


class CostModel:
    """Prefix sums over the layers: O(1) compute, send and memory of a range [a, b)."""

    def __init__(self, layers: Sequence[LayerCost], optimizer: str, link: Link = Link()) -> None:
        check_optimizer(optimizer)
        if any(min(vars(layer).values()) < 0 for layer in layers):
            raise ValueError("layer costs must be >= 0")
        self.n, self.link, self.state = len(layers), link, OPTIMIZER_STATE[optimizer]
        self.work, self.params, self.acts = [0.0], [0], [0]
        for layer in layers:
            self.work.append(self.work[-1] + layer.forward_s + layer.backward_s)
            self.params.append(self.params[-1] + layer.param_bytes)
            self.acts.append(self.acts[-1] + layer.activation_bytes)
        self.out = [layer.output_bytes for layer in layers]
        self._fits: dict[tuple[Peak, int], list[int]] = {}

    def compute(self, a: int, b: int, speed: float = 1.0) -> float:
        """Forward + backward seconds of layers [a, b) on a slot of ``speed``."""
        return (self.work[b] - self.work[a]) / speed

    def hop(self, nbytes: int) -> float:
        """One transfer of ``nbytes`` over the link."""
        return self.link.latency_s + nbytes / self.link.bandwidth_bytes_s

    def send(self, a: int, b: int, to_next: bool = True, to_previous: bool = True) -> float:
        """What [a, b) sends: its output forward (unless it ends the model or ``to_next`` is
        false: the next range is on the same worker) and its input's gradient backward (likewise)."""
        fwd = self.hop(self.out[b - 1]) if to_next and b < self.n else 0.0
        bwd = self.hop(self.out[a - 1]) if to_previous and a > 0 else 0.0
        return fwd + bwd

    def memory(self, a: int, b: int, peak: Peak) -> float:
        """Bytes layers [a, b) hold at ``peak`` (an int when ``peak.activations`` is one)."""
        per_param = peak.versions + self.state + 1
        acts = self.acts[b] - self.acts[a]
        return (self.params[b] - self.params[a]) * per_param + acts * peak.activations

    def fits(self, peak: Peak, budget: int | None) -> list[int]:
        """Per start a, the largest end b such that [a, b) fits ``budget`` at ``peak``."""
        if budget is None:
            return [self.n] * (self.n + 1)
        if (peak, budget) not in self._fits:
            cum = [self.memory(0, b, peak) for b in range(self.n + 1)]
            self._fits[peak, budget] = [
                max(a, bisect_right(cum, cum[a] + budget) - 1) for a in range(self.n + 1)
            ]
        return self._fits[peak, budget]

    def limited_by(self, a: int, b: int, peak: Peak, budget: float | None, compute_s: float,
                   send_s: float) -> str:
        """"memory" if [a, b) grown by either neighbouring layer exceeds ``budget``, else "send"
        or "compute", whichever is larger."""
        grown = [(a - 1, b)] * (a > 0) + [(a, b + 1)] * (b < self.n)
        tight = budget is not None and bool(grown) and all(self.memory(x, y, peak) > budget
                                                           for x, y in grown)
        return "memory" if tight else "send" if send_s > compute_s else "compute"
