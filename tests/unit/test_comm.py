"""workers/comm.py: tags, free ports, and the Mailbox's posting and matching rules, first against
a recording stand-in for torch.distributed, then between two gloo processes on loopback."""

from __future__ import annotations

import socket
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from pipewave.workers import comm
from pipewave.workers.comm import ACT, GRAD, TAG_SPACE, Mailbox, free_port, tag

CPU = torch.device("cpu")


def test_tags_tell_apart_kind_microbatch_and_receiving_chunk() -> None:
    assert tag(ACT, 0, 0, 4) == 0 and tag(GRAD, 0, 0, 4) == 1
    assert tag(ACT, 0, 3, 4) == 6 and tag(ACT, 1, 0, 4) == 8 and tag(GRAD, 2, 1, 4) == 19
    tags = [tag(k, m, v, 3) for m in range(50) for v in range(3) for k in (ACT, GRAD)]
    assert sorted(tags) == list(range(300))  # one tag per (microbatch, chunk, kind), no gaps
    assert tag(ACT, TAG_SPACE // 2, 0, 1) == 0  # tags wrap within TAG_SPACE
    assert 0 <= tag(GRAD, 10**12, 5, 7) < TAG_SPACE


def test_free_port_can_be_bound() -> None:
    port = free_port("127.0.0.1")
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))


# ----------------------------------------------------------------------------- posting rules


class _Work:
    def __init__(self, done: bool = True) -> None:
        self.done, self.waited = done, False

    def is_completed(self) -> bool:
        return self.done

    def wait(self) -> None:
        self.waited = True


class _Dist:
    """Records irecv / isend as (tag, peer), in issue order."""

    def __init__(self) -> None:
        self.recvs: list[tuple[int, int]] = []
        self.sends: list[tuple[int, int, _Work]] = []
        self.send_done = True

    def irecv(self, buf: torch.Tensor, src: int, tag: int) -> _Work:
        buf.fill_(float(tag))  # what "arrives": the tag, to check which buffer is returned
        self.recvs.append((tag, src))
        return _Work()

    def isend(self, t: torch.Tensor, dst: int, tag: int) -> _Work:
        work = _Work(self.send_done)
        self.sends.append((tag, dst, work))
        return work


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _Dist:
    d = _Dist()
    monkeypatch.setattr(comm.dist, "irecv", d.irecv)
    monkeypatch.setattr(comm.dist, "isend", d.isend)
    return d


NEEDS: list[tuple[Hashable, int, int]] = [(("F", 0), 10, 0), (("F", 1), 11, 0), (("B", 0), 20, 2),
                                          (("F", 2), 12, 0)]


def box(needs: list[tuple[Hashable, int, int]] = NEEDS, **kw: Any) -> Mailbox:
    return Mailbox(needs, lambda _: torch.empty(2), **kw)


def test_receives_are_posted_depth_ahead_in_the_consumers_order(fake: _Dist) -> None:
    mb = box(depth=2)
    mb.start()
    assert fake.recvs == [(10, 0), (11, 0)]
    assert mb.recv(("F", 0)).tolist() == [10.0, 10.0]
    assert fake.recvs == [(10, 0), (11, 0), (20, 2)]  # one more posted as one is taken
    mb.recv(("F", 1))
    mb.recv(("B", 0))
    assert mb.recv(("F", 2)).tolist() == [12.0, 12.0] and len(fake.recvs) == 4
    mb.flush()


def test_depth_zero_posts_each_receive_when_it_is_needed(fake: _Dist) -> None:
    mb = box(depth=0)
    mb.start()
    assert fake.recvs == []
    mb.recv(("F", 0))
    assert fake.recvs == [(10, 0)]
    mb.recv(("F", 1))
    assert fake.recvs == [(10, 0), (11, 0)]


def test_asking_out_of_the_expected_order_is_an_error(fake: _Dist) -> None:
    mb = box()
    mb.start()
    with pytest.raises(RuntimeError,
                       match=r"^mailbox out of order: expected \('F', 0\), asked for \('F', 1\)$"):
        mb.recv(("F", 1))


def test_flush_waits_for_sends_and_refuses_messages_still_expected(fake: _Dist) -> None:
    mb = box(needs=[])
    fake.send_done = False
    mb.send(torch.zeros(2), 5, 1)
    mb.send(torch.zeros(2), 6, 1)
    assert len(mb.sends) == 2  # neither completed: both kept
    fake.send_done = True
    mb.send(torch.zeros(2), 7, 1)  # completed, but behind the two: reaped in order only
    assert len(mb.sends) == 3
    mb.flush()
    assert not mb.sends and all(w.waited for _, _, w in fake.sends)
    assert [(t, p) for t, p, _ in fake.sends] == [(5, 1), (6, 1), (7, 1)]
    unread = box(depth=1)
    unread.start()
    unread.recv(("F", 0))
    with pytest.raises(RuntimeError, match=r"^schedule ended with messages still expected$"):
        unread.flush()


