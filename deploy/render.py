"""``kustomize build`` for the subset of kustomize that ``deploy/`` uses, in plain Python.

    python deploy/render.py deploy/overlays/cpu      # multi-document YAML on stdout

Real clusters use ``kubectl apply -k deploy/overlays/cpu`` (kustomize does all of this and more);
this renderer lets the tests (and anyone without kubectl) see the exact objects offline. A
kustomization may use only these fields, anything else is an error (never silently ignored):

- ``resources``: YAML files (one or more documents each) and directories holding a
  ``kustomization.yaml`` (rendered recursively first, so an overlay edits its base's output);
- ``patches``: ``{path: FILE, target: {kind, name}}`` where FILE is a JSON 6902 patch, a YAML list
  of ``{op, path, value}`` with ``op`` one of add / replace / remove / test (``test`` fails the
  build unless the value there equals ``value``: it pins what an index such as ``env/3`` means;
  ``-`` appends to a list, ``~0``/``~1`` escape ``~`` and ``/``); a target matching nothing is an
  error;
- ``namespace``: set on every namespaced object;
- ``labels``: ``[{pairs: {...}}]`` added to every object's ``metadata.labels`` (not to selectors
  or pod templates: ``includeSelectors``/``includeTemplates`` may only be false);
- ``images``: ``[{name, newName, newTag}]`` rewrites ``image`` in every ``containers`` /
  ``initContainers`` list at any depth (custom resources included, as kustomize does).

Transformations run in kustomize's order: patches, namespace, labels, images.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}


_MISSING = object()


class RenderError(ValueError):
    """A kustomization this renderer cannot (or kustomize would not) build."""


def build(directory: Path) -> list[Obj]:
    """The objects ``kustomize build DIRECTORY`` would print (in resource order)."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = sorted(set(k) - FIELDS)
    if unknown:
        raise RenderError(f"{kfile}: unsupported field(s) {', '.join(unknown)}")
    objs: list[Obj] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objs += build(path)
        elif path.is_file():
            objs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        else:
            raise RenderError(f"{kfile}: resource {entry!r} not found")
    _check_unique(objs, kfile)
    for patch in k.get("patches", []):
        _apply_patch(objs, patch, directory)
    if "namespace" in k:
        for obj in objs:
            if obj.get("kind") not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError(f"{kfile}: labels with includeSelectors/includeTemplates are unsupported")
        for obj in objs:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry.get("pairs", {}))
    for image in k.get("images", []):
        for obj in objs:
            _set_image(obj, image)
    return objs


def _check_unique(objs: list[Obj], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objs:
        meta = obj.get("metadata") or {}
        key = (obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))
        if key in seen:
            raise RenderError(f"{where}: duplicate resource {key}")
        seen.add(key)


def _apply_patch(objs: list[Obj], patch: Obj, directory: Path) -> None:
    if set(patch) - {"path", "target"} or set(patch.get("target", {})) - {"kind", "name"}:
        raise RenderError(f"patch {patch}: only path and target {{kind, name}} are supported")
    ops = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(ops, list):
        raise RenderError(f"{patch['path']}: not a JSON 6902 patch (a list of operations)")
    target = patch.get("target", {})
    matched = [o for o in objs if all(
        (o.get("metadata", {}).get("name") if key == "name" else o.get(key)) == value
        for key, value in target.items())]
    if not matched:
        raise RenderError(f"{patch['path']}: target {target} matches no resource")
    for obj in matched:
        for op in ops:
            apply_op(obj, op)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(token: str, size: int) -> int:
    if not token.isdigit() or int(token) >= size:
        raise RenderError(f"list index {token!r} out of range (size {size})")
    return int(token)


def apply_op(doc: Obj, op: Obj) -> None:
    """Apply one JSON 6902 operation (add, replace, remove or test) to ``doc`` in place."""
    kind, tokens = op.get("op"), _pointer(str(op.get("path", "")))
    if kind not in ("add", "replace", "remove", "test"):
        raise RenderError(f"unsupported patch op {kind!r}")
    if kind != "remove" and "value" not in op:
        raise RenderError(f"{kind} {op['path']}: no value")
    value = copy.deepcopy(op.get("value"))
    parent: Any = doc
    for token in tokens[:-1]:
        if isinstance(parent, list):
            parent = parent[_index(token, len(parent))]
        elif isinstance(parent, dict) and token in parent:
            parent = parent[token]
        else:
            raise RenderError(f"{kind} {op['path']}: {token!r} does not exist")
    last = tokens[-1]
    if kind == "test":
        found = parent[_index(last, len(parent))] if isinstance(parent, list) else (
            parent.get(last, _MISSING) if isinstance(parent, dict) else _MISSING)
        if found != value:
            raise RenderError(f"test {op['path']}: {found!r} is not {value!r}")
    elif isinstance(parent, list):
        if kind == "add":
            parent.insert(len(parent) if last == "-" else _index(last, len(parent) + 1), value)
        elif kind == "replace":
            parent[_index(last, len(parent))] = value
        else:
            del parent[_index(last, len(parent))]
    elif isinstance(parent, dict):
        if kind != "add" and last not in parent:
            raise RenderError(f"{kind} {op['path']}: {last!r} does not exist")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = value
    else:
        raise RenderError(f"{kind} {op['path']}: parent is not an object or a list")


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/app:1.0`` -> (``registry:5000/app``, ``:1.0``); the tag or digest keeps its
    separator (``@sha256:...``), empty when the image has neither."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_image(node: Any, rule: Obj) -> None:
    if set(rule) - {"name", "newName", "newTag"}:
        raise RenderError(f"images entry {rule}: only name, newName and newTag are supported")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        name, tag = split_image(container["image"])
                        if name == rule["name"]:
                            tag = f":{rule['newTag']}" if "newTag" in rule else tag
                            container["image"] = rule.get("newName", name) + tag
            _set_image(value, rule)
    elif isinstance(node, list):
        for item in node:
            _set_image(item, rule)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="a directory holding kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        objs = build(args.directory)
    except (RenderError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False, explicit_start=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
