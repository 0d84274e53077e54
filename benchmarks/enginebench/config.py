"""A benchmark configuration (``pipewave:<schedule>:<stages>``, ``torch:<schedule>:<ranks>``,
``single``...), the workloads (``--model gpt|llama``) with their defaults and targets."""

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
# Every pipewave run's measured mean bubble must be within 10% (relative) of its simulated figure.
BUBBLE_REL_TOL = 0.10


@dataclass(frozen=True)
class Target:
    """``config``'s samples/s at least ``goal`` x ``ref``'s (the median over rounds of the ratio
    within a round); ``ref`` is ``torch:1f1b:2`` or ``single``, named ``what`` in the report."""

    config: str
    ref: str
    goal: float
    what: str


@dataclass(frozen=True)
class Workload:
    """What every configuration trains (a job spec in ``examples/``), with its report's title and
    workload line, its default configurations and output, and its throughput targets."""

    name: str
    spec_file: Path
    title: str
    description: str
    default_configs: tuple[str, ...]
    output: Path
    targets: tuple[Target, ...]


_TORCH_1F1B_2 = "torch Schedule1F1B, 2 ranks"
WORKLOADS = {
    # issue 1: pipedream on 2 stages against torch's 2-rank 1F1B and the single process
    "gpt": Workload(
        "gpt", REPO / "examples" / "gpt-small.yaml", "pipewave engine benchmark",
        "`examples/gpt-small.yaml`'s model and data: byte-level GPT (vocab 256, d_model 256, 8 "
        "blocks, 4 heads, seq 128, 6.48 M parameters), batch 32 in 8 microbatches, Adam lr 3e-4, "
        "stdlib corpus, seed 0; 2 torch threads per configuration in total",
        tuple(DEFAULT_CONFIGS), HERE / "results.md",
        (Target("pipewave:pipedream:2", "torch:1f1b:2", 1.10, _TORCH_1F1B_2),
         Target("pipewave:pipedream:2", "single", 0.93, "the unpipelined single process"))),
    # issue 15: a transformers Llama of the GPT's size, pipewave 1f1b and pipedream on 2 stages
    "llama": Workload(
        "llama", REPO / "examples" / "llama-small.yaml", "pipewave engine benchmark: Llama",
        "`examples/llama-small.yaml`'s model and data: transformers `LlamaForCausalLM` (vocab 256, "
        "hidden 256, 8 decoder layers, 4 heads, 4 key/value heads, MLP 688, seq 128, untied head, "
        "6.46 M parameters; pipewave's layers embed, layer0..7, head, cut after layer3 on 2 "
        "stages), batch 32 in 8 microbatches, Adam lr 3e-4, stdlib corpus, seed 0; 2 torch "
        "threads per configuration in total",
        ("pipewave:1f1b:2", "pipewave:pipedream:2", "torch:1f1b:2", "single"),
        HERE / "llama-results.md",
        (Target("pipewave:1f1b:2", "torch:1f1b:2", 1.00, _TORCH_1F1B_2),
         Target("pipewave:pipedream:2", "torch:1f1b:2", 1.05, _TORCH_1F1B_2))),
}


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
