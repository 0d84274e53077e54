"""A benchmark configuration (``pipewave:<schedule>:<stages>``, ``torch:<schedule>:<ranks>``,
``single``...), the defaults and the targets."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]  # benchmarks/
REPO = HERE.parent
ENTRY = HERE / "engine.py"  # the command; a run's child process is ``engine.py --one``
SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
THREADS = 2  # torch threads per configuration, in total (the machine's 2 cores)
PIPEWAVE_SCHEDULES = ("gpipe", "1f1b", "pipedream", "2bw")
# chunked schedules, as config tokens: interleaved-1f1b (2 chunks per worker), hanayo (1 wave),
# hanayo-w2 (2 waves); interleaved-1f1b-c<V> and hanayo-w<W> take other counts
CHUNKED_CONFIGS = ("interleaved-1f1b", "hanayo", "hanayo-w2")
TORCH_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
TORCH_CHUNKS = 2  # torch interleaved-1f1b: stages per rank (torch_pipelining.CHUNKS)
DEFAULT_CONFIGS = (
    [f"pipewave:{s}:{n}" for n in (2, 4) for s in PIPEWAVE_SCHEDULES]
    + [f"pipewave:{s}:{n}" for n in (2, 4) for s in CHUNKED_CONFIGS]
    + [f"torch:{s}:{n}" for n in (2, 4) for s in TORCH_SCHEDULES]
    + ["single", "single-1t"]
)
_PIPEWAVE_TOKEN = re.compile(r"(gpipe|1f1b|pipedream|2bw|interleaved-1f1b(?:-c(\d+))?|hanayo(?:-w(\d+))?)")
DEFAULT_STEPS, DEFAULT_WARMUP, DEFAULT_ROUNDS = 14, 2, 3
# Targets (the issue): pipedream on 2 stages against torch's 2-rank 1F1B and the single process;
# every pipewave run's measured mean bubble within 10% (relative) of its simulated figure.
HEADLINE = "pipewave:pipedream:2"
TARGET_VS_TORCH = 1.10
TARGET_VS_SINGLE = 0.93
BUBBLE_REL_TOL = 0.10


def repo_on_path() -> None:
    """The repository (examples) and benchmarks/ (torch_pipelining) importable in a run."""
    for p in (str(REPO), str(HERE)):
        if p not in sys.path:
            sys.path.insert(0, p)


@dataclass(frozen=True)
class Config:
    system: str  # pipewave | torch | single
    schedule: str = ""  # the schedule's name (interleaved-1f1b, hanayo: chunk count in ``chunks``)
    ranks: int = 1  # stages (workers: pipewave), ranks (torch); 1 for single
    microbatches: int = 1  # single only: gradient-accumulation microbatches
    threads: int = THREADS  # single only: torch threads
    chunks: int = 1  # model chunks (virtual stages) per worker / rank: 2W for hanayo with W waves

    @property
    def token(self) -> str:
        """The schedule as written in the config name (``hanayo-w2``, ``interleaved-1f1b-c3``)."""
        if self.schedule == "hanayo" and self.chunks != 2:
            return f"hanayo-w{self.chunks // 2}"
        if self.schedule == "interleaved-1f1b" and self.chunks != 2:
            return f"interleaved-1f1b-c{self.chunks}"
        return self.schedule

    @property
    def name(self) -> str:
        if self.system == "single":
            base = "single" if self.microbatches == 1 else f"single:{self.microbatches}"
            return base if self.threads == THREADS else f"{base}-{self.threads}t"
        return f"{self.system}:{self.token}:{self.ranks}"

    @property
    def chunked(self) -> bool:
        return self.chunks > 1

    @property
    def spec_fields(self) -> dict[str, Any]:
        """The job spec's schedule fields (``schedule`` and its ``chunks`` or ``waves``)."""
        if self.schedule == "hanayo":
            return {"schedule": "hanayo", "waves": self.chunks // 2}
        if self.schedule == "interleaved-1f1b":
            return {"schedule": "interleaved-1f1b", "chunks": self.chunks}
        return {"schedule": self.schedule}

    @property
    def label(self) -> str:
        if self.system == "pipewave":
            if self.schedule == "hanayo":
                return (f"pipewave hanayo W={self.chunks // 2}, {self.ranks} workers x "
                        f"{self.chunks} chunks")
            if self.schedule == "interleaved-1f1b":
                return f"pipewave interleaved-1f1b, {self.ranks} workers x {self.chunks} chunks"
            return f"pipewave {self.schedule}, {self.ranks} stages"
        if self.system == "torch":
            cls = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                   "interleaved-1f1b": "ScheduleInterleaved1F1B"}[self.schedule]
            per = f" x {self.chunks} stages" if self.chunked else ""
            return f"torch {cls}, {self.ranks} ranks{per}"
        mb = "" if self.microbatches == 1 else f", {self.microbatches} microbatches"
        return f"single process, {self.threads} thread{'s' if self.threads > 1 else ''}{mb}"

    @staticmethod
    def parse(text: str) -> Config:
        parts = text.strip().split(":")
        try:
            if text.strip() == "single-1t":
                return Config("single", threads=1)
            if parts[0] == "single" and len(parts) in (1, 2):
                mb = int(parts[1]) if len(parts) == 2 else 1
                if mb < 1 or 32 % mb:
                    raise ValueError
                return Config("single", microbatches=mb)
            if len(parts) == 3 and parts[0] in ("pipewave", "torch"):
                n = int(parts[2])
                if not 2 <= n <= 10:
                    raise ValueError
                if parts[0] == "torch" and parts[1] in TORCH_SCHEDULES:
                    chunks = TORCH_CHUNKS if parts[1] == "interleaved-1f1b" else 1
                    return Config("torch", parts[1], n, chunks=chunks)
                m = _PIPEWAVE_TOKEN.fullmatch(parts[1]) if parts[0] == "pipewave" else None
                if m is not None:
                    if m[1].startswith("interleaved-1f1b"):
                        chunks, name = int(m[2] or 2), "interleaved-1f1b"
                    elif m[1].startswith("hanayo"):
                        chunks, name = 2 * int(m[3] or 1), "hanayo"
                    else:
                        chunks, name = 1, m[1]
                    if chunks >= 1 and not (name == "interleaved-1f1b" and chunks < 2):
                        return Config("pipewave", name, n, chunks=chunks)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(
            f"bad config {text!r}: use pipewave:<schedule>:<stages> with schedule "
            f"{', '.join(PIPEWAVE_SCHEDULES)}, interleaved-1f1b (2 chunks per worker; "
            "interleaved-1f1b-c<V>: V >= 2 chunks), hanayo (1 wave: 2 chunks per worker; "
            "hanayo-w<W>: W waves, 2W chunks), e.g. pipewave:hanayo-w2:4; "
            f"torch:<{'|'.join(TORCH_SCHEDULES)}>:<ranks> (interleaved-1f1b: {TORCH_CHUNKS} stages "
            "per rank); stages and ranks 2..10; single, single-1t or single:<microbatches>")
