"""A real ``pipewave serve`` process for the API tests, on loopback, joined to a Ray cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

TOKEN = "test-token-0123456789abcdef"  # PIPEWAVE_API_TOKEN of the test servers
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.25) -> T:
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Server:
    """``pipewave serve --address ADDRESS`` with its own PIPEWAVE_HOME; stopped by PID."""

    def __init__(self, home: Path, address: str, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.home, self.address, self.port = home, address, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PIPEWAVE_HOME": str(home), "PIPEWAVE_API_TOKEN": TOKEN,
                    "PIPEWAVE_POLL_S": "0.2", **(env or {})}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "server.log").open("ab")
        cmd = [sys.executable, "-m", "pipewave.cli", "serve", "--port", str(self.port),
               "--address", self.address, *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[1])
        wait_for(self._healthy, timeout, f"the server on {self.url} (log: {self.home / 'server.log'})")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}: "
                                 f"{(self.home / 'server.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/jobs/{job_id}")
            r.raise_for_status()
            return dict(r.json())

    def wait_state(self, job_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
        return wait_for(lambda: (j := self.job(job_id))["state"] in states and j, timeout,
                        f"job {job_id} in {sorted(states)}")


def tiny_job(**overrides: Any) -> dict[str, Any]:
    """A tiny 2-stage job (gpt, 6 cuttable layers) on synthetic data."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "model": {"kind": "gpt", "vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2,
                  "seq_len": 16},
        "data": {"kind": "synthetic"},
        "stages": 2, "microbatches": 4, "batch_size": 8, "steps": 12,
        "optimizer": {"kind": "adam", "lr": 1e-2},
    }
    spec.update(overrides)
    return spec
