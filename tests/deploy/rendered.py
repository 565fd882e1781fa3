"""Look-ups in a rendered overlay (a list of Kubernetes objects), shared by the manifest checks."""

from __future__ import annotations

from typing import Any

from tests.deploy.kustomize import Manifest, find, pod_spec

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
GATEWAY = "unclip-gateway"
WORKER = "unclip-worker"
REDIS = "unclip-redis"
SETTINGS_CONFIGMAP = "unclip-config"
API_KEYS_SECRET = "unclip-api-keys"


def workloads(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def template_labels(workload: Manifest) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) picks `labels`."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def container(workload: Manifest, index: int = 0) -> Manifest:
    return workload["spec"]["template"]["spec"]["containers"][index]


def container_port(container_spec: Manifest, port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container port number it reaches."""
    if isinstance(port, int):
        return port
    for declared in container_spec.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    raise AssertionError(f"container {container_spec['name']} has no port named {port}")


def settings_data(objects: list[Manifest]) -> dict[str, str]:
    return find(objects, "ConfigMap", SETTINGS_CONFIGMAP)["data"]


def volume_of_mount(workload: Manifest, mount_path: str) -> Manifest | None:
    """The pod volume mounted at `mount_path` in the first container, or None."""
    spec = pod_spec(workload)
    assert spec is not None
    mounts = [m for m in container(workload).get("volumeMounts", []) if m["mountPath"] == mount_path]
    if not mounts:
        return None
    volumes = [v for v in spec.get("volumes", []) if v["name"] == mounts[0]["name"]]
    assert volumes, f"volume {mounts[0]['name']} is mounted but not declared"
    return {**volumes[0], "readOnly": mounts[0].get("readOnly", False)}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2", 4, "8Gi") as a number, for comparisons."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, scale in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)
