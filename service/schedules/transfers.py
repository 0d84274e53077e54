"""The transfers a schedule makes between stage workers, in the order each side issues them.

gloo matches a receive to its send by tag, so any order works; NCCL matches the operations
between two ranks in issue order (tags are ignored) and every message has the same shape, so a
receiver that posted its receives in the order it consumes the messages would, where a peer sent
them in another order, read one message as another, silently. ``order_mismatches`` finds such
pairs: the one-chunk schedules have none, hanayo's waves have some (tests/unit/test_transfers.py).
So on GPUs (and with ``ControllerOptions.match_in_send_order``) the controller hands each stage
its peers' ``transfer_orders`` sends, and the stage's mailbox posts its receives in that order,
holding a message that arrives before it is needed (``sender_order`` in pipewave.workers.comm).
"""

from __future__ import annotations

from pipewave.service.schedules.schedule import Schedule
from pipewave.workers.actions import Kind

Message = tuple[str, int, int]  # (kind "act" | "grad", microbatch, receiving virtual stage)


def _virtual(schedule: Schedule, stage: int, chunk: int) -> int:
    p = schedule.placement
    return stage if p is None else p.virtual(stage, chunk)


def _worker(schedule: Schedule, virtual: int) -> int:
    p = schedule.placement
    return virtual if p is None else p.locate(virtual)[0]


def transfer_orders(schedule: Schedule) -> tuple[dict[tuple[int, int], list[Message]],
                                                 dict[tuple[int, int], list[Message]]]:
    """(sends, receives): per (source, destination) worker pair, the messages in the order the
    source issues its sends and in the order the destination consumes them."""
    n = schedule.num_stages
    last = n * schedule.chunks_per_stage - 1
    sends: dict[tuple[int, int], list[Message]] = {}
    recvs: dict[tuple[int, int], list[Message]] = {}
    for s in range(n):
        for a in schedule.stage_actions(s):
            v = _virtual(schedule, s, a.chunk)
            fwd = a.kind is Kind.F
            out, inp = (v + 1, v - 1) if fwd else (v - 1, v + 1)
            kind = "act" if fwd else "grad"
            if 0 <= out <= last and _worker(schedule, out) != s:
                sends.setdefault((s, _worker(schedule, out)), []).append((kind, a.microbatch, out))
            if 0 <= inp <= last and _worker(schedule, inp) != s:
                recvs.setdefault((_worker(schedule, inp), s), []).append((kind, a.microbatch, v))
    return sends, recvs


def order_mismatches(schedule: Schedule) -> list[str]:
    """One line per worker pair whose receiver consumes messages in another order than the
    sender sends them (empty: in-order matching, as NCCL does, is correct)."""
    sends, recvs = transfer_orders(schedule)
    out = []
    for pair in sorted(sends.keys() | recvs.keys()):
        a, b = sends.get(pair, []), recvs.get(pair, [])
        if a != b:
            i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            out.append(f"stage {pair[0]} -> {pair[1]}: message {i} sent as {a[i] if i < len(a) else None}, "
                       f"received as {b[i] if i < len(b) else None}")
    return out
