"""The commands that run on the cluster side: schedule, train, plan, drain, serve.

They import the service (torch, Ray, the API's server packages) only inside their bodies, so the
light client install can load this module; there, a command that needs a missing server package
ends with one line naming the server install, and exit code 2. Bad input ends with one readable
line on stderr and exit code 2, never a traceback; ``train`` exits 1 when the job fails and 130
when it is cancelled.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import typer
from rich.console import Console

from pipewave.cli.app import err_console, error_text, fail

P = ParamSpec("P")

# the top-level modules of the `server` extra (pyproject.toml): absent in the client install
SERVER_PACKAGES = frozenset({"torch", "ray", "numpy", "pydantic_settings", "fastapi",
                             "uvicorn", "sqlalchemy", "psycopg", "sse_starlette", "prometheus_client",
                             "transformers", "tokenizers", "safetensors", "pyarrow"})
SERVER_INSTALL = "pip install 'pipewave[server]'"

RESUME_HELP = ("resume from the output's latest checkpoint; --no-resume starts at step 0 and "
               "deletes the output's earlier checkpoints")


def register(app: typer.Typer) -> None:
    """Add the cluster-side commands to ``app``."""
    for command in (schedule, train, plan, drain, serve):
        app.command()(command)


def needs_server(command: Callable[P, None]) -> Callable[P, None]:
    """``command``, ending with one line and exit 2 where a server package is not installed."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] not in SERVER_PACKAGES:
                raise
            fail(f"pipewave {command.__name__} needs the server install (no module named "
                 f"{err.name!r}): {SERVER_INSTALL}")

    return run


def _connect(address: str | None, min_cpus: int = 1) -> None:
    """Join the Ray cluster at ``address`` (None: start an embedded one); one line and exit 2 if not.

    A missing Ray is left to ``needs_server``: it is the client install, not a bad address."""
    from pipewave.service.cluster.runtime import connect

    try:
        connect(address, min_cpus)
    except ModuleNotFoundError:
        raise
    except Exception as err:  # unreachable cluster, bad address
        fail(f"cannot connect to Ray at {address}: {error_text(err)}")


