"""Render this repository's own kustomizations (k8s/base, k8s/overlays/*) without a kustomize binary.

Only the subset k8s/ uses is implemented, and anything else is refused rather than half-done:
- `resources`: YAML files and folders holding a kustomization.yaml (built recursively, as kustomize does);
- `configMapGenerator` / `secretGenerator` with `literals` and `envs`, behaviours create and merge, and
  only with `generatorOptions.disableNameSuffixHash: true` (no content-hash names);
- `patches` from `path` or inline `patch`, either a strategic merge patch (maps merge, `null` deletes,
  `$patch: delete` drops the whole object, and the lists below merge by key; every other list replaces,
  which is what Kubernetes declares for args, command, tolerations, envFrom, HPA metrics, ...) or a JSON
  6902 list of add/replace/remove operations, which then needs a `target`;
- `namespace` (every object but the cluster-scoped kinds below) and `images` (newName, newTag, digest) on
  the containers and initContainers of pod templates.
The order follows kustomize: resources, generators, patches, then namespace and images.
tests/deploy/test_kustomize.py compares the result with `kubectl kustomize` where kubectl exists.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_FILE = "kustomization.yaml"
SUPPORTED_FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "images", "patches",
    "configMapGenerator", "secretGenerator", "generatorOptions",
}
CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass",
}
# List fields that Kubernetes merges by key in a strategic merge patch (patchMergeKey), for the kinds
# k8s/ patches: pod spec, container, Service. "ports" means containerPort in a container, port in a Service.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),
}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this loader does not implement."""


