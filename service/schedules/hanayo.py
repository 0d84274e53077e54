"""Hanayo's wave-like pipeline (Liu et al., SC'23): 2W chunks per stage, in W V-shaped waves.

Placement (``placement.waves``): wave k runs virtual stages 2kP .. 2kP + 2P - 1 down the stages
0..P-1 and back up P-1..0, so stage w holds 2kP + w and 2kP + 2P - 1 - w; the turns (stage P-1
between the two halves of a wave, stage 0 between waves) need no transfer.

Order (derived here, see docs/schedules.md): microbatches go in groups of P (the last group takes
the remainder, P + (M mod P); a single group when M < P). Microbatch m, the j-th of its group,
which starts after ``base`` microbatches, ideally runs virtual stage u at slot
T(u, m) = 2W * base + 2j + u: two slots apart within a group (the turn stage runs two chunks per
microbatch), groups 2W slots per microbatch apart (a stage's forwards of one group). Each stage
runs its forwards in the order of T(v, m) and its backwards in the order of T(N-1-v, m) (N = 2WP
virtual stages, so a backward's ideal slot mirrors its forward's), 1F1B after a warm-up of
min(2WP + 2(W-1)s + w, (2W-1)M + 1 + w, 2WM) forwards, s = M mod P.
"""

from __future__ import annotations

from pipewave.service.schedules.chunked import Item, flushed_chunks
from pipewave.service.schedules.schedule import Schedule
from pipewave.workers.placement import waves as wave_placement


def groups(num_stages: int, num_microbatches: int) -> list[int]:
    """Group sizes: P each, the last one P + (M mod P); one group of M when M < P."""
    q, s = divmod(num_microbatches, num_stages)
    if q == 0:
        return [num_microbatches]
    return [num_stages] * (q - 1) + [num_stages + s]


def warmup(num_stages: int, num_microbatches: int, num_waves: int, stage: int) -> int:
    """Forwards stage ``stage`` runs before its first backward:
    min(2WP + 2(W-1)s + w, (2W-1)M + 1 + w, 2WM) with s = M mod P (the first term binds when
    M >= 2P, the second below)."""
    P, M, W, w = num_stages, num_microbatches, num_waves, stage
    s = M % P
    return min(2 * W * P + 2 * (W - 1) * s + w, (2 * W - 1) * M + 1 + w, 2 * W * M)


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1, waves: int = 1) -> Schedule:
    """Step t computes with version t; one update per stage per step after its last backward."""
    P, M, W = num_stages, num_microbatches, waves
    if W < 1:
        raise ValueError(f"waves must be >= 1, got {W}")
    placement = wave_placement(P, W)
    N = placement.num_virtual_stages
    slot: dict[int, int] = {}  # microbatch -> 2W * base + 2j
    base = 0
    for size in groups(P, M):
        for j in range(size):
            slot[base + j] = 2 * W * base + 2 * j
        base += size

    def items(s: int) -> list[Item]:
        return [(c, m) for c in range(2 * W) for m in range(M)]

    def forwards(s: int) -> list[Item]:
        return sorted(items(s), key=lambda x: (slot[x[1]] + placement.virtual(s, x[0]), x[1]))

    def backwards(s: int) -> list[Item]:
        return sorted(items(s), key=lambda x: (slot[x[1]] + N - 1 - placement.virtual(s, x[0]), x[1]))

    return flushed_chunks(
        "hanayo", placement, M, num_steps, forwards, backwards, lambda s: warmup(P, M, W, s)
    )
