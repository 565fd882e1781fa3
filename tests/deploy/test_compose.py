"""docker/compose.yaml (and the checkpoint override) parse and wire Redis with AOF, the gateway and the
workers together. `docker compose config` needs the compose plugin, which CI lacks: these read the YAML."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
WORKERS = ("worker", "worker-cpu")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def seconds(duration: str) -> float:
    """A compose duration ("10m", "90s", "1h30m") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}[u] for n, u in parts)


def test_redis_keeps_an_append_only_file_on_a_volume(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    data_dir = command[command.index("--dir") + 1] if "--dir" in command else "/data"
    volumes = [v.split(":") for v in redis["volumes"]]
    assert next(name for name, target in volumes if target == data_dir) in compose["volumes"]
    tag = redis["image"].rsplit(":", 1)[1]
    assert int(tag.split(".")[0]) >= 7
    assert "healthcheck" in redis


@pytest.mark.parametrize("service", ["gateway", *WORKERS])
def test_services_build_from_the_dockerfiles_and_wait_for_redis(compose, service: str):
    spec = compose["services"][service]
    assert (REPO / "docker" / spec["build"]["context"] / spec["build"]["dockerfile"]).resolve().is_file()
    assert (DOCKER / spec["build"]["context"]).resolve() == REPO
    assert spec["depends_on"]["redis"]["condition"] == "service_healthy"
    assert spec["environment"]["UNCLIP_REDIS_URL"].startswith("redis://redis:6379")
    assert spec.get("read_only") is True
    assert any(entry.split(":")[0] == "/tmp" for entry in spec["tmpfs"])


@pytest.mark.parametrize("service", ["gateway", *WORKERS])
def test_environment_names_real_settings(compose, service: str):
    fields = {f"UNCLIP_{name.upper()}" for name in Settings.model_fields}
    unknown = set(compose["services"][service]["environment"]) - fields
    assert not unknown, f"{service}: settings the service ignores: {sorted(unknown)}"


@pytest.mark.parametrize("service", WORKERS)
def test_workers_pin_torch_drain_and_can_run_compiled_kernels(compose, service: str):
    spec = compose["services"][service]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(r for r in pyproject["project"]["optional-dependencies"]["worker"] if r.startswith("torch=="))
    assert pin == f"torch=={spec['build']['args']['TORCH_VERSION']}"
    lease = Settings.model_fields["lease_seconds"].default
    assert seconds(spec["stop_grace_period"]) > lease, "Docker would kill a draining worker"
    # Docker mounts a tmpfs noexec unless told: Triton's compiled launchers could not be loaded.
    assert "/tmp:exec" in spec["tmpfs"] or any(e.startswith("/tmp:exec,") for e in spec["tmpfs"])


def test_gpu_worker_reserves_one_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in compose["services"]["worker-cpu"]


def test_checkpoint_override_mounts_the_folder_the_setting_names():
    override = yaml.safe_load((DOCKER / "compose.checkpoint.yaml").read_text())["services"]["worker"]
    (volume,) = override["volumes"]
    assert volume["type"] == "bind" and volume["read_only"] is True
    assert override["environment"]["UNCLIP_CHECKPOINT"] == volume["target"]
