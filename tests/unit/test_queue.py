"""The queue policy: FIFO, and a later job passes the head only if it cannot delay it."""

from __future__ import annotations

import itertools
import random

from pipewave.api.queue import Holding, Waiting, decide


def test_empty_queue_starts_nothing() -> None:
    assert decide([], 4, []).start is None


def test_head_starts_when_it_fits_and_may_take_every_free_slot() -> None:
    d = decide([Waiting("a", 2), Waiting("b", 1)], 3, [])
    assert d.start is not None and d.start.job_id == "a" and d.start.max_slots == 3
    assert "behind a" in d.waiting_reason["b"]


def test_small_job_waits_when_it_would_delay_the_head() -> None:
    # head needs 4; 2 free; the running 2-slot job ends in 10 s -> 4 free then, 0 spare
    d = decide([Waiting("big", 4), Waiting("small", 1)], 2, [Holding("r", 2, 10.0)])
    assert d.start is None
    assert "would delay big" in d.waiting_reason["small"]
    assert "in about 10 s" in d.waiting_reason["big"]


def test_small_job_passes_within_the_spare_slots() -> None:
    # head needs 3; 2 free + 2 from r at t=10 -> 4, 1 spare: a 1-slot job may pass (capped at 1)
    d = decide([Waiting("big", 3), Waiting("small", 1)], 2, [Holding("r", 2, 10.0)])
    assert d.start is not None and (d.start.job_id, d.start.max_slots) == ("small", 1)


def test_unknown_end_times_block_passing_and_a_head_bigger_than_the_cluster_blocks_nobody() -> None:
    d = decide([Waiting("big", 3), Waiting("small", 1)], 1, [Holding("r", 2, None)])
    assert d.start is None and "unknown length" in d.waiting_reason["big"]
    d = decide([Waiting("huge", 9), Waiting("small", 1)], 1, [Holding("r", 2, 5.0)])
    assert d.start is not None and d.start.job_id == "small"
    assert "bigger cluster" in d.waiting_reason["huge"]


def test_passing_never_delays_the_head_on_random_instances() -> None:
    """Simulate: if the policy starts a passer, the head still fits at its shadow time even if
    the passer runs forever."""
    rng = random.Random(0)
    for _ in range(2000):
        total = rng.randint(1, 8)
        running, used = [], 0
        for i in itertools.count():
            s = rng.randint(1, 3)
            if used + s > total or rng.random() < 0.3:
                break
            running.append(Holding(f"r{i}", s, rng.choice([None, rng.uniform(1, 100)])))
            used += s
        free = total - used
        queue = [Waiting(f"q{i}", rng.randint(1, total)) for i in range(rng.randint(1, 4))]
        d = decide(queue, free, running)
        if d.start is None or d.start.job_id == queue[0].job_id:
            continue
        assert queue[0].need > free  # passing happens only when the head is blocked
        known = sorted((h for h in running if h.eta_s is not None), key=lambda h: h.eta_s or 0)
        avail = free - d.start.max_slots
        fits_without = free >= queue[0].need or any(
            free + sum(h.slots for h in known[:k + 1]) >= queue[0].need for k in range(len(known)))
        if fits_without:  # the head would have fit at some point: it must still fit then
            assert any(avail + sum(h.slots for h in known[:k + 1]) >= queue[0].need
                       for k in range(len(known)))
