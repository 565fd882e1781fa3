"""What issue 6 asks of the rendered manifests, one check per property. Each takes the objects of one
rendered overlay and raises AssertionError naming what is wrong; test_manifests.py runs them on every
overlay and on deliberately broken copies (so each check is shown to fail)."""

from __future__ import annotations

import re

import kubernetes_validate

from service.cli import build_parser
from service.jobs.layout import GROUP
from service.settings import Settings
from tests.deploy.kustomize import Manifest, find, pod_spec, split_image
from tests.deploy.rendered import (
    API_KEYS_SECRET,
    GATEWAY,
    REDIS,
    SETTINGS_CONFIGMAP,
    WORKER,
    container,
    container_port,
    quantity,
    selects,
    settings_data,
    template_labels,
    volume_of_mount,
    workloads,
)

# Kinds kubernetes-validate has no schema for; each has its own check below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
# Loading a real checkpoint from a network volume onto a GPU: allow this long before liveness starts.
MIN_STARTUP_SECONDS = 600
# One batch of max_batch_size 1024-pixel images (prior + decoder + two upsamplers) on one GPU is minutes
# of work; a worker must be allowed at least this long to finish it after SIGTERM.
MIN_DRAIN_SECONDS = 300


def check_schemas(objects: list[Manifest], version: str) -> None:
    """Every built-in object validates, strictly (no unknown fields), against that Kubernetes version."""
    for manifest in objects:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_KINDS:
            continue
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            raise AssertionError(f"{name} against {version}: {path}: {error.message}") from None
        except kubernetes_validate.SchemaNotFoundError as error:
            raise AssertionError(error.message) from None


