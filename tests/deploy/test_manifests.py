"""The rendered k8s/ overlays satisfy every check in checks.py, and each check fails on a broken copy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy import checks
from tests.deploy.kustomize import Manifest, build, find
from tests.deploy.rendered import GATEWAY, REDIS, WORKER, container, settings_data

OVERLAYS_DIR = Path(__file__).resolve().parents[2] / "k8s" / "overlays"
# The oldest Kubernetes still in mainstream support at the big clouds, and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# What each overlay is for: GPUs per worker, and the namespace KEDA's operator runs in (None: no KEDA).
OVERLAYS = {"cpu": {"gpus": 0, "keda": None}, "gpu": {"gpus": 1, "keda": "keda"}}


def kustomization(overlay: str) -> Manifest:
    return yaml.safe_load((OVERLAYS_DIR / overlay / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {overlay: build(OVERLAYS_DIR / overlay) for overlay in OVERLAYS}


def test_every_overlay_is_covered():
    assert {p.name for p in OVERLAYS_DIR.iterdir() if p.is_dir()} == set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_schemas(rendered, overlay: str, version: str):
    checks.check_schemas(rendered[overlay], version)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_hardened_and_bounded(rendered, overlay: str):
    checks.check_hardened_workloads(rendered[overlay])
    checks.check_writable_tmp(rendered[overlay])
    checks.check_commands(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_service_hpa_pdb(rendered, overlay: str):
    checks.check_gateway(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_loads_then_drains_within_its_grace_period(rendered, overlay: str):
    checks.check_worker_lifecycle(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_is_persistent_and_reachable_only_by_gateway_and_workers(rendered, overlay: str):
    checks.check_redis(rendered[overlay])
    checks.check_redis_network_policy(rendered[overlay], OVERLAYS[overlay]["keda"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_limit(rendered, overlay: str):
    checks.check_gpu(rendered[overlay], OVERLAYS[overlay]["gpus"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_set_by_the_overlay(rendered, overlay: str):
    checks.check_images(rendered[overlay], kustomization(overlay)["images"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_from_configmap_keys_from_secret_checkpoint_from_image_or_pvc(rendered, overlay: str):
    checks.check_settings_and_keys(rendered[overlay])
    checks.check_checkpoint(rendered[overlay])


def test_gpu_overlay_scales_workers_with_keda(rendered):
    checks.check_scaled_object(rendered["gpu"], kustomization("gpu")["namespace"], KUBERNETES_VERSIONS[0])


def test_cpu_overlay_needs_nothing_a_bare_cluster_lacks(rendered):
    objects = rendered["cpu"]
    custom = [o["kind"] for o in objects if (o["apiVersion"], o["kind"]) in checks.CUSTOM_KINDS]
    assert not custom, f"{custom} need CRDs a bare kind cluster does not have"
    assert "UNCLIP_CHECKPOINT" not in settings_data(objects), "the cpu overlay runs the image's checkpoint"
    assert [o for o in objects if o["kind"] == "PersistentVolumeClaim"] == [], "shared PVCs need RWX storage"
    assert settings_data(objects)["UNCLIP_DEVICE"] == "cpu"
    assert find(objects, "Deployment", WORKER)["spec"].get("replicas", 1) >= 1


# ---- each check fails when the manifests break what it guards


def _worker(objects: list[Manifest]) -> Manifest:
    return find(objects, "Deployment", WORKER)


def _drop_gpu(objects):
    del container(_worker(objects))["resources"]["limits"]["nvidia.com/gpu"]


def _aof_off(objects):
    args = container(find(objects, "StatefulSet", REDIS))["args"]
    args[args.index("--appendonly") + 1] = "no"


def _short_grace(objects):
    _worker(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20


def _short_startup(objects):
    container(_worker(objects))["startupProbe"]["failureThreshold"] = 3


def _open_redis(objects):
    find(objects, "NetworkPolicy", "unclip-redis")["spec"]["ingress"][0]["from"].append({"podSelector": {}})


def _writable_root(objects):
    container(find(objects, "Deployment", GATEWAY))["securityContext"]["readOnlyRootFilesystem"] = False


def _no_limits(objects):
    del container(_worker(objects))["resources"]["limits"]


def _hand_set_image(objects):
    container(_worker(objects))["image"] = "unclip-worker:latest"


def _wrong_group(objects):
    find(objects, "ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "worker"


def _short_keda_address(objects):
    find(objects, "ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]["address"] = "unclip-redis:6379"


def _setting_typo(objects):
    settings_data(objects)["UNCLIP_LEASE_SECOND"] = "30"


def _unknown_field(objects):
    container(find(objects, "Deployment", GATEWAY))["resource"] = {}


def _readiness_on_healthz(objects):
    container(find(objects, "Deployment", GATEWAY))["readinessProbe"]["httpGet"]["path"] = "/healthz"


def _writable_checkpoint(objects):
    for mount in container(_worker(objects))["volumeMounts"]:
        mount.pop("readOnly", None)
    for volume in _worker(objects)["spec"]["template"]["spec"]["volumes"]:
        volume.get("persistentVolumeClaim", {}).pop("readOnly", None)


BREAKAGES: list[tuple[str, Callable[[list[Manifest]], None], Callable[[list[Manifest]], None]]] = [
    ("gpu", _drop_gpu, lambda o: checks.check_gpu(o, 1)),
    ("cpu", _aof_off, checks.check_redis),
    ("gpu", _short_grace, checks.check_worker_lifecycle),
    ("gpu", _short_startup, checks.check_worker_lifecycle),
    ("cpu", _open_redis, lambda o: checks.check_redis_network_policy(o, None)),
    ("gpu", _writable_root, checks.check_hardened_workloads),
    ("cpu", _no_limits, checks.check_hardened_workloads),
    ("gpu", _hand_set_image, lambda o: checks.check_images(o, kustomization("gpu")["images"])),
    ("gpu", _wrong_group, lambda o: checks.check_scaled_object(o, "unclip", "1.30")),
    ("gpu", _short_keda_address, lambda o: checks.check_scaled_object(o, "unclip", "1.30")),
    ("cpu", _setting_typo, checks.check_settings_and_keys),
    ("cpu", _unknown_field, lambda o: checks.check_schemas(o, "1.30")),
    ("cpu", _readiness_on_healthz, checks.check_gateway),
    ("gpu", _writable_checkpoint, checks.check_checkpoint),
]


@pytest.mark.parametrize(("overlay", "breakage", "check"), BREAKAGES, ids=[b[1].__name__ for b in BREAKAGES])
def test_check_fails_on_broken_manifests(rendered, overlay: str, breakage, check):
    objects = copy.deepcopy(rendered[overlay])
    check(objects)  # passes as shipped
    breakage(objects)
    with pytest.raises(AssertionError):
        check(objects)
