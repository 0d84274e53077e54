"""Stage-to-stage transport: torch.distributed point-to-point between the stage actors.

gloo on CPU (about 0.2 ms a hop here, against about 3 ms for a Ray actor call carrying the same
activation), NCCL when the stages hold GPUs. Receives are posted ahead of need so a transfer
overlaps the compute before it; sends are asynchronous and reaped as they complete.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ACT, GRAD = 0, 1  # message kinds
TAG_SPACE = 1 << 30  # tags wrap: they need only tell apart the messages in flight between two peers


def tag(kind: int, microbatch: int, virtual: int, num_virtual: int) -> int:
    """The tag of the ``kind`` message of ``microbatch`` that virtual stage ``virtual`` consumes
    (its input activation, or the gradient of its output): unique per (microbatch, receiving
    chunk, kind), so two chunks of one worker never confuse messages from the same peer."""
    return (2 * (microbatch * num_virtual + virtual) + kind) % TAG_SPACE


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now (for the process-group rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_group(addr: str, port: int, rank: int, world: int, device: torch.device,
               timeout_s: float = 120.0) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d/%d joined %s group at %s:%d", rank, world, backend, addr, port)


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Mailbox:
    """Ordered point-to-point traffic of one stage for one schedule run.

    ``needs`` lists, in the order the stage will consume them, the (key, tag, peer) of the
    messages it receives (``key``: how the stage asks for the message; ``buffer(key)``: an empty
    tensor of the message's shape and dtype to receive it in); receives are kept posted
    up to ``depth`` messages ahead. ``depth=0`` posts each receive only when it is needed,
    keeping every operation in the schedule's order: NCCL runs point-to-point operations in
    issue order on one stream, so a receive posted early could wait in front of a send its peer
    needs first (gloo runs them independently).

    ``sender_order`` (per peer, the (key, tag) of its messages to this stage in the order it sends
    them): match in the senders' order, as NCCL does (it ignores tags: a message of the same shape
    would be silently swapped). Asking for a message posts the receives of that peer's messages up to it, in
    the peer's order; the earlier ones are kept until asked for. No deadlock comes of it: the
    peer sends those before the one asked for anyway. Needed wherever a stage consumes a peer's
    messages in another order than they were sent (hanayo's waves do).
    """

    def __init__(self, needs: list[tuple[Hashable, int, int]], buffer: Callable[[Hashable], torch.Tensor],
                 depth: int = 2,
                 sender_order: dict[int, list[tuple[Hashable, int]]] | None = None) -> None:
        self.needs = needs
        self.buffer, self.depth = buffer, depth
        self.next_post = 0
        self.posted: deque[tuple[Hashable, Any, torch.Tensor]] = deque()
        self.sends: deque[tuple[Any, torch.Tensor]] = deque()
        self.in_order: dict[int, deque[tuple[Hashable, int]]] | None = None
        self.early: dict[Hashable, tuple[Any, torch.Tensor]] = {}  # posted in the sender's order
        if sender_order is not None:
            self.in_order = {peer: deque(msgs) for peer, msgs in sender_order.items()}
            self.peer_of = {key: peer for key, _, peer in needs}
            sent = sorted((repr(k), p) for p, msgs in sender_order.items() for k, _ in msgs)
            if sent != sorted((repr(k), p) for k, _, p in needs):
                raise RuntimeError("the peers' send orders do not hold the messages this stage expects")

    def _post_ahead(self, at_least: int = 0) -> None:
        while self.next_post < len(self.needs) and len(self.posted) < max(self.depth, at_least):
            key, tag, peer = self.needs[self.next_post]
            buf = self.buffer(key)
            work = dist.irecv(buf, src=peer, tag=tag)
            self.posted.append((key, work, buf))
            self.next_post += 1

    def start(self) -> None:
        if self.in_order is None:
            self._post_ahead()

    def recv(self, key: Hashable) -> torch.Tensor:
        """Wait for the next expected message, which must be ``key``."""
        if self.in_order is not None:
            return self._recv_in_sender_order(key)
        self._post_ahead(at_least=1)
        expected, work, buf = self.posted.popleft()
        if expected != key:
            raise RuntimeError(f"mailbox out of order: expected {expected}, asked for {key}")
        work.wait()
        self._post_ahead()
        return buf

    def _recv_in_sender_order(self, key: Hashable) -> torch.Tensor:
        assert self.in_order is not None
        queue = self.in_order[self.peer_of[key]]
        while key not in self.early:
            if not queue:
                raise RuntimeError(f"mailbox: {key} is not among the messages still to come")
            k, tag = queue.popleft()
            buf = self.buffer(k)
            self.early[k] = (dist.irecv(buf, src=self.peer_of[k], tag=tag), buf)
        work, buf = self.early.pop(key)
        work.wait()
        self.next_post += 1
        return buf

    def send(self, t: torch.Tensor, tag: int, peer: int) -> None:
        t = t.contiguous()
        self.sends.append((dist.isend(t, dst=peer, tag=tag), t))
        while self.sends and self.sends[0][0].is_completed():
            self.sends.popleft()[0].wait()

    def flush(self) -> None:
        """Wait for every send to complete (end of a schedule run)."""
        while self.sends:
            self.sends.popleft()[0].wait()
        if self.posted or self.early or self.next_post < len(self.needs):
            raise RuntimeError("schedule ended with messages still expected")
