"""Chunk placement: which virtual stages (model chunks) each stage worker holds.

A model cut into ``N`` consecutive chunks (virtual stages ``0 .. N-1``) runs on ``P`` workers, each
holding ``N / P`` of them. An action's ``stage`` is its worker and its ``chunk`` the index of the
virtual stage among the worker's own, in increasing virtual-stage order (chunk 0 is the worker's
earliest virtual stage). Schedules without a placement hold one chunk per worker: virtual stage =
worker, chunk 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Placement:
    """``workers[w]``: the virtual stages of worker w's chunks, increasing (chunk c = the c-th)."""

    workers: tuple[tuple[int, ...], ...]
    _where: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.workers or not self.workers[0]:
            raise ValueError("a placement needs at least one worker holding at least one chunk")
        per = len(self.workers[0])
        if any(len(chunks) != per for chunks in self.workers):
            raise ValueError(f"every worker must hold {per} chunks: {self.workers}")
        if any(list(chunks) != sorted(chunks) for chunks in self.workers):
            raise ValueError(f"a worker's chunks must be in increasing virtual-stage order: {self.workers}")
        where = {v: (w, c) for w, chunks in enumerate(self.workers) for c, v in enumerate(chunks)}
        n = len(self.workers) * per
        if sorted(where) != list(range(n)) or len(where) != n:
            raise ValueError(f"virtual stages 0..{n - 1} must each sit on exactly one worker: {self.workers}")
        object.__setattr__(self, "_where", tuple(where[v] for v in range(n)))

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def chunks_per_worker(self) -> int:
        return len(self.workers[0])

    @property
    def num_virtual_stages(self) -> int:
        return len(self._where)

    def virtual(self, worker: int, chunk: int) -> int:
        """The virtual stage that worker ``worker`` runs as its chunk ``chunk``."""
        return self.workers[worker][chunk]

    def locate(self, virtual: int) -> tuple[int, int]:
        """(worker, chunk) of a virtual stage."""
        return self._where[virtual]


def single(num_workers: int) -> Placement:
    """One chunk per worker: worker w is virtual stage w."""
    return Placement(tuple((w,) for w in range(num_workers)))


def looped(num_workers: int, chunks: int) -> Placement:
    """Interleaved (Megatron) placement: worker w holds virtual stages w, w + P, ..., w + (V-1)P."""
    return Placement(tuple(tuple(w + c * num_workers for c in range(chunks)) for w in range(num_workers)))


def waves(num_workers: int, num_waves: int) -> Placement:
    """Hanayo's wave placement: wave k covers virtual stages 2kP .. 2kP + 2P - 1, down the workers
    0..P-1 then back up P-1..0, so worker w holds 2kP + w and 2kP + 2P - 1 - w for each wave k.
    Consecutive virtual stages at the turns (2kP + P - 1 and 2kP + P on worker P - 1; 2kP + 2P - 1
    and 2(k + 1)P on worker 0) sit on the same worker: no transfer between them."""
    P = num_workers
    return Placement(tuple(
        tuple(v for k in range(num_waves) for v in (2 * k * P + w, 2 * k * P + 2 * P - 1 - w))
        for w in range(P)
    ))