def build(folder: Path) -> list[Manifest]:
    """All objects that `kustomize build folder` would print, in resource order (not kustomize's sort)."""
    folder = Path(folder)
    kustomization = yaml.safe_load((folder / KUSTOMIZATION_FILE).read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{folder}: {sorted(unknown)}")

    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        objects += build(path) if path.is_dir() else read_manifests(path)

    if kustomization.get("configMapGenerator") or kustomization.get("secretGenerator"):
        options = kustomization.get("generatorOptions", {})
        if not options.get("disableNameSuffixHash"):
            raise UnsupportedKustomization(f"{folder}: generated names with a hash suffix")
        for generator in kustomization.get("configMapGenerator", []):
            _generate(objects, folder, generator, "ConfigMap")
        for generator in kustomization.get("secretGenerator", []):
            _generate(objects, folder, generator, "Secret")

    for patch in kustomization.get("patches", []):
        objects = _apply_patch(objects, folder, patch)

    if "namespace" in kustomization:
        for manifest in objects:
            if manifest["kind"] not in CLUSTER_SCOPED_KINDS:
                manifest["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for manifest in objects:
            _set_image(manifest, image)
    return objects


def read_manifests(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The one object of that kind and name; KeyError when absent."""
    matches = [m for m in objects if m["kind"] == kind and m["metadata"]["name"] == name]
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} objects {kind}/{name}")
    return matches[0]


# ---- generators


def _generate(objects: list[Manifest], folder: Path, generator: Manifest, kind: str) -> None:
    unknown = set(generator) - {"name", "behavior", "literals", "envs"}
    if unknown:
        raise UnsupportedKustomization(f"{kind} generator {generator['name']}: {sorted(unknown)}")
    pairs: list[str] = list(generator.get("literals", []))
    for env_file in generator.get("envs", []):
        lines = (folder / env_file).read_text().splitlines()
        pairs += [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    data = dict(pair.split("=", 1) for pair in pairs)

    behavior = generator.get("behavior", "create")
    existing = [m for m in objects if m["kind"] == kind and m["metadata"]["name"] == generator["name"]]
    if behavior == "create":
        if existing:
            raise ValueError(f"{kind}/{generator['name']} already exists; use behavior: merge")
        manifest: Manifest = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            manifest["type"] = "Opaque"
        objects.append(manifest)
    elif behavior == "merge":
        if not existing:
            raise ValueError(f"{kind}/{generator['name']}: nothing to merge into")
        manifest = existing[0]
    else:
        raise UnsupportedKustomization(f"generator behavior {behavior}")

    if kind == "Secret":
        data = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    manifest["data"] = {**manifest.get("data", {}), **data}


# ---- patches


def _apply_patch(objects: list[Manifest], folder: Path, entry: Manifest) -> list[Manifest]:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise UnsupportedKustomization(f"patch fields {sorted(unknown)}")
    text = (folder / entry["path"]).read_text() if "path" in entry else entry["patch"]
    documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    target = entry.get("target")

    if len(documents) == 1 and isinstance(documents[0], list):  # JSON 6902
        if target is None:
            raise ValueError(f"JSON 6902 patch {entry.get('path')} needs a target")
        matched = [m for m in objects if _matches(m, target)]
        if not matched:
            raise ValueError(f"patch target {target} matches nothing")
        for manifest in matched:
            for operation in documents[0]:
                _json_patch(manifest, operation)
        return objects

    for patch in documents:
        selector = target or {
            "kind": patch["kind"], "name": patch["metadata"]["name"], "apiVersion": patch.get("apiVersion"),
        }
        matched = [m for m in objects if _matches(m, selector)]
        if not matched:
            raise ValueError(f"patch {entry.get('path')} matches nothing")
        if patch.get("$patch") == "delete":
            objects = [m for m in objects if not any(m is hit for hit in matched)]
            continue
        for manifest in matched:
            strategic_merge(manifest, patch)
    return objects


def _matches(manifest: Manifest, selector: Manifest) -> bool:
    group, _, version = manifest["apiVersion"].rpartition("/")
    if "apiVersion" in selector and selector["apiVersion"] not in (None, manifest["apiVersion"]):
        return False
    checks = {
        "kind": manifest["kind"], "name": manifest["metadata"]["name"], "group": group, "version": version,
    }
    unknown = set(selector) - set(checks) - {"apiVersion"}
    if unknown:
        raise UnsupportedKustomization(f"patch target fields {sorted(unknown)}")
    return all(selector[key] == value for key, value in checks.items() if key in selector)


def strategic_merge(base: Manifest, patch: Manifest) -> None:
    """Merge `patch` into `base` in place (the subset described in the module docstring)."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedKustomization(f"directive {key} inside an object")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            _merge_list(base[key], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def _merge_list(base: list[Manifest], patch: list[Manifest], keys: tuple[str, ...]) -> None:
    # Items new to the list go before the old ones, in patch order, as kustomize places them.
    added: list[Manifest] = []
    for item in patch:
        key = next((k for k in keys if k in item), None)
        if key is None:
            raise ValueError(f"list item without a merge key {keys}: {item}")
        same = [old for old in base if old.get(key) == item[key]]
        if item.get("$patch") == "delete":
            base[:] = [old for old in base if old.get(key) != item[key]]
        elif same:
            strategic_merge(same[0], item)
        else:
            added.append(copy.deepcopy(item))
    base[:0] = added


def _json_patch(manifest: Manifest, operation: Manifest) -> None:
    # RFC 6902 paths are RFC 6901 pointers: "/a/0/b", with "~1" for "/" and "~0" for "~" in a key.
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in operation["path"].split("/")[1:]]
    parent: Any = manifest
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    op = operation["op"]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            parent[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[index]
        else:
            raise UnsupportedKustomization(f"JSON patch op {op}")
    elif op in ("add", "replace"):
        if op == "replace" and last not in parent:
            raise ValueError(f"replace of a missing path {operation['path']}")
        parent[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del parent[last]
    else:
        raise UnsupportedKustomization(f"JSON patch op {op}")


# ---- images


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """"registry:5000/team/app:1.0@sha256:..." -> ("registry:5000/team/app", "1.0", "sha256:...")."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:  # a colon before the last slash is a registry port, not a tag
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _set_image(manifest: Manifest, image: Manifest) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise UnsupportedKustomization(f"images fields {sorted(unknown)}")
    for container in pod_containers(manifest):
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            tag = image.get("newTag", tag)
            suffix = f"@{digest}" if digest and "newTag" not in image else ""
            container["image"] = name + (f":{tag}" if tag else "") + suffix


def pod_spec(manifest: Manifest) -> Manifest | None:
    """The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job: spec.template.spec)."""
    template = manifest.get("spec", {}).get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        return template["spec"]
    return None


def pod_containers(manifest: Manifest) -> list[Manifest]:
    spec = pod_spec(manifest)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]