def check_hardened_workloads(objects: list[Manifest]) -> None:
    """Requests and limits, probes, non-root, no privilege escalation, read-only root, no API token."""
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec is not None
        name = workload["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, f"{name} mounts an API token"
        pod_security = spec.get("securityContext", {})
        for item in spec["containers"]:
            where = f"{name}/{item['name']}"
            resources = item.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                assert not missing, f"{where}: no {kind} for {sorted(missing)}"
            for resource, request in resources["requests"].items():
                limit = resources["limits"].get(resource)
                below = limit is None or quantity(request) <= quantity(limit)
                assert below, f"{where}: {resource} request > limit"
            assert "livenessProbe" in item, f"{where}: no liveness probe"
            assert "readinessProbe" in item or "startupProbe" in item, f"{where}: no readiness/startup probe"
            security = {**pod_security, **item.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot not set"
            assert security.get("runAsUser", 1) != 0, f"{where}: runs as uid 0"
            assert security.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
            assert security.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
            assert "ALL" in security.get("capabilities", {}).get("drop", []), f"{where}: capabilities kept"


def check_writable_tmp(objects: list[Manifest]) -> None:
    """Gateway (upload spooling) and worker (caches, the tiny fallback checkpoint) get an emptyDir /tmp."""
    for name in (GATEWAY, WORKER):
        volume = volume_of_mount(find(objects, "Deployment", name), "/tmp")
        assert volume is not None and "emptyDir" in volume, f"{name}: /tmp is not an emptyDir"
        assert not volume["readOnly"], f"{name}: /tmp mounted read-only"


def check_commands(objects: list[Manifest]) -> None:
    """The images' entrypoint is `unclip`; each Deployment's args must be the `unclip` command it runs."""
    parser = build_parser()
    for name, command in ((GATEWAY, "gateway"), (WORKER, "worker")):
        item = container(find(objects, "Deployment", name))
        assert "command" not in item, f"{name} overrides the image's entrypoint"
        assert parser.parse_args(item["args"]).command == command, f"{name} args {item['args']}"


def check_gateway(objects: list[Manifest]) -> None:
    """Probes /healthz and /readyz on UNCLIP_PORT; Service, HPA and PDB all reach the gateway pods."""
    gateway = find(objects, "Deployment", GATEWAY)
    item = container(gateway)
    port = int(settings_data(objects)["UNCLIP_PORT"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = item[probe]["httpGet"]
        assert http["path"] == path, f"gateway {probe} on {http['path']}"
        assert container_port(item, http["port"]) == port, f"gateway {probe} not on UNCLIP_PORT {port}"
    assert settings_data(objects).get("UNCLIP_HOST") == "0.0.0.0", "gateway listens on loopback only"
    assert "replicas" not in gateway["spec"], "gateway replicas set: re-applying would fight the HPA"

    labels = template_labels(gateway)
    service = find(objects, "Service", GATEWAY)
    assert selects({"matchLabels": service["spec"]["selector"]}, labels), "Service misses the gateway pods"
    for entry in service["spec"]["ports"]:
        assert container_port(item, entry["targetPort"]) == port, "Service targets the wrong port"

    hpa = find(objects, "HorizontalPodAutoscaler", GATEWAY)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", GATEWAY), f"HPA scales {target}"
    assert 1 <= hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]
    pdb = find(objects, "PodDisruptionBudget", GATEWAY)
    assert selects(pdb["spec"]["selector"], labels), "PDB misses the gateway pods"


def check_worker_lifecycle(objects: list[Manifest]) -> None:
    """Startup probe long enough to load a checkpoint; SIGTERM drain window above a batch and the lease."""
    worker = find(objects, "Deployment", WORKER)
    item = container(worker)
    settings = settings_data(objects)
    metrics_port = int(settings["UNCLIP_WORKER_METRICS_PORT"])
    startup = item.get("startupProbe")
    assert startup is not None, "worker has no startup probe"
    window = startup.get("initialDelaySeconds", 0) + startup.get("failureThreshold", 3) * startup.get(
        "periodSeconds", 10
    )
    assert window >= MIN_STARTUP_SECONDS, f"startup probe gives up after {window} s"
    for probe in ("startupProbe", "livenessProbe"):
        http = item[probe]["httpGet"]
        assert container_port(item, http["port"]) == metrics_port, f"worker {probe} not on the metrics port"

    grace = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    lease = float(settings.get("UNCLIP_LEASE_SECONDS", Settings.model_fields["lease_seconds"].default))
    assert grace > lease, f"grace period {grace} s is not longer than the lease {lease} s"
    assert grace >= MIN_DRAIN_SECONDS, f"grace period {grace} s is shorter than a batch"
    strategy = worker["spec"].get("strategy", {})
    assert strategy.get("rollingUpdate", {}).get("maxSurge") == 0, "a surge worker pod would need a spare GPU"


def check_redis(objects: list[Manifest]) -> None:
    """One Redis 7+ with AOF on a persistent volume, the address the settings give."""
    redis = find(objects, "StatefulSet", REDIS)
    item = container(redis)
    argv = [*item.get("command", []), *item.get("args", [])]
    options = dict(zip(argv[1::2], argv[2::2], strict=False)) if argv[:1] == ["redis-server"] else {}
    assert options.get("--appendonly") == "yes", f"Redis without AOF: {argv}"
    data_dir = options.get("--dir", "/data")
    claims = {c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts", [])}
    assert mounts.get(data_dir) in claims, f"Redis {data_dir} is not on a volume claim"
    _, tag, _ = split_image(item["image"])
    assert tag is not None and int(tag.split(".")[0]) >= 7, "KEDA's lag trigger needs Redis 7+"

    service = find(objects, "Service", REDIS)
    assert selects({"matchLabels": service["spec"]["selector"]}, template_labels(redis))
    url = settings_data(objects)["UNCLIP_REDIS_URL"]
    match = re.fullmatch(r"redis://([^:/]+):(\d+)(/\d+)?", url)
    assert match, f"UNCLIP_REDIS_URL {url}"
    assert match[1] in (REDIS, f"{REDIS}.{redis['metadata'].get('namespace')}.svc.cluster.local"), url
    assert int(match[2]) in [p["port"] for p in service["spec"]["ports"]], url


def check_redis_network_policy(objects: list[Manifest], keda_namespace: str | None) -> None:
    """Only gateway and worker pods (and, with KEDA, its operator) reach Redis, on 6379 only."""
    redis_labels = template_labels(find(objects, "StatefulSet", REDIS))
    policies = [
        p for p in objects
        if p["kind"] == "NetworkPolicy" and selects(p["spec"]["podSelector"], redis_labels)
    ]
    assert policies, "no NetworkPolicy selects the Redis pods: anything in the cluster reaches them"
    allowed = {name: template_labels(find(objects, "Deployment", name)) for name in (GATEWAY, WORKER)}
    others = {w["metadata"]["name"]: template_labels(w) for w in workloads(objects)}
    for name in allowed:
        others.pop(name)

    reached: set[str] = set()
    keda_peers = 0
    for policy in policies:
        assert "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: an ingress rule open to every source"
            ports = [p.get("port") for p in rule.get("ports", [{}])]
            assert ports == [6379], f"Redis policy opens ports {ports}"
            for peer in peers:
                assert "ipBlock" not in peer, "Redis reachable from an IP block"
                if "namespaceSelector" in peer:
                    namespace = peer["namespaceSelector"].get("matchLabels", {})
                    operator = peer.get("podSelector", {}).get("matchLabels", {})
                    assert keda_namespace is not None, "a peer in another namespace, and no KEDA here"
                    assert namespace == {"kubernetes.io/metadata.name": keda_namespace}, namespace
                    assert operator == {"app.kubernetes.io/name": "keda-operator"}, operator
                    keda_peers += 1
                    continue
                hits = {name for name, labels in allowed.items() if selects(peer["podSelector"], labels)}
                assert hits, f"peer {peer} selects neither gateway nor worker"
                strays = [name for name, labels in others.items() if selects(peer["podSelector"], labels)]
                assert not strays, f"peer {peer} also lets {strays} reach Redis"
                reached |= hits
    assert reached == set(allowed), f"only {sorted(reached)} may reach Redis"
    assert (keda_peers > 0) == (keda_namespace is not None), "KEDA's operator cannot read the stream lag"


def check_gpu(objects: list[Manifest], gpus: int) -> None:
    """The worker's nvidia.com/gpu limit is `gpus` (0: none asked for); nothing else asks for a GPU."""
    for workload in workloads(objects):
        for item in workload["spec"]["template"]["spec"]["containers"]:
            resources = item.get("resources", {})
            limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
            expected = gpus if workload["metadata"]["name"] == WORKER else 0
            assert limit == expected, f"{workload['metadata']['name']}: nvidia.com/gpu limit {limit}"
            request = resources.get("requests", {}).get("nvidia.com/gpu")
            assert request is None or int(request) == limit, "GPU request differs from its limit"


def check_images(objects: list[Manifest], images: list[Manifest]) -> None:
    """Every unclip container runs the image the overlay's `images:` names (kustomize set it)."""
    expected = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in images}
    assert set(expected) == {"unclip-gateway", "unclip-worker"}, f"images: {sorted(expected)}"
    for name in (GATEWAY, WORKER):
        image = container(find(objects, "Deployment", name))["image"]
        assert image == expected[name], f"{name} runs {image}, the overlay names {expected[name]}"


def check_settings_and_keys(objects: list[Manifest]) -> None:
    """ConfigMap keys are real settings that parse; the API keys come from the Secret, to the gateway."""
    data = settings_data(objects)
    fields = {f"UNCLIP_{name.upper()}" for name in Settings.model_fields}
    unknown = set(data) - fields
    assert not unknown, f"ConfigMap keys the service ignores: {sorted(unknown)}"
    # Raises on a value of the wrong type; strings convert as they would from the environment.
    Settings(**{key.removeprefix("UNCLIP_").lower(): value for key, value in data.items()})

    secret = find(objects, "Secret", API_KEYS_SECRET)
    assert set(secret["data"]) == {"UNCLIP_API_KEYS"}, sorted(secret["data"])
    assert "UNCLIP_API_KEYS" not in data, "API keys in the ConfigMap"
    sources = {
        name: container(find(objects, "Deployment", name)).get("envFrom", []) for name in (GATEWAY, WORKER)
    }
    for name, refs in sources.items():
        assert {"configMapRef": {"name": SETTINGS_CONFIGMAP}} in refs, f"{name} misses the settings"
    assert {"secretRef": {"name": API_KEYS_SECRET}} in sources[GATEWAY], "gateway misses the API keys"


def check_checkpoint(objects: list[Manifest]) -> None:
    """UNCLIP_CHECKPOINT unset = the checkpoint in the image; set = a folder on a read-only PVC mount."""
    path = settings_data(objects).get("UNCLIP_CHECKPOINT")
    if path is None:
        return
    worker = find(objects, "Deployment", WORKER)
    mounts = [m for m in container(worker).get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")]
    assert mounts, f"UNCLIP_CHECKPOINT {path} is on no volume"
    volume = volume_of_mount(worker, mounts[0]["mountPath"])
    assert volume is not None and "persistentVolumeClaim" in volume, f"{path} is not on a PVC"
    assert volume["readOnly"], "workers mount the checkpoint volume writable"
    find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def check_scaled_object(objects: list[Manifest], namespace: str, version: str) -> None:
    """KEDA's ScaledObject (CRD: not in the Kubernetes schemas): required fields per its CRD, the worker as
    target, one redis-streams trigger on the job stream's consumer-group lag, reachable from KEDA's pods."""
    scaled = find(objects, "ScaledObject", WORKER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == WORKER and target.get("kind", "Deployment") == "Deployment", target
    find(objects, "Deployment", target["name"])
    assert "replicas" not in find(objects, "Deployment", WORKER)["spec"], "worker replicas fight KEDA"
    for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec.get(field, 0), int), f"{field} must be an integer"
    assert 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis-streams", trigger["type"]
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values()), "trigger metadata values must be strings"
    stream = settings_data(objects).get("UNCLIP_STREAM", Settings.model_fields["stream"].default)
    assert metadata["stream"] == stream, f"trigger reads stream {metadata['stream']}, jobs go to {stream}"
    assert metadata["consumerGroup"] == GROUP, f"workers read as group {GROUP}"
    assert int(metadata["lagCount"]) > 0 and int(metadata["activationLagCount"]) >= 0
    assert "pendingEntriesCount" not in metadata and "streamLength" not in metadata, "not the lag mode"

    port = find(objects, "Service", REDIS)["spec"]["ports"][0]["port"]
    assert metadata.get("address") == f"{REDIS}.{namespace}.svc.cluster.local:{port}", (
        f"KEDA dials {metadata.get('address')} from its own namespace"
    )
    # The scale-down behaviour is the HPA's own type: validate it as part of an HPA.
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa = {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "keda"},
            "spec": {"scaleTargetRef": target, "maxReplicas": 1, "behavior": behavior},
        }
        check_schemas([hpa], version)
