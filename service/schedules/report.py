"""Schedule summaries for the CLI: a JSON-able dict and a human-readable report."""

from __future__ import annotations

from typing import Any

from service.schedules.schedule import Schedule
from service.schedules.simulate import Costs, simulate


def describe(schedule: Schedule, costs: Costs = Costs()) -> dict[str, Any]:
    """Grid (per stage, a string per slot or None when idle) and simulated figures."""
    result = simulate(schedule, costs)
    return {
        "name": schedule.name,
        "stages": schedule.num_stages,
        "microbatches": schedule.num_microbatches,
        "steps": schedule.num_steps,
        "vertical_sync": schedule.vertical_sync,
        "carry_versions": schedule.carry_versions,
        "grid": [
            [str(a) if a is not None else None for a in schedule.grid[s]]
            for s in range(schedule.num_stages)
        ],
        "makespan": result.makespan,
        "bubble": list(result.bubble),
        "bubble_mean": result.bubble_mean,
        "peak_activations": list(result.peak_activations),
        "peak_versions": list(result.peak_versions),
    }


def render_report(schedule: Schedule, costs: Costs = Costs()) -> str:
    """The grid followed by makespan, per-stage bubble and memory peaks."""
    result = simulate(schedule, costs)
    sync = ", vertical sync" if schedule.vertical_sync else ""
    lines = [
        f"{schedule.name}: {schedule.num_stages} stages, {schedule.num_microbatches} microbatches"
        f" x {schedule.num_steps} steps{sync}",
        "",
        schedule.render(),
        "",
        f"makespan {result.makespan:g}, mean bubble {result.bubble_mean:.1%}",
        "stage  busy      bubble  peak activations  peak versions",
    ]
    for s in range(schedule.num_stages):
        lines.append(
            f"{s:<5}  {result.busy[s]:<8g}  {result.bubble[s]:>6.1%}  "
            f"{result.peak_activations[s]:>16}  {result.peak_versions[s]:>13}"
        )
    return "\n".join(lines)
