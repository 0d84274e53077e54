"""/api/v1/cluster: nodes, stage slots, which job stage runs where; drain a node."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from pipewave.api.deps import ManagerDep, NodeId, SettingsDep
from pipewave.api.models import ClusterPublic, DrainPublic, DrainRequest
from pipewave.api.views import cluster_view
from pipewave.service.cluster.status import node_statuses
from pipewave.service.control.elastic import DrainError, drain_node

router = APIRouter(prefix="/cluster", tags=["cluster"])


@router.get("", response_model=ClusterPublic)
def cluster(settings: SettingsDep, manager: ManagerDep) -> ClusterPublic:
    return cluster_view(node_statuses(), manager.placements(), settings.cpus_per_stage)


@router.post("/nodes/{node_id}/drain", status_code=202, response_model=DrainPublic,
             responses={404: {"description": "no such node"}, 409: {"description": "cannot drain"}})
def drain(node_id: NodeId, body: DrainRequest | None = None) -> DrainPublic:
    known = {n.node_id: n.state != "DEAD" for n in node_statuses()}
    if node_id.lower() not in known:
        raise HTTPException(404, detail=f"no such node: {node_id}")
    if not known[node_id.lower()]:
        raise HTTPException(409, detail=f"node {node_id} is dead")
    try:
        drain_node(node_id, body.deadline_s if body else None)
    except DrainError as err:
        raise HTTPException(409, detail=str(err)) from None
    return DrainPublic(node_id=node_id.lower(), draining=True)
