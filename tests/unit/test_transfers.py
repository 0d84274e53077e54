"""Transfer orders between stage workers (pure): what NCCL's in-order matching requires."""

from __future__ import annotations

from collections import Counter

import pytest

from pipewave.service.schedules import make_schedule
from pipewave.service.schedules.transfers import order_mismatches, transfer_orders

CASES = [("1f1b", {}), ("gpipe", {}), ("pipedream", {}), ("2bw", {}), ("pipedream",
         {"vertical_sync": True}), ("interleaved-1f1b", {"chunks": 2}),
         ("interleaved-1f1b", {"chunks": 3}), ("hanayo", {"waves": 1}), ("hanayo", {"waves": 2})]


@pytest.mark.parametrize(("name", "kw"), CASES)
@pytest.mark.parametrize("P", [2, 3, 4])
def test_every_message_sent_is_received_once(name, kw, P) -> None:
    for M in (P, 2 * P):
        sched = make_schedule(name, P, M, 2, **kw)
        sends, recvs = transfer_orders(sched)
        assert sends.keys() == recvs.keys()
        for pair in sends:
            assert Counter(sends[pair]) == Counter(recvs[pair])
            assert len(set(sends[pair])) == len(sends[pair])  # (the mailbox keys are unique)
            assert all(pair[0] != pair[1] for pair in sends)  # a turn of the wave is no transfer


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "pipedream", "2bw"])
def test_one_chunk_schedules_receive_in_send_order(name) -> None:
    for P in range(2, 6):
        assert order_mismatches(make_schedule(name, P, 2 * P, 2)) == []


def test_hanayo_receives_out_of_send_order() -> None:
    """Why the engine matches in the senders' order on NCCL: a hanayo stage takes a later
    forward's activation before an earlier backward's gradient from the same peer."""
    lines = order_mismatches(make_schedule("hanayo", 2, 4, 1))
    assert lines[0] == "stage 0 -> 1: message 4 sent as ('grad', 1, 2), received as ('act', 3, 1)"
