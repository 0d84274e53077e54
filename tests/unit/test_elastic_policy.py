"""The elastic policy's pure parts: the watcher's confirmation streak and which nodes are usable."""

from __future__ import annotations

from pipewave.service.control.elastic import NodeState, Watcher, usable_nodes


def test_watcher_needs_consecutive_observations() -> None:
    a, ab = frozenset({"a"}), frozenset({"a", "b"})
    w = Watcher(a, confirm=3)
    assert w.feed(ab) is None and w.feed(ab) is None and w.feed(ab) == ab
    assert w.current == ab and w.feed(ab) is None  # no change any more
    # a flapping node never counts: the streak restarts whenever the view changes
    seen = [w.feed(v) for v in (a, ab, a, ab, a, a)]
    assert seen == [None, None, None, None, None, None]
    assert w.feed(a) == a


def test_usable_nodes_skip_dead_draining_and_cpu_less() -> None:
    view = {"h": NodeState("h", True, False, 0.0), "d": NodeState("d", True, True, 1.0),
            "x": NodeState("x", False, False, 0.0), "w": NodeState("w", True, False, 2.0)}
    assert usable_nodes(view, 1.0) == {"w"}
    assert usable_nodes(view, 4.0) == set()
