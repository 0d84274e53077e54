"""A pipeline schedule as a unit-cost step x stage grid, and placement of per-stage orders on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipewave.workers.actions import Action, Key
from pipewave.workers.placement import Placement


class ScheduleError(ValueError):
    """An invalid or deadlocking schedule; the message ends with the (partial) grid."""

    def __init__(self, message: str, grid: str) -> None:
        super().__init__(f"{message}\n{grid}")
        self.grid = grid


def render_grid(grid: dict[int, list[Action | None]], show_chunks: bool = False) -> str:
    """One row per stage (``stage 0 | 0F0 0F1 ...``), columns aligned, ``.`` for an idle slot;
    with ``show_chunks`` every action names its chunk (``0F0c0``)."""
    cells = {
        s: [a.label(show_chunks or None) if a is not None else "." for a in row]
        for s, row in grid.items()
    }
    width = max((len(c) for row in cells.values() for c in row), default=1)
    slots = max((len(row) for row in cells.values()), default=0)
    label = max((len(f"stage {s}") for s in cells), default=0)
    lines = []
    for s in sorted(cells):
        row = cells[s] + ["."] * (slots - len(cells[s]))
        line = f"{f'stage {s}'.ljust(label)} | " + " ".join(c.ljust(width) for c in row)
        lines.append(line.rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Schedule:
    """Per-stage unit-cost time slots of a pipeline schedule spanning ``num_steps`` global batches.

    Microbatch m belongs to step m // num_microbatches. ``carry_versions``: how many of the latest
    weight versions a stage must still hold when the schedule ends (2 for 2BW). ``placement``:
    the virtual stages (model chunks) each stage holds; None means one each (stage s = virtual
    stage s). A grid slot is one unit whatever the chunk.
    """

    name: str
    num_stages: int
    num_microbatches: int
    num_steps: int
    grid: dict[int, list[Action | None]]
    carry_versions: int = 1
    vertical_sync: bool = False
    placement: Placement | None = None

    @property
    def chunks_per_stage(self) -> int:
        return 1 if self.placement is None else self.placement.chunks_per_worker

    @property
    def num_virtual_stages(self) -> int:
        return self.num_stages * self.chunks_per_stage

    def stage_actions(self, stage: int) -> list[Action]:
        """The stage's actions in execution order (idle slots dropped)."""
        return [a for a in self.grid[stage] if a is not None]

    def dependencies(self, action: Action) -> list[Key]:
        """Keys of the actions ``action`` consumes, under this schedule's placement."""
        return action.dependencies(self.num_stages, self.placement)

    def label(self, action: Action) -> str:
        """The action as the grid shows it: with its chunk when stages hold several."""
        return action.label(self.chunks_per_stage > 1 or None)

    def render(self) -> str:
        return render_grid(self.grid, self.chunks_per_stage > 1)


def place(
    name: str,
    num_stages: int,
    num_microbatches: int,
    num_steps: int,
    orders: dict[int, list[Action]],
    **kw: Any,
) -> Schedule:
    """Lay per-stage action orders onto the unit-cost grid.

    Slot by slot, every stage runs its next action if all its dependencies finished in an earlier
    slot, and idles otherwise. Raises ScheduleError (with the partial grid) on deadlock.
    ``placement`` (in ``kw``) gives the chunks' virtual stages, as in ``Schedule``.
    """
    if set(orders) != set(range(num_stages)):
        raise ValueError(f"orders must have stages 0..{num_stages - 1}, got {sorted(orders)}")
    placement: Placement | None = kw.get("placement")
    show_chunks = placement is not None and placement.chunks_per_worker > 1
    grid: dict[int, list[Action | None]] = {s: [] for s in range(num_stages)}
    done: dict[Key, int] = {}
    pos = dict.fromkeys(range(num_stages), 0)
    remaining = sum(len(order) for order in orders.values())
    slot = 0
    while remaining:
        ran: list[Action] = []
        for s in range(num_stages):
            action = orders[s][pos[s]] if pos[s] < len(orders[s]) else None
            if action is not None and all(
                done.get(d, slot) < slot for d in action.dependencies(num_stages, placement)
            ):
                ran.append(action)
                pos[s] += 1
                grid[s].append(action)
            else:
                grid[s].append(None)
        if not ran:
            for row in grid.values():
                row.pop()
            waiting = ", ".join(
                f"stage {s} waits at {orders[s][pos[s]].label(show_chunks or None)}"
                for s in range(num_stages)
                if pos[s] < len(orders[s])
            )
            raise ScheduleError(
                f"{name}: deadlock at slot {slot}: {waiting}", render_grid(grid, show_chunks)
            )
        for action in ran:
            done[action.key] = slot
        remaining -= len(ran)
        slot += 1
    return Schedule(name, num_stages, num_microbatches, num_steps, grid, **kw)
