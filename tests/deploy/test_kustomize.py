"""The small kustomize of tests/deploy/kustomize.py: each feature k8s/ uses, on tiny kustomizations, and
the real overlays against `kubectl kustomize` (the reference) where kubectl is installed."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import UnsupportedKustomization, build, find, split_image

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
        - name: main
          image: app:1.0
          args: [serve, --fast]
          volumeMounts: [{name: tmp, mountPath: /tmp}]
        - name: sidecar
          image: registry.local:5000/tools/sidecar
      volumes: [{name: tmp, emptyDir: {}}]
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_strategic_merge_merges_containers_and_volumes_by_key_and_replaces_other_lists(tmp_path: Path):
    patch = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: main
          args: [serve]
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
"""
    write(tmp_path, {
        "app.yaml": DEPLOYMENT, "patch.yaml": patch,
        "kustomization.yaml": "resources: [app.yaml]\npatches: [{path: patch.yaml}]\n",
    })
    deployment = find(build(tmp_path), "Deployment", "app")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert [c["name"] for c in spec["containers"]] == ["main", "sidecar"]
    main = spec["containers"][0]
    assert main["image"] == "app:1.0"  # kept: the patch did not name it
    assert main["args"] == ["serve"]  # a plain list is replaced, not appended to
    assert [m["mountPath"] for m in main["volumeMounts"]] == ["/data", "/tmp"]
    assert sorted(v["name"] for v in spec["volumes"]) == ["data", "tmp"]


def test_delete_patch_drops_the_object_and_null_drops_a_field(tmp_path: Path):
    write(tmp_path, {
        "app.yaml": DEPLOYMENT + "---\napiVersion: v1\nkind: Service\nmetadata: {name: app}\nspec: {}\n",
        "drop.yaml": "$patch: delete\napiVersion: v1\nkind: Service\nmetadata: {name: app}\n",
        "unset.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec: {selector: ~}\n",
        "kustomization.yaml": "resources: [app.yaml]\npatches: [{path: drop.yaml}, {path: unset.yaml}]\n",
    })
    objects = build(tmp_path)
    assert [o["kind"] for o in objects] == ["Deployment"]
    assert "selector" not in objects[0]["spec"]


def test_json6902_patch_applies_to_its_target_only(tmp_path: Path):
    ops = "- {op: replace, path: /spec/template/spec/containers/0/image, value: other:2}\n" \
          "- {op: add, path: /metadata/labels, value: {tier: web}}\n"
    target = "{group: apps, version: v1, kind: Deployment, name: app}"
    write(tmp_path, {
        "app.yaml": DEPLOYMENT, "ops.yaml": ops,
        "kustomization.yaml": f"resources: [app.yaml]\npatches: [{{path: ops.yaml, target: {target}}}]\n",
    })
    deployment = find(build(tmp_path), "Deployment", "app")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "other:2"
    assert deployment["metadata"]["labels"] == {"tier": "web"}


def test_patch_that_matches_nothing_is_an_error(tmp_path: Path):
    write(tmp_path, {
        "app.yaml": DEPLOYMENT,
        "patch.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec: {replicas: 1}\n",
        "kustomization.yaml": "resources: [app.yaml]\npatches: [{path: patch.yaml}]\n",
    })
    with pytest.raises(ValueError, match="matches nothing"):
        build(tmp_path)


def test_overlay_merges_generators_and_sets_namespace_and_images(tmp_path: Path):
    write(tmp_path, {
        "base/app.yaml": DEPLOYMENT,
        "base/keys.env": "# comment\nKEY=a,b\n",
        "base/kustomization.yaml": """
resources: [app.yaml]
generatorOptions: {disableNameSuffixHash: true}
configMapGenerator: [{name: settings, literals: [A=1, B=2]}]
secretGenerator: [{name: keys, envs: [keys.env]}]
""",
        "overlay/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
        "overlay/kustomization.yaml": """
namespace: team
resources: [ns.yaml, ../base]
generatorOptions: {disableNameSuffixHash: true}
configMapGenerator: [{name: settings, behavior: merge, literals: [B=3]}]
images:
  - {name: app, newName: registry.example.com/app, newTag: "2.0"}
  - {name: registry.local:5000/tools/sidecar, newTag: "7"}
""",
    })
    objects = build(tmp_path / "overlay")
    assert find(objects, "ConfigMap", "settings")["data"] == {"A": "1", "B": "3"}
    secret = find(objects, "Secret", "keys")
    assert base64.b64decode(secret["data"]["KEY"]).decode() == "a,b"
    assert "namespace" not in find(objects, "Namespace", "team")["metadata"]
    deployment = find(objects, "Deployment", "app")
    assert deployment["metadata"]["namespace"] == "team"
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images == ["registry.example.com/app:2.0", "registry.local:5000/tools/sidecar:7"]


def test_unsupported_features_are_refused(tmp_path: Path):
    write(tmp_path, {"app.yaml": DEPLOYMENT, "kustomization.yaml": "resources: [app.yaml]\nnamePrefix: x-\n"})
    with pytest.raises(UnsupportedKustomization, match="namePrefix"):
        build(tmp_path)
    write(tmp_path, {"kustomization.yaml": "resources: [app.yaml]\nconfigMapGenerator: [{name: c}]\n"})
    with pytest.raises(UnsupportedKustomization, match="hash suffix"):
        build(tmp_path)


def test_split_image_tells_a_registry_port_from_a_tag():
    assert split_image("app") == ("app", None, None)
    assert split_image("reg:5000/a/app") == ("reg:5000/a/app", None, None)
    assert split_image("reg:5000/a/app:1.2@sha256:ab") == ("reg:5000/a/app", "1.2", "sha256:ab")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (the reference kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_render_exactly_as_kubectl_kustomize(overlay: Path):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    reference = [doc for doc in yaml.safe_load_all(rendered) if doc]

    def by_identity(objects: list[dict]) -> dict[tuple, dict]:
        return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}

    assert by_identity(build(overlay)) == by_identity(reference)
