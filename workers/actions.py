"""The action IR: what one stage does in one slot of a pipeline schedule.

A schedule is plain data: for each stage, an ordered list of actions (``None`` marks an idle slot
in the step x stage grid). Strings are short, like torch.distributed.pipelining's ``_Action``:
``1F0`` is stage 1's forward of microbatch 0, ``2B3`` stage 2's backward of microbatch 3, and a
trailing ``+`` (``0B7+``) marks a backward followed by an optimizer step.

Chunks: a stage (worker) may hold several model chunks (virtual stages, see ``placement.py``);
``chunk`` is the index of the action's chunk on its worker. ``str`` appends ``c<chunk>`` for a
chunk other than 0 (``1F0c1``, ``0B7c1+``), so single-chunk schedules read as before; grids of
schedules with several chunks per worker label every action, chunk 0 too (``1F0c0``, see
``Action.label``). ``Action.parse`` reads both forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipewave.workers.placement import Placement


class Kind(StrEnum):
    F = "F"  # forward of one microbatch
    B = "B"  # backward of one microbatch (input and weight gradients)


Key = tuple[int, Kind, int, int]  # (stage, kind, microbatch, chunk)


@dataclass(frozen=True, slots=True)
class Action:
    """One unit of work of one stage.

    microbatch: index within the schedule (a schedule may span several steps, i.e. global batches;
        microbatch m belongs to step m // num_microbatches).
    version: the weight version this action computes with, counted as optimizer updates applied on
        this stage since the schedule began (0 = the weights the schedule started with; -1 = the
        version before those, which only 2BW's first step uses). The backward of a microbatch must
        use the version of its forward.
    update: on a backward only: the stage applies one optimizer step right after it, turning its
        latest version ``u`` into ``u + 1`` (with the gradients accumulated since the last update).
        With several chunks per stage the step covers all the stage's chunks.
    chunk: which of the stage's chunks (virtual stages) the action runs; 0 when the stage holds
        one. The schedule's placement maps (stage, chunk) to the virtual stage.
    """

    stage: int
    kind: Kind
    microbatch: int
    version: int = 0
    update: bool = False
    chunk: int = 0

    @property
    def key(self) -> Key:
        """Identity of the work item, ignoring version and update: (stage, kind, microbatch, chunk)."""
        return (self.stage, self.kind, self.microbatch, self.chunk)

    def dependencies(self, num_stages: int, placement: Placement | None = None) -> list[Key]:
        """Keys of the actions whose results this one consumes.

        In virtual stages v (= the stage without a placement): F(v, m) needs F(v-1, m); B(v, m)
        needs F(v, m) and B(v+1, m) (the last virtual stage only its F, whose output is the loss).
        """
        if placement is None:
            v, last = self.stage, num_stages - 1

            def key(kind: Kind, virtual: int) -> Key:
                return (virtual, kind, self.microbatch, 0)
        else:
            v, last = placement.virtual(self.stage, self.chunk), placement.num_virtual_stages - 1

            def key(kind: Kind, virtual: int) -> Key:
                worker, chunk = placement.locate(virtual)
                return (worker, kind, self.microbatch, chunk)
        if self.kind is Kind.F:
            return [key(Kind.F, v - 1)] if v > 0 else []
        deps = [(self.stage, Kind.F, self.microbatch, self.chunk)]
        if v < last:
            deps.append(key(Kind.B, v + 1))
        return deps

    def label(self, show_chunk: bool | None = None) -> str:
        """``1F0``, ``0B7+``; with the chunk (``1F0c1``) when ``show_chunk``, or, by default, when
        the chunk is not 0."""
        show = self.chunk != 0 if show_chunk is None else show_chunk
        chunk = f"c{self.chunk}" if show else ""
        return f"{self.stage}{self.kind.value}{self.microbatch}{chunk}{'+' if self.update else ''}"

    def __str__(self) -> str:
        return self.label()

    @staticmethod
    def parse(text: str, version: int = 0) -> Action:
        m = re.fullmatch(r"(\d+)([FB])(\d+)(?:c(\d+))?(\+?)", text.strip())
        if m is None:
            raise ValueError(f"not an action: {text!r} (expected e.g. '1F0', '0B7+' or '1F0c1')")
        return Action(int(m[1]), Kind(m[2]), int(m[3]), version, bool(m[5]), int(m[4] or 0))
