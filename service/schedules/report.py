"""Schedule summaries for the CLI: a JSON-able dict and a human-readable report."""

from __future__ import annotations

from typing import Any

from pipewave.service.schedules.schedule import Schedule
from pipewave.service.schedules.simulate import Costs, simulate


def describe(schedule: Schedule, costs: Costs = Costs()) -> dict[str, Any]:
    """Grid (per stage, a string per slot or None when idle) and simulated figures.

    ``chunks``: chunks (virtual stages) per stage; ``placement``: per stage, the virtual stages of
    its chunks; ``peak_activation_memory``: peak activations per stage in units of one
    microbatch over the stage's whole share of the model (see ``SimResult``)."""
    result = simulate(schedule, costs)
    placement = (
        [list(chunks) for chunks in schedule.placement.workers]
        if schedule.placement is not None
        else [[s] for s in range(schedule.num_stages)]
    )
    return {
        "name": schedule.name,
        "stages": schedule.num_stages,
        "chunks": schedule.chunks_per_stage,
        "placement": placement,
        "microbatches": schedule.num_microbatches,
        "steps": schedule.num_steps,
        "vertical_sync": schedule.vertical_sync,
        "carry_versions": schedule.carry_versions,
        "grid": [
            [schedule.label(a) if a is not None else None for a in schedule.grid[s]]
            for s in range(schedule.num_stages)
        ],
        "makespan": result.makespan,
        "bubble": list(result.bubble),
        "bubble_mean": result.bubble_mean,
        "peak_activations": list(result.peak_activations),
        "peak_versions": list(result.peak_versions),
        "peak_activation_memory": list(result.peak_activation_memory),
    }


def render_report(schedule: Schedule, costs: Costs = Costs()) -> str:
    """The grid followed by makespan, per-stage bubble and memory peaks.

    With several chunks per stage the header names them, a line per stage gives its chunks'
    virtual stages, and peak activations count (chunk, microbatch) pairs, with the peak in units
    of a whole stage's microbatch in brackets."""
    result = simulate(schedule, costs)
    sync = ", vertical sync" if schedule.vertical_sync else ""
    chunked = schedule.placement is not None and schedule.chunks_per_stage > 1
    chunks = f" x {schedule.chunks_per_stage} chunks" if chunked else ""
    lines = [
        f"{schedule.name}: {schedule.num_stages} stages{chunks}, {schedule.num_microbatches}"
        f" microbatches x {schedule.num_steps} steps{sync}",
        "",
    ]
    if schedule.placement is not None and chunked:
        lines += [
            f"stage {s} holds virtual stages {', '.join(map(str, chunks_))}"
            for s, chunks_ in enumerate(schedule.placement.workers)
        ] + [""]
    lines += [
        schedule.render(),
        "",
        f"makespan {result.makespan:g}, mean bubble {result.bubble_mean:.1%}",
        "stage  busy      bubble  peak activations  peak versions",
    ]
    for s in range(schedule.num_stages):
        acts = f"{result.peak_activations[s]}"
        if chunked:
            acts += f" ({result.peak_activation_memory[s]:g})"
        lines.append(
            f"{s:<5}  {result.busy[s]:<8g}  {result.bubble[s]:>6.1%}  "
            f"{acts:>16}  {result.peak_versions[s]:>13}"
        )
    return "\n".join(lines)