@needs_server
def schedule(
    name: Annotated[str, typer.Argument(
        help="gpipe | 1f1b | pipedream | 2bw | interleaved-1f1b | hanayo")],
    stages: Annotated[int, typer.Option("--stages", "-s", min=1, max=64)] = 4,
    microbatches: Annotated[int, typer.Option("--microbatches", "-m", min=1, max=1024)] = 8,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000)] = 1,
    vertical_sync: Annotated[bool, typer.Option("--vertical-sync")] = False,
    chunks: Annotated[int | None, typer.Option(
        "--chunks", min=1, max=16, help="interleaved-1f1b: model chunks per stage (default 2)")] = None,
    waves: Annotated[int | None, typer.Option(
        "--waves", min=1, max=16, help="hanayo: waves (default 1)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a schedule's step x stage grid and its simulated figures (unit costs)."""
    from pipewave.service.schedules import make_schedule
    from pipewave.service.schedules.report import describe, render_report

    try:
        sched = make_schedule(name, stages, microbatches, steps, vertical_sync=vertical_sync,
                              chunks=chunks, waves=waves)
    except ValueError as err:
        fail(str(err).splitlines()[0])
    if as_json:
        print(json.dumps(describe(sched), indent=2))
    else:
        print(render_report(sched))


@needs_server
def train(
    job: Annotated[Path, typer.Argument(help="job spec, YAML or JSON")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address; none starts a local one")] = None,
    output: Annotated[Path | None, typer.Option(help="run directory (default runs/<name>)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="override the spec's steps")] = None,
    resume: Annotated[bool, typer.Option(help=RESUME_HELP)] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a job end to end with a progress bar; a summary at the end."""
    from pipewave.service.spec import SpecError, load_spec

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = load_spec(job, {"steps": steps} if steps else None)
    except SpecError as err:
        fail(str(err))
    out = output or Path("runs") / spec.name
    summary = _train(spec, out, address, resume, quiet=as_json)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if summary["state"] != "SUCCEEDED":
        raise typer.Exit(1 if summary["state"] == "FAILED" else 130)


def _train(spec: Any, out: Path, address: str | None, resume: bool, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipewave.service.cluster.runtime import disconnect

    embedded = address is None
    _connect(address, spec.stages if spec.stages != "auto" else 1)
    from pipewave.service.control.controller import ControllerOptions, Event, JobController

    # embedded: this machine's cores are shared by the stages; a cluster: a thread per CPU
    opts = ControllerOptions(cpus_per_stage=1, threads_per_stage=None if embedded else 1,
                             resume=resume)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn(), console=err_console, disable=quiet)
    task = bar.add_task(spec.name, total=spec.steps, loss="-", rate="")
    state: dict[str, tuple[int, float] | None] = {"last": None}

    def on_progress(step: int, loss: float | None) -> None:
        import time

        now = time.time()
        prev = state["last"]
        rate = ""
        if prev is not None and step > prev[0]:
            rate = f"{(step - prev[0]) * spec.batch_size / (now - prev[1]):.1f} samples/s"
        if prev is None or step > prev[0]:
            state["last"] = (step, now)
        fields: dict[str, Any] = {"loss": f"{loss:.4f}" if loss is not None else "-"}
        if rate:
            fields["rate"] = rate
        bar.update(task, completed=step, **fields)

    def on_event(ev: Event) -> None:
        if ev.kind in ("checkpoint", "info", "plan") and not quiet:
            bar.console.print(f"[dim]{ev.message}[/dim]")

    ctl = JobController(spec, out, opts, on_event=on_event, on_progress=on_progress)
    try:
        with bar:
            summary = ctl.run()
    finally:
        disconnect()
    return summary.to_dict()


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=f"pipewave: {s['name']} ({s['state']})", show_header=False)
    loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "-"
    rows = [("schedule", f"{s['schedule']}, {s['stages']} stages"), ("steps", str(s["steps"])),
            ("final loss", loss), ("samples/s", f"{s['samples_per_s']:.2f}"),
            ("train time", f"{s['train_s']:.1f} s (startup {s['startup_s']:.1f} s)"),
            ("bubble per stage", ", ".join(f"{b:.1%}" for b in s["bubble"])),
            ("peak weight versions", ", ".join(map(str, s["peak_versions"]))),
            ("checkpoints", s["checkpoints"][-1] if s["checkpoints"] else "-")]
    if s["predicted_stage_busy_s"]:
        rows.append(("partition (layers per stage)", ", ".join(f"{a}-{b - 1}" for a, b in s["partition"])))
        triples = zip(s["predicted_stage_busy_s"], s["measured_stage_cpu_s"],
                      s["measured_stage_busy_s"], strict=False)
        rows.append(("busy ms per step: predicted / measured work / wall",
                     ", ".join(f"{p * 1e3:.0f}/{c * 1e3:.0f}/{w * 1e3:.0f}" for p, c, w in triples)))
    if s["reason"] and s["state"] != "SUCCEEDED":
        rows.append(("reason", s["reason"]))
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


@needs_server
def plan(
    job: Annotated[Path, typer.Argument(help="job spec, YAML or JSON")],
    address: Annotated[str | None, typer.Option(help="Ray cluster address; none starts a local one")] = None,
    auto: Annotated[bool, typer.Option(
        "--auto", help="choose the stages and microbatches even where the spec gives them")] = False,
    memory_fraction: Annotated[float, typer.Option(
        min=1e-9, max=1.0, help="share of each node's Ray memory the stages may use")] = 0.8,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Profile the job's layers on the cluster and print where each stage would run."""
    from pipewave.service.spec import SpecError, load_spec

    try:
        spec = load_spec(job)
    except SpecError as err:
        fail(str(err))
    from pipewave.service.cluster.runtime import disconnect

    _connect(address, spec.stages if spec.stages != "auto" else 1)
    from pipewave.service.cluster.nodes import cluster_nodes, slots_of
    from pipewave.service.cluster.runtime import pipewave_home
    from pipewave.service.planning.partition import InfeasibleError
    from pipewave.service.planning.planner import plan_job, render_plan
    from pipewave.service.planning.profiler import ProfileCache, profile_cluster
    from pipewave.workers.models import layer_names

    home = pipewave_home()
    try:
        nodes = cluster_nodes()
        profile = profile_cluster(spec, ProfileCache(home / "profiles"), nodes)
        slots = slots_of(nodes, profile.speeds, memory_fraction=memory_fraction)
        stages = None if auto or spec.stages == "auto" else spec.stages
        microbatches = None if auto or spec.microbatches == "auto" else spec.microbatches
        chosen = plan_job(spec, profile.layers, slots, stages=stages, microbatches=microbatches,
                          max_stages=spec.max_stages)
    except InfeasibleError as err:
        fail(f"cannot place the job: {str(err).splitlines()[0]}")
    except Exception as err:  # the profiling actor failed (out of memory, a node lost, ...)
        from pipewave.service.control.controller import error_line

        fail(f"cannot plan the job: {error_line(err)}")
    finally:
        disconnect()
    if as_json:
        print(json.dumps(chosen.to_dict(), indent=2))
    else:
        print(render_plan(chosen, spec, layer_names(spec.model_settings)))


@needs_server
def drain(
    node_id: Annotated[str, typer.Argument(help="the Ray node id (hex) to drain")],
    address: Annotated[str, typer.Option(help="Ray cluster address (HOST:PORT or auto)")] = "auto",
    deadline_s: Annotated[float | None, typer.Option(
        min=0, help="seconds until the node goes away (none: no deadline)")] = None,
) -> None:
    """Drain a node: Ray schedules nothing new there and pipewave jobs move their stages off it
    before it goes."""
    from pipewave.service.cluster.runtime import disconnect

    _connect(address)
    from pipewave.service.control.elastic import DrainError, drain_node

    try:
        drain_node(node_id, deadline_s)
    except DrainError as err:
        fail(str(err))
    finally:
        disconnect()
    print(f"draining {node_id}")


@needs_server
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port (default 8000)")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address; none starts an embedded local one")] = None,
    submit: Annotated[list[Path] | None, typer.Option(
        help="also submit this job file once the service is up (repeatable)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the service: REST API, dashboard and job queue (settings: PIPEWAVE_* env vars)."""
    from pydantic import ValidationError

    from pipewave.api.settings import Settings
    from pipewave.service.spec import SpecError, load_spec

    try:
        overrides = {k: v for k, v in {"host": host, "port": port, "ray_address": address}.items()
                     if v is not None}
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        e = err.errors()[0]
        fail(f"invalid setting {'.'.join(map(str, e['loc']))}: {e['msg']}")
    try:
        specs = [load_spec(p) for p in submit or []]
    except SpecError as err:
        fail(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.INFO if verbose else logging.WARNING)
    _connect(settings.ray_address, settings.local_cpus)
    import uvicorn

    from pipewave.api.app import create_app
    from pipewave.api.dispatch import min_slots

    app_ = create_app(settings)
    for spec in specs:
        row, _ = app_.state.store.create_job(spec.model_dump(mode="json"), lambda i: settings.jobs_dir / i,
                                             min_slots(spec))
        print(f"submitted {spec.name} as job {row.id}")
    url = f"http://{settings.host}:{settings.port}"
    where = "$PIPEWAVE_API_TOKEN" if settings.api_token else str(settings.token_file)
    print(f"pipewave serving on {url}  (API docs: {url}/docs; state in {settings.home})")
    print(f"API token: in {where}")
    if settings.host in ("127.0.0.1", "localhost", "::1"):  # this machine only: the link is safe
        print(f"dashboard: {url}/login?token={app_.state.token}", flush=True)
    else:
        print(f"dashboard: {url}/ (sign in with the token)", flush=True)
    try:
        uvicorn.run(app_, host=settings.host, port=settings.port, log_level="warning")
    finally:
        from pipewave.service.cluster.runtime import disconnect

        disconnect()