def test_completed_sends_are_reaped_from_the_front(fake: _Dist) -> None:
    mb = box(needs=[])
    mb.send(torch.zeros(2), 5, 1)
    mb.send(torch.zeros(3), 6, 1)
    assert not mb.sends and all(w.waited for _, _, w in fake.sends)


# The peer (rank 0) sends F0, F1, F2 in this order; this stage needs F1 before F0 (hanayo's
# waves consume out of the send order). Rank 2 sends B0.
ORDER: dict[int, list[tuple[Hashable, int]]] = {0: [(("F", 0), 10), (("F", 1), 11), (("F", 2), 12)],
                                                2: [(("B", 0), 20)]}
SWAPPED: list[tuple[Hashable, int, int]] = [(("F", 1), 11, 0), (("F", 0), 10, 0), (("B", 0), 20, 2),
                                            (("F", 2), 12, 0)]


def test_sender_order_posts_each_peers_receives_in_its_send_order(fake: _Dist) -> None:
    mb = box(needs=SWAPPED, sender_order=ORDER)
    mb.start()
    assert fake.recvs == []  # nothing ahead of need
    assert mb.recv(("F", 1)).tolist() == [11.0, 11.0]
    assert fake.recvs == [(10, 0), (11, 0)]  # F0 first, as the peer sends it; kept for later
    assert mb.recv(("F", 0)).tolist() == [10.0, 10.0]
    assert len(fake.recvs) == 2  # already posted
    mb.recv(("B", 0))
    assert fake.recvs[2:] == [(20, 2)]
    mb.recv(("F", 2))
    assert fake.recvs[3:] == [(12, 0)]
    mb.flush()
    with pytest.raises(RuntimeError, match=r"^mailbox: \('F', 2\) is not among the messages still to come$"):
        mb.recv(("F", 2))


def test_sender_order_must_hold_exactly_the_messages_needed(fake: _Dist) -> None:
    missing = {0: ORDER[0][:2], 2: ORDER[2]}
    with pytest.raises(RuntimeError, match=r"^the peers' send orders do not hold the messages this stage"):
        box(needs=SWAPPED, sender_order=missing)
    wrong_peer = {0: ORDER[0] + ORDER[2]}
    with pytest.raises(RuntimeError, match="send orders do not hold"):
        box(needs=SWAPPED, sender_order=wrong_peer)


def test_flush_in_sender_order_refuses_a_kept_message(fake: _Dist) -> None:
    mb = box(needs=SWAPPED, sender_order=ORDER)
    mb.recv(("F", 1))
    mb.recv(("B", 0))
    mb.recv(("F", 2))  # F0 was received early and never asked for
    with pytest.raises(RuntimeError, match="still expected"):
        mb.flush()


# ----------------------------------------------------------------------------- two processes


def _peer(rank: int, port: int, out: str) -> None:
    """Rank 0 sends F0, F1, F2 (tensor value = microbatch) and receives their gradients (tag
    matching, 2 ahead); rank 1 takes F1 before F0 in send-order matching and sends gradients."""
    comm.init_group("127.0.0.1", port, rank, 2, CPU, timeout_s=60)
    try:
        got: list[float] = []
        if rank == 0:
            mb = Mailbox([(("B", m), tag(GRAD, m, 0, 2), 1) for m in range(3)], lambda _: torch.empty(4))
            mb.start()
            for m in range(3):
                mb.send(torch.full((4,), float(m)), tag(ACT, m, 1, 2), 1)
            got = [float(mb.recv(("B", m))[0]) for m in range(3)]
        else:
            order = {0: [(("F", m), tag(ACT, m, 1, 2)) for m in range(3)]}
            needs: list[tuple[Hashable, int, int]] = [(("F", m), tag(ACT, m, 1, 2), 0) for m in (1, 0, 2)]
            mb = Mailbox(needs, lambda _: torch.empty(4), sender_order=order)
            mb.start()
            for m in (1, 0, 2):
                x = mb.recv(("F", m))
                got.append(float(x.sum()))
                mb.send(x * 10 + 1, tag(GRAD, m, 0, 2), 0)
        mb.flush()
        Path(out, f"rank{rank}").write_text(" ".join(map(str, got)))
    finally:
        comm.close_group()


def test_two_gloo_processes_exchange_in_and_out_of_send_order(tmp_path: Path) -> None:
    ctx = mp.start_processes(_peer, args=(free_port("127.0.0.1"), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    try:
        while not ctx.join(timeout=120):
            pass
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    # rank 1 got microbatches 1, 0, 2 (4 elements each); rank 0 their gradients, by tag
    assert (tmp_path / "rank1").read_text() == "4.0 0.0 8.0"
    assert (tmp_path / "rank0").read_text() == "1.0 11.0 21.0"
