"""Interleaved 1F1B (Megatron-LM's virtual pipeline): V chunks per stage, looped placement.

Stage w holds virtual stages w, w + P, ..., w + (V-1)P. Per step, every stage runs its forwards in
groups of P microbatches, chunk by chunk (k-th forward: chunk (k mod PV) div P of microbatch
(k div PV) P + k mod P), its backwards in the same groups with the chunks reversed, and 1F1B after
a warm-up of (V-1)P + 2(P-1-w) + 1 forwards (Megatron's warm-up plus the first steady forward).
This needs the microbatches to be a multiple of P, as Megatron does.
"""

from __future__ import annotations

from pipewave.service.schedules.chunked import Item, flushed_chunks
from pipewave.service.schedules.schedule import Schedule
from pipewave.workers.placement import looped


def generate(num_stages: int, num_microbatches: int, num_steps: int = 1, chunks: int = 2) -> Schedule:
    """Step t computes with version t; one update per stage per step after its last backward."""
    P, M, V = num_stages, num_microbatches, chunks
    if V < 1:
        raise ValueError(f"chunks must be >= 1, got {V}")
    if M % P:
        raise ValueError(
            f"interleaved-1f1b needs the microbatches to be a multiple of the stages"
            f" ({M} microbatches, {P} stages)"
        )

    def forwards(s: int) -> list[Item]:
        return [(c, g + j) for g in range(0, M, P) for c in range(V) for j in range(P)]

    def backwards(s: int) -> list[Item]:
        return [(c, g + j) for g in range(0, M, P) for c in reversed(range(V)) for j in range(P)]

    return flushed_chunks(
        "interleaved-1f1b", looped(P, V), M, num_steps, forwards, backwards,
        lambda s: (V - 1) * P + 2 * (P - 1 - s) + 1,
    )
