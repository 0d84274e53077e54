"""Presenters: what the API serves, made from the store's rows, the controller's reports and the
cluster's node table. Pure functions (no Ray, no threads)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pipewave.api.models import (
    ApiState,
    ClusterPublic,
    JobPublic,
    ModelInfoPublic,
    NodePublic,
    SlotSummary,
    StageOnNode,
    Timeline,
)
from pipewave.api.store import JobStore, to_public
from pipewave.service.cluster.status import NodeStatus
from pipewave.service.spec import JobSpec
from pipewave.workers.models import model_for

logger = logging.getLogger(__name__)

Placements = Iterable[tuple[str, str, Sequence[dict[str, Any]]]]  # (job id, name, its stages)


class QueueView(Protocol):
    def queue_positions(self) -> dict[str, int]: ...


def public(store: JobStore, manager: QueueView, job_id: str) -> JobPublic | None:
    """A job as the API shows it (with its place in the queue while QUEUED); None: no such job."""
    row = store.get(job_id)
    if row is None:
        return None
    pos = manager.queue_positions().get(job_id) if row.state == ApiState.QUEUED else None
    job = to_public(row, pos)
    return job.model_copy(update={"model_info": model_info(job.spec)})


def model_info(spec: dict[str, Any]) -> ModelInfoPublic | None:
    """What the dashboard shows of a job's model (built on the meta device, once per spec); None
    when its stored spec builds none now (e.g. a plugin since uninstalled)."""
    return _model_info(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _model_info(spec_json: str) -> ModelInfoPublic | None:
    try:
        info = model_for(JobSpec.model_validate(json.loads(spec_json)).model_settings).info()
    except Exception as err:  # a stored spec that no longer builds must not fail GET /jobs/{id}
        logger.info("no model info for a job: %s", str(err).splitlines()[0] if str(err) else err)
        return None
    return ModelInfoPublic(kind=info.kind, architecture=info.architecture, parameters=info.parameters,
                           layers=info.layers)


def stage_placement(stages: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Where each stage runs, from the "N stages ready" event's ``stages``: its layers (the hull),
    its chunks ([start, end) per chunk, in chunk order; data without them is one chunk, its
    layers) and the names of its layers in chunk order."""
    out = []
    for st in stages:
        layers = [int(v) for v in st["layers"]]
        chunks = [[int(a), int(b)] for a, b in st.get("chunks") or [layers]]
        out.append({"stage": st["stage"], "layers": layers, "chunks": chunks,
                    "layer_names": [n for a, b in chunks for n in names[a:b]],
                    "node_id": st["node_id"], "device": st["device"]})
    return out


def timeline_of(reports: list[Any], first: int, count: int, microbatches: int, last: int = 4) -> Timeline:
    """The spans of a run's last ``last`` steps, relative to the first of them; each says which
    of its stage's chunks ran it."""
    lo = max(first, first + count - last)  # global step index (0-based) of the first kept step
    spans = []
    chunks = 1
    for rep in reports:
        for action, start, end in rep.spans:
            chunks = max(chunks, action.chunk + 1)
            step = first + action.microbatch // microbatches
            if step >= lo:
                spans.append((rep.stage, str(action.kind), action.microbatch % microbatches, step + 1,
                              action.chunk, start, end))
    if not spans:
        return Timeline(stages=len(reports), chunks_per_stage=chunks, steps=[lo + 1, first + count])
    t0 = min(s[5] for s in spans)
    t1 = max(s[6] for s in spans)
    return Timeline(stages=len(reports), chunks_per_stage=chunks, steps=[lo + 1, first + count], t0=t0,
                    duration_s=t1 - t0,
                    spans=[{"stage": st, "kind": k, "microbatch": mb, "step": sp, "chunk": c,
                            "start": a - t0, "end": b - t0} for st, k, mb, sp, c, a, b in spans])


def stages_on_nodes(placements: Placements) -> list[StageOnNode]:
    """Every running job's stages, each with the node it runs on."""
    return [StageOnNode(job_id=job_id, job_name=name, stage=st["stage"], node_id=st.get("node_id"),
                        layers=st["layers"], chunks=st.get("chunks") or [])
            for job_id, name, placed in placements for st in placed]


def cluster_view(nodes: Sequence[NodeStatus], placements: Placements, cpus_per_stage: float) -> ClusterPublic:
    """The cluster's nodes, its stage slots (all and free) and which job stage runs where."""
    cps = cpus_per_stage
    shown = [NodePublic(node_id=n.node_id, state=n.state, address=n.address, kind=n.kind, cpus=n.cpus,
                        available_cpus=n.available_cpus, gpus=n.gpus, memory_bytes=n.memory_bytes,
                        slots=n.slots(cps), labels=dict(n.labels)) for n in nodes]
    total = sum(n.slots for n in shown)
    free = sum(int(n.available_cpus // cps) for n in shown if n.state == "ALIVE")
    return ClusterPublic(nodes=shown, slots=SlotSummary(total=total, free=free, cpus_per_stage=cps),
                         stages=stages_on_nodes(placements))
