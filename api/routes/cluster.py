"""/api/v1/cluster: nodes, stage slots, which job stage runs where; drain a node."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pipewave.api.deps import ManagerDep, NodeId, SettingsDep
from pipewave.api.models import ClusterPublic, DrainPublic, DrainRequest, NodePublic, SlotSummary, StageOnNode

router = APIRouter(prefix="/cluster", tags=["cluster"])


@router.get("", response_model=ClusterPublic)
def cluster(settings: SettingsDep, manager: ManagerDep) -> ClusterPublic:
    import ray
    from pipewave.service.cluster.nodes import KIND_LABEL, draining_node_ids

    cps = settings.cpus_per_stage
    draining = draining_node_ids()
    avail: dict[str, Any] = ray._private.state.available_resources_per_node()
    nodes = []
    for n in ray.nodes():
        node_id, res = str(n["NodeID"]), n.get("Resources", {})
        labels = {str(k): str(v) for k, v in (n.get("Labels") or {}).items()}
        gpu_models = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
        kind = labels.get(KIND_LABEL) or (f"gpu:{gpu_models[0]}" if gpu_models else None)
        state = "DEAD" if not n.get("Alive") else "DRAINING" if node_id in draining else "ALIVE"
        free_cpus = float(avail.get(node_id, {}).get("CPU", 0)) if state != "DEAD" else 0.0
        nodes.append(NodePublic(
            node_id=node_id, state=state, address=str(n.get("NodeManagerAddress", "")), kind=kind,
            cpus=float(res.get("CPU", 0)), available_cpus=free_cpus, gpus=float(res.get("GPU", 0)),
            memory_bytes=int(res["memory"]) if res.get("memory") else None,
            slots=int(res.get("CPU", 0) // cps) if state == "ALIVE" else 0, labels=labels))
    total = sum(n.slots for n in nodes)
    free = sum(int(n.available_cpus // cps) for n in nodes if n.state == "ALIVE")
    stages = [StageOnNode(job_id=job_id, job_name=name, stage=st["stage"], node_id=st.get("node_id"),
                          layers=st["layers"], chunks=st.get("chunks") or [])
              for job_id, name, placed in manager.placements() for st in placed]
    return ClusterPublic(nodes=nodes, slots=SlotSummary(total=total, free=free, cpus_per_stage=cps),
                         stages=stages)


def total_slots(cpus_per_stage: float) -> int:
    """Stage slots of the alive, not draining nodes."""
    import ray
    from pipewave.service.cluster.nodes import draining_node_ids

    leaving = draining_node_ids()
    return sum(int(n.get("Resources", {}).get("CPU", 0) // cpus_per_stage) for n in ray.nodes()
               if n.get("Alive") and str(n["NodeID"]) not in leaving)


@router.post("/nodes/{node_id}/drain", status_code=202, response_model=DrainPublic,
             responses={404: {"description": "no such node"}, 409: {"description": "cannot drain"}})
def drain(node_id: NodeId, body: DrainRequest | None = None) -> DrainPublic:
    import ray
    from pipewave.service.control.elastic import DrainError, drain_node

    known = {str(n["NodeID"]): bool(n.get("Alive")) for n in ray.nodes()}
    if node_id.lower() not in known:
        raise HTTPException(404, detail=f"no such node: {node_id}")
    if not known[node_id.lower()]:
        raise HTTPException(409, detail=f"node {node_id} is dead")
    try:
        drain_node(node_id, body.deadline_s if body else None)
    except DrainError as err:
        raise HTTPException(409, detail=str(err)) from None
    return DrainPublic(node_id=node_id.lower(), draining=True)
