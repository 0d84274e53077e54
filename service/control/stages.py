"""The stage actors of a job: one per stage, placed on the node the planner chose for it (or
packed in a placement group for a uniform split), their point-to-point group connected; their
checkpoints saved and resumed; stopped at the end. Activations and gradients never pass through
the controller: the actors exchange them directly.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from pipewave.service.control import checkpoint as ckpt
from pipewave.service.control.job import STAGES_READY, JobBase, JobError, stage_bundle
from pipewave.service.planning.partition import Partition
from pipewave.service.spec import JobSpec
from pipewave.workers.stage import StageWorker
from pipewave.workers.state import describe, hull, overlaps, payload_chunks

logger = logging.getLogger("pipewave.service.control.controller")  # one logger for the whole controller


class StagesMixin(JobBase):
    """Starting, connecting, checkpointing and stopping the stage actors."""

    # -- stage actors ----------------------------------------------------------------------
    def _start_actors(self) -> None:
        """One stage actor per stage of ``self.partition``, placed as planned (or packed in a
        placement group for a uniform split), their stage-to-stage group connected."""
        S = self.spec.num_stages
        bundle = stage_bundle(self.opts.cpus_per_stage, self._choose_gpus())
        strategies: list[Any]
        if self.stage_nodes:  # planned: each stage on the node the planner chose for it
            strategies = [NodeAffinitySchedulingStrategy(n, soft=False) for n in self.stage_nodes]
        else:  # uniform: reserve all stages at once, packed
            pg = self.stages.pg = placement_group([bundle] * S, strategy="PACK",
                                                  name=f"pipewave-{self.spec.name}")
            if not _wait(pg.ready(), self.opts.ready_timeout_s):
                raise JobError(f"the cluster cannot place {S} stages of {bundle} within "
                               f"{self.opts.ready_timeout_s:.0f}s (resources: {ray.cluster_resources()})")
            strategies = [PlacementGroupSchedulingStrategy(pg, s) for s in range(S)]
        self.stages.actors = [self._new_actor(s, strategies[s]) for s in range(S)]
        self._connect()

    def _new_actor(self, s: int, strategy: Any, spec: JobSpec | None = None,
                   partition: Partition | None = None) -> Any:
        """Stage ``s`` of the current partition (or of ``partition`` of the resolved ``spec``)
        in a new actor (fresh weights), with the GPUs chosen when the job's stages started."""
        spec, partition = spec or self.spec, partition or self.partition
        S = spec.num_stages
        cls = ray.remote(concurrency_groups={"control": 2})(StageWorker)  # type: ignore[call-overload]
        threads = self.opts.threads_per_stage or max(1, (os.cpu_count() or 1) // S)
        chunks = self._layout(spec, partition)[s]
        return cls.options(num_cpus=self.opts.cpus_per_stage, num_gpus=self.stages.gpus_per_stage,
                           max_restarts=0,
                           scheduling_strategy=strategy).remote(
            spec.stage_config(), s, S, chunks, threads)

    def _connect(self) -> None:
        """Form the stages' point-to-point group (after every start or move)."""
        S = self.spec.num_stages
        infos = ray.get([a.info.remote() for a in self.actors], timeout=self.opts.ready_timeout_s)
        self.stages.on_gpus = any(str(i["device"]).startswith("cuda") for i in infos)
        port = ray.get(self.actors[0].rendezvous_port.remote())
        ray.get([a.init_comm.remote(infos[0]["ip"], port) for a in self.actors],
                timeout=self.opts.ready_timeout_s)
        where = ", ".join(f"{i['stage']}: layers {describe(i['chunks'])} on {i['device']}"
                          for i in infos)
        self._emit("info", f"{S} stages ready ({where})", topic=STAGES_READY, stages=[
            {k: i[k] for k in ("stage", "layers", "chunks", "node_id", "device", "params")}
            for i in infos])

    # -- checkpoints -----------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        d = ckpt.step_dir(self.output, self.step_done)
        d.mkdir(parents=True, exist_ok=True)
        files = ray.get([a.save.remote(str(d / f"stage-{s}.pt")) for s, a in enumerate(self.actors)])
        stages = [{"stage": s, "layers": list(hull(chunks)), "chunks": [list(c) for c in chunks],
                   "file": f["file"], "bytes": f["bytes"]}
                  for s, (f, chunks) in enumerate(zip(files, self._layout(), strict=True))]
        ckpt.write_manifest(d, self.step_done, self.spec.model_dump(mode="json"), stages)
        self.checkpoints.append(str(d))
        keep = self.spec.checkpoint.keep_last
        pruned = ckpt.retain(self.output, keep) if keep is not None else []
        if pruned:
            gone = {str(ckpt.step_dir(self.output, p)) for p in pruned}
            self.checkpoints[:] = [c for c in self.checkpoints if c not in gone]
        note = f" (deleted step {', '.join(map(str, pruned))}: keep_last {keep})" if pruned else ""
        self._emit("checkpoint", f"checkpoint at step {self.step_done}{note}", path=str(d),
                   pruned=pruned)

    def _check_checkpoint(self, record: ckpt.CheckpointRecord) -> dict[str, Any]:
        """Refuse another job's checkpoint; return its spec (resolved stages, microbatches)."""
        manifest = ckpt.read_manifest(record.path)
        mine = _flat(self.request.model_dump(mode="json"))
        theirs = _flat(dict(manifest["spec"]))
        free: tuple[str, ...] = ("steps", "checkpoint.", "partition", "max_stages", "stages",
                                 "microbatches")
        if self.request.schedule == "auto":  # (any synchronous schedule resumes another's state)
            free += ("chunks", "waves")
        differ = sorted(k for k in mine.keys() | theirs.keys()  # ("auto": the planner's choice)
                        if not k.startswith(free) and mine.get(k) not in (theirs.get(k), "auto"))
        if differ:
            raise JobError(f"{record.path} belongs to a different job (fields differ: "
                           f"{', '.join(differ)}); use another --output or --no-resume")
        return dict(manifest["spec"])

    def _resume(self, record: ckpt.CheckpointRecord) -> None:
        """Load the checkpoint into the stages; every stage reads the files that hold its layers,
        so the checkpoint's partition (and stage count) need not be this run's."""
        manifest = ckpt.read_manifest(record.path)
        files = [(payload_chunks(e), str(record.path / e["file"])) for e in manifest["stages"]]
        ray.get([a.load.remote([f for theirs, f in files if overlaps(mine, theirs)])
                 for a, mine in zip(self.actors, self._layout(), strict=True)])
        self.training.step_done = record.step
        if not self.metrics:  # (not when this job re-partitions itself)
            self.training.first_step = record.step
        before = [list(c) for chunks, _ in files for c in chunks]
        moved = f" (re-partitioned from {before})" if sorted(before) != sorted(
            list(b) for b in self.partition) else ""
        self._emit("info", f"resumed from checkpoint at step {record.step}{moved}",
                   path=str(record.path))

    def _start_fresh(self) -> None:
        """Training from step 0: earlier checkpoints and metrics in the output are another run's."""
        old = ckpt.latest(self.output)
        if old is not None:
            ckpt.prune(self.output, keep=0)
            self._emit("info", f"starting from step 0: removed the earlier run's checkpoints "
                               f"(up to step {old.step}) from {self.output}")
        (self.output / "metrics.jsonl").unlink(missing_ok=True)

    # -- stopping --------------------------------------------------------------------------
    def _teardown(self) -> None:
        st = self.stages
        for a in [*st.actors, *st.orphans, *st.prestarted.values()]:
            try:
                ray.kill(a)
            except Exception:  # already dead
                logger.debug("actor already gone", exc_info=True)
        st.actors, st.orphans, st.prestarted = [], [], {}
        if st.pg is not None:
            try:
                remove_placement_group(st.pg)
            except Exception:
                logger.debug("placement group already removed", exc_info=True)
            st.pg = None


def _wait(ref: Any, timeout: float) -> bool:
    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
