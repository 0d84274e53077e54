"""Service benchmark: API latency under concurrent clients, and training throughput with the dashboard open.

A real ``pipewave serve`` (no ``--address``: its embedded local Ray cluster; its own PIPEWAVE_HOME, a
fixed token, loopback only) trains ``examples/gpt-small.yaml``'s job, submitted over the API with a
step count large enough for every phase (the job is cancelled after the last one). Once the job has
warmed up, the phases run one after another, each a fixed duration:

- ``A``: nothing but the benchmark's own metrics poller (1 request/s) talks to the server;
- ``B``: the dashboard's job page is open in a headless Chromium (Playwright): live charts, the SSE
  event stream, the timeline, the job re-fetched every 2 s;
- ``L``: ``--clients`` concurrent clients (httpx.AsyncClient, one connection each) each GET
  ``/api/v1/jobs/{id}`` back to back; every latency is recorded.

The order is A B A B L (ABAB lets a slow drift of the machine cancel out). A phase's training
throughput = batch_size x steps / seconds between the first and the last step points whose time lies
in the phase; a step point's time is when the server first reported that step live (polled from
``GET /jobs/{id}/metrics``).

    .venv/bin/python benchmarks/service.py      # see the module docstring and --help

The verdict (the dashboard's slowdown against ``TARGET_SLOWDOWN``) and the Markdown report are in
``benchmarks/service_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import loadavg, the_command  # (benchmarks/ is on sys.path when run as a script)
from service_report import TARGET_SLOWDOWN, aggregate, render

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from apiserver import TOKEN, Server, wait_for  # noqa: E402  (tests/apiserver.py)

SPEC_FILE = REPO / "examples" / "gpt-small.yaml"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_STEPS_PER_S = 3.0  # generous upper bound of this job's speed (it runs ~1 step/s on 2 cores)


class LocalServer(Server):
    """``Server`` with ``address`` None: ``pipewave serve`` without ``--address`` (an embedded Ray)."""

    def __init__(self, home: Path, address: str | None = None, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        super().__init__(home, address or "", env, args)
        self.address = address  # type: ignore[assignment]
        self.env.setdefault("RAY_AUTH_MODE", "token")
        self.env.pop("PIPEWAVE_POLL_S", None)  # the service's default, not the tests' 0.2 s
        self.env.update(env or {})

    def start(self, timeout: float = 90) -> LocalServer:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "server.log").open("ab")
        cmd = [sys.executable, "-m", "pipewave.cli", "serve", "--port", str(self.port),
               *(["--address", self.address] if self.address else []), *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(self._healthy, timeout, f"the server on {self.url} (log: {self.home / 'server.log'})")
        return self

    def stop(self) -> None:  # SIGTERM; the server then stops its embedded Ray (give it time)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


class StepWatcher(threading.Thread):
    """Polls the job's metrics; keeps, per step, the time of the first point seen (the live one:
    when a run ends the server replaces its points, all stamped with the run's end)."""

    def __init__(self, server: Server, job_id: str, every_s: float = 1.0) -> None:
        super().__init__(name="step-watcher", daemon=True)
        self.server, self.job_id, self.every_s = server, job_id, every_s
        self.points: dict[int, float] = {}
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with self.server.client() as c:
            while True:
                since = max(self.points, default=0)
                try:
                    r = c.get(f"/jobs/{self.job_id}/metrics", params={"since_step": since})
                    r.raise_for_status()
                    for p in r.json()["items"]:
                        self.points.setdefault(int(p["step"]), float(p["time"]))
                except (httpx.HTTPError, ValueError, KeyError):
                    self.errors += 1
                if self.halt.wait(self.every_s):
                    return


def window_rate(points: dict[int, float], t0: float, t1: float, batch: int) -> dict[str, Any] | None:
    """Samples/s between the first and the last step point timed inside [t0, t1]. With fewer than two
    points inside (training crawled), between the last point before and the first after ("wider")."""
    pts = sorted((s, t) for s, t in points.items() if t0 <= t <= t1)
    wider = len(pts) < 2
    if wider:
        before = sorted((s, t) for s, t in points.items() if t < t0)
        after = sorted((s, t) for s, t in points.items() if t > t1)
        pts = sorted([*before[-1:], *pts, *after[:1]])  # (points are by step, so by time)
    if len(pts) < 2 or pts[-1][1] <= pts[0][1] or pts[-1][0] <= pts[0][0]:
        return None
    (s0, a), (s1, b) = pts[0], pts[-1]
    return {"samples_per_s": batch * (s1 - s0) / (b - a), "first_step": s0, "last_step": s1,
            "steps": s1 - s0, "window_s": b - a, "points": len(pts), "wider": wider}


