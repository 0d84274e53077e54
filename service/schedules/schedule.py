"""A pipeline schedule as a unit-cost step x stage grid, and placement of per-stage orders on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.schedules.action import Action, Kind


class ScheduleError(ValueError):
    """An invalid or deadlocking schedule; the message ends with the (partial) grid."""

    def __init__(self, message: str, grid: str) -> None:
        super().__init__(f"{message}\n{grid}")
        self.grid = grid


def render_grid(grid: dict[int, list[Action | None]]) -> str:
    """One row per stage (``stage 0 | 0F0 0F1 ...``), columns aligned, ``.`` for an idle slot."""
    cells = {s: [str(a) if a is not None else "." for a in row] for s, row in grid.items()}
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
    weight versions a stage must still hold when the schedule ends (2 for 2BW).
    """

    name: str
    num_stages: int
    num_microbatches: int
    num_steps: int
    grid: dict[int, list[Action | None]]
    carry_versions: int = 1
    vertical_sync: bool = False

    def stage_actions(self, stage: int) -> list[Action]:
        """The stage's actions in execution order (idle slots dropped)."""
        return [a for a in self.grid[stage] if a is not None]

    def render(self) -> str:
        return render_grid(self.grid)


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
    """
    if set(orders) != set(range(num_stages)):
        raise ValueError(f"orders must have stages 0..{num_stages - 1}, got {sorted(orders)}")
    grid: dict[int, list[Action | None]] = {s: [] for s in range(num_stages)}
    done: dict[tuple[int, Kind, int], int] = {}
    pos = dict.fromkeys(range(num_stages), 0)
    remaining = sum(len(order) for order in orders.values())
    slot = 0
    while remaining:
        ran: list[Action] = []
        for s in range(num_stages):
            action = orders[s][pos[s]] if pos[s] < len(orders[s]) else None
            if action is not None and all(
                done.get(d, slot) < slot for d in action.dependencies(num_stages)
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
                f"stage {s} waits at {orders[s][pos[s]]}"
                for s in range(num_stages)
                if pos[s] < len(orders[s])
            )
            raise ScheduleError(f"{name}: deadlock at slot {slot}: {waiting}", render_grid(grid))
        for action in ran:
            done[action.key] = slot
        remaining -= len(ran)
        slot += 1
    return Schedule(name, num_stages, num_microbatches, num_steps, grid, **kw)
