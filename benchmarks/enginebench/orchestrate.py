"""Each run in a fresh process of its own session (stopped as a group on a timeout), the machine's
busy and stolen CPU share meanwhile, the round-robin order, and the machine's facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from enginebench.config import ENTRY, REPO, Config


def launch(cfg: Config, steps: int, warmup: int, timeout_s: float, log_dir: Path,
           workload: str = "gpt") -> dict[str, Any]:
    """Run one configuration of ``workload`` in a fresh process; its result, or {"error": ...}."""
    result_file = log_dir / f"{cfg.name.replace(':', '-')}-{time.time_ns()}.json"
    log_file = result_file.with_suffix(".log")
    cmd = [sys.executable, str(ENTRY), "--one", cfg.name, "--steps", str(steps),
           "--warmup", str(warmup), "--model", workload, "--result", str(result_file)]
    t0, cpu0 = time.time(), _cpu_times()
    with log_file.open("w") as log:
        # its own session: on a timeout the run's whole process group (ranks, Ray) is stopped
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as err:
            _stop_group(proc)
            if isinstance(err, KeyboardInterrupt):
                raise
            rc = f"timed out after {timeout_s:.0f} s"
    wall, cpu1 = time.time() - t0, _cpu_times()
    if rc == 0 and result_file.is_file():
        result = json.loads(result_file.read_text())
        result["run_wall_s"] = wall
        result["machine_during_run"] = _cpu_share(cpu0, cpu1)
        return result
    tail = log_file.read_text(errors="replace").strip().splitlines()[-25:]
    return {"error": rc if isinstance(rc, str) else f"exit code {rc}", "log_tail": tail, "run_wall_s": wall}


def _cpu_times() -> list[int] | None:
    """The machine's CPU clock ticks from /proc/stat (user nice system idle iowait irq softirq
    steal ...), or None where there is none."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None


def _cpu_share(a: list[int] | None, b: list[int] | None) -> dict[str, float] | None:
    """Over one run, the share of the machine's CPU time that was busy (all processes, the run's
    own included) and stolen by the hypervisor (a sign of a noisy host)."""
    if a is None or b is None:
        return None
    d = [y - x for x, y in zip(a, b, strict=True)]
    total = sum(d)
    if total <= 0:
        return None
    idle = d[3] + d[4]
    return {"busy": (total - idle - d[7]) / total, "steal": d[7] / total}


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group of one run this benchmark started."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def rotated(configs: list[Config], r: int, rounds: int) -> list[Config]:
    k = (r * len(configs)) // max(1, rounds) % max(1, len(configs))
    return configs[k:] + configs[:k]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"