class Usage:
    """CPU use over an interval: the whole machine (/proc/stat) and the server process."""

    def __init__(self, pid: int) -> None:
        self.pid, self.t0 = pid, time.time()
        self.machine0, self.server0 = self._machine(), self._server()

    @staticmethod
    def _machine() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v) - idle, sum(v)

    def _server(self) -> float:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return math.nan

    def done(self) -> dict[str, float]:
        busy1, total1 = self._machine()
        busy0, total0 = self.machine0
        wall = max(time.time() - self.t0, 1e-9)
        return {"machine_busy_pct": 100 * (busy1 - busy0) / max(total1 - total0, 1e-9),
                "server_cpu_pct": 100 * (self._server() - self.server0) / wall}


def requests_total(server: Server) -> float | None:
    """The server's ``pipewave_http_requests_total``, all routes and codes."""
    try:
        text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=30).text
    except httpx.HTTPError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pipewave_http_requests_total{"))


# -- phases ------------------------------------------------------------------------------------
def phase_idle(duration: float) -> dict[str, Any]:
    time.sleep(duration)
    return {}


def phase_dashboard(server: Server, job_id: str, duration: float, settle: float,
                    info: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
    """Open the job page in headless Chromium; the phase starts once its stream is live (+ settle)
    and ends before the browser closes. Returns (phase start time, end time, figures)."""
    from playwright.sync_api import sync_playwright

    js_state = """() => ({status: document.querySelector('#stream-status')?.textContent || null,
                          points: +(document.querySelector('#loss-chart')?.getAttribute('data-points') || 0),
                          spans: document.querySelectorAll('#timeline rect').length})"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            info.setdefault("chromium", browser.version)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{server.url}/login?token={TOKEN}")
            page.goto(f"{server.url}/#/jobs/{job_id}")
            page.wait_for_function(
                "() => document.querySelector('#stream-status')?.textContent === 'live' && "
                "+(document.querySelector('#loss-chart')?.getAttribute('data-points') || 0) > 0",
                timeout=90_000)
            page.wait_for_timeout(settle * 1000)
            t0 = time.time()
            before = page.evaluate(js_state)
            page.wait_for_timeout(duration * 1000)  # (keeps Playwright's event loop turning)
            t1 = time.time()
            after = page.evaluate(js_state)
            if after["status"] != "live":
                raise RuntimeError(f"the dashboard's stream is {after['status']!r} at the end of the phase")
            if after["points"] <= before["points"]:
                raise RuntimeError(f"the dashboard's charts did not grow ({before['points']} points)")
            return t0, t1, {"chart_points_before": before["points"], "chart_points_after": after["points"],
                        "stream": after["status"], "timeline_rects": after["spans"]}
        finally:
            browser.close()


def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (xs sorted)."""
    k = (len(xs) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _latency(url: str, job_id: str, clients: int, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=30, limits=limits) as c:
        path = f"/jobs/{job_id}"
        await asyncio.gather(*(c.get(path) for _ in range(clients)))  # open the connections (not timed)
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def one() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await c.get(path)
                    ok, why = r.status_code == 200, f"HTTP {r.status_code}"
                except httpx.HTTPError as err:
                    ok, why = False, type(err).__name__
                if ok:
                    lat.append(time.perf_counter() - t)
                else:
                    errors[why] = errors.get(why, 0) + 1

        await asyncio.gather(*(one() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    lat.sort()
    n = len(lat)
    ms = {k: 1000 * v for k, v in ({"p50": percentile(lat, 0.50), "p90": percentile(lat, 0.90),
                                    "p99": percentile(lat, 0.99), "mean": statistics.fmean(lat),
                                    "max": lat[-1], "min": lat[0]} if n else {}).items()}
    return {"requests": n, "errors": sum(errors.values()), "error_kinds": errors, "elapsed_s": elapsed,
            "requests_per_s": (n + sum(errors.values())) / elapsed, "latency_ms": ms}


def phase_latency(server: Server, job_id: str, clients: int, duration: float) -> dict[str, Any]:
    return asyncio.run(_latency(server.url, job_id, clients, duration))


# -- the run -----------------------------------------------------------------------------------
def run(a: argparse.Namespace, rep: dict[str, Any]) -> None:
    from pipewave.service.spec import load_spec

    cps = a.cpus_per_stage or 1.0  # the embedded cluster offers 4 logical CPUs (PIPEWAVE_LOCAL_CPUS)
    planned_s = 4 * (a.phase_s + a.settle_s + 15) + a.latency_s + a.settle_s + 60
    steps = a.steps or a.warmup_steps + math.ceil(MAX_STEPS_PER_S * planned_s)
    spec = load_spec(SPEC_FILE, overrides={"name": "bench-service", "steps": steps,
                                           "checkpoint": {"every_steps": a.checkpoint_every}})
    body = spec.model_dump(mode="json")
    rep.update(spec=body, cpus_per_stage=cps)
    print(f"job: {SPEC_FILE.relative_to(REPO)}, steps {steps}, checkpoint every {a.checkpoint_every}; "
          f"server: cpus_per_stage {cps}", flush=True)

    with tempfile.TemporaryDirectory(prefix="pipewave-bench-service-") as tmp:
        server = LocalServer(Path(tmp) / "home", env={"PIPEWAVE_CPUS_PER_STAGE": str(cps)})
        watcher: StepWatcher | None = None
        job_id: str | None = None
        try:
            t = time.time()
            server.start(timeout=240)
            rep["server_start_s"] = time.time() - t
            assert server.proc is not None
            with server.client() as c:
                r = c.post("/jobs", json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"submit: HTTP {r.status_code} {r.text[:300]}")
                job_id = str(r.json()["id"])
            rep["job_id"] = job_id
            print(f"server {server.url} (pid {server.proc.pid}), job {job_id}; warming up", flush=True)

            def warmed() -> dict[str, Any] | None:
                j = server.job(job_id)
                if j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    raise RuntimeError(f"the job ended during the warm-up: {j['state']}: {j['reason']}")
                return j if j["phase"] == "RUNNING" and (j["step"] or 0) >= a.warmup_steps else None

            t = time.time()
            j = wait_for(warmed, 900, f"job {job_id} RUNNING past step {a.warmup_steps}", every=1.0)
            rep.update(warmup_s=time.time() - t, stages=j["stages"], microbatches=j["microbatches"],
                       placement=j["placement"])
            print(f"warm after {rep['warmup_s']:.0f} s: step {j['step']}, {j['stages']} stages, "
                  f"{j['microbatches']} microbatches", flush=True)
            watcher = StepWatcher(server, job_id)
            watcher.start()
            time.sleep(a.settle_s)

            for i, kind in enumerate([*"ABAB", "L"]):
                name = f"{kind}{i // 2 + 1}" if kind != "L" else "L"
                req0, use = requests_total(server), Usage(server.proc.pid)
                extra: dict[str, Any]
                if kind == "B":
                    t0, t1, extra = phase_dashboard(server, job_id, a.phase_s, a.settle_s, rep["machine"])
                else:
                    t0 = time.time()
                    extra = phase_idle(a.phase_s) if kind == "A" else \
                        phase_latency(server, job_id, a.clients, a.latency_s)
                    t1 = time.time()
                # (usage and request counts cover the whole phase, browser start and stop included)
                req1, usage = requests_total(server), use.done()
                ph = {"name": name, "kind": kind, "t0": t0, "t1": t1, **usage, **extra,
                      "server_requests_per_s": None if req0 is None or req1 is None
                      else (req1 - req0 - 1) / max(time.time() - use.t0, 1e-9)}
                rep["phases"].append(ph)
                msg = f"phase {name}: {t1 - t0:.0f} s, machine busy {usage['machine_busy_pct']:.0f}%, " \
                      f"server cpu {usage['server_cpu_pct']:.0f}%"
                if kind == "L":
                    lm = extra["latency_ms"]
                    msg += (f"; {extra['requests']} requests ({extra['requests_per_s']:.0f}/s), "
                            f"{extra['errors']} errors, p50 {lm.get('p50', math.nan):.1f} ms, "
                            f"p99 {lm.get('p99', math.nan):.1f} ms")
                print(msg, flush=True)
                j = server.job(job_id)
                if j["state"] != "RUNNING":
                    raise RuntimeError(f"the job is {j['state']} after phase {name} ({j['reason']}): "
                                       f"give it more --steps")
                time.sleep(a.settle_s)
            time.sleep(2 * watcher.every_s + 1)  # the last phase's final points
        finally:
            if watcher is not None:
                watcher.halt.set()
                watcher.join(timeout=30)
                rep["points"] = {str(k): v for k, v in sorted(watcher.points.items())}
                rep["watcher_errors"] = watcher.errors
            if job_id is not None and server.proc is not None and server.proc.poll() is None:
                try:
                    with server.client() as c:
                        c.post(f"/jobs/{job_id}/cancel")
                    server.wait_state(job_id, {"CANCELLED", "SUCCEEDED", "FAILED"}, timeout=120)
                except (httpx.HTTPError, AssertionError) as err:
                    print(f"cancelling the job: {err}", file=sys.stderr)
            server.stop()
            log = server.home / "server.log"
            if log.exists():
                rep["server_log_tail"] = log.read_text(errors="replace")[-3000:]
            for ph in rep["phases"]:
                ph["training"] = window_rate(watcher.points if watcher else {}, ph["t0"], ph["t1"],
                                             spec.batch_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase-s", type=float, default=60, help="seconds per A/B phase")
    p.add_argument("--latency-s", type=float, default=20, help="seconds of the concurrent-clients test")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients in the latency test")
    p.add_argument("--settle-s", type=float, default=5, help="pause before each phase (not measured)")
    p.add_argument("--warmup-steps", type=int, default=12,
                   help="steps done (past the planner's calibration) before the first phase")
    p.add_argument("--steps", type=int, default=None,
                   help=f"the job's steps (default: enough for every phase at {MAX_STEPS_PER_S:g} steps/s)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="periodic checkpoints (default none: a checkpoint pauses training, which would "
                        "land in some phases and not others)")
    p.add_argument("--cpus-per-stage", type=float, default=None,
                   help="the server's PIPEWAVE_CPUS_PER_STAGE (default 1: the embedded cluster has 4 slots)")
    p.add_argument("--output", type=Path, default=HERE / "service-results.md")
    p.add_argument("--json", type=Path, default=None, help="default: --output with .json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10 s phases, 5 s latency test, 6 warm-up steps (figures meaningless)")
    a = p.parse_args(argv)
    if a.quick:
        a.phase_s, a.latency_s, a.settle_s, a.warmup_steps = 10, 5, 2, 6
    if a.phase_s <= 0 or a.latency_s <= 0 or a.clients < 1 or a.warmup_steps < 1:
        p.error("--phase-s, --latency-s, --clients and --warmup-steps must be positive")
    a.json = a.json or a.output.with_suffix(".json")

    started, t_start, load_before = datetime.now(UTC), time.time(), loadavg()
    rep: dict[str, Any] = {
        "command": the_command(), "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": load_before,
        "machine": {"cpus": os.cpu_count() or 1, "platform": platform.platform(),
                    "python": platform.python_version()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "target_slowdown": TARGET_SLOWDOWN, "phases": [],
    }
    status = 0
    try:
        run(a, rep)
    except Exception as err:
        import traceback

        rep["error"] = "".join(traceback.format_exception(err))[-4000:]
        print(rep["error"], file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        rep["error"] = "interrupted"
        status = 130
    rep.update(finished=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"), duration_s=time.time() - t_start,
               load_after=loadavg())
    rep["aggregate"] = aggregate(rep)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(render(rep))
    a.json.write_text(json.dumps(rep, indent=2))
    print(render(rep))
    print(f"wrote {a.output} and {a.json} ({rep['duration_s'] / 60:.1f} min)")
    return status


if __name__ == "__main__":
    sys.exit(main())
