"""The action IR: what one stage does in one slot of a pipeline schedule.

A schedule is plain data: for each stage, an ordered list of actions (``None`` marks an idle slot
in the step x stage grid). Strings are short, like torch.distributed.pipelining's ``_Action``:
``1F0`` is stage 1's forward of microbatch 0, ``2B3`` stage 2's backward of microbatch 3, and a
trailing ``+`` (``0B7+``) marks a backward followed by an optimizer step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    F = "F"  # forward of one microbatch
    B = "B"  # backward of one microbatch (input and weight gradients)


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
    """

    stage: int
    kind: Kind
    microbatch: int
    version: int = 0
    update: bool = False

    @property
    def key(self) -> tuple[int, Kind, int]:
        """Identity of the work item, ignoring version and update: (stage, kind, microbatch)."""
        return (self.stage, self.kind, self.microbatch)

    def dependencies(self, num_stages: int) -> list[tuple[int, Kind, int]]:
        """Keys of the actions whose results this one consumes.

        F(s, m) needs F(s-1, m); B(s, m) needs F(s, m) and B(s+1, m) (the last stage only its F).
        """
        if self.kind is Kind.F:
            return [(self.stage - 1, Kind.F, self.microbatch)] if self.stage > 0 else []
        deps = [(self.stage, Kind.F, self.microbatch)]
        if self.stage < num_stages - 1:
            deps.append((self.stage + 1, Kind.B, self.microbatch))
        return deps

    def __str__(self) -> str:
        return f"{self.stage}{self.kind.value}{self.microbatch}{'+' if self.update else ''}"

    @staticmethod
    def parse(text: str, version: int = 0) -> Action:
        m = re.fullmatch(r"(\d+)([FB])(\d+)(\+?)", text.strip())
        if m is None:
            raise ValueError(f"not an action: {text!r} (expected e.g. '1F0' or '0B7+')")
        return Action(int(m[1]), Kind(m[2]), int(m[3]), version, bool(m[4]))
