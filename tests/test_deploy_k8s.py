"""The Kubernetes and KServe manifests, without a cluster: render them with ``kubectl kustomize``,
validate every object against the Kubernetes schema (``kubernetes-validate``, strict: an unknown
or misspelt field fails), and check them against the real server — its probes answer 200 on a
``stlight serve`` started with the manifests' own command line and settings, the ports are the
image's ``EXPOSE`` (HTTP, then gRPC), the autoscaling metric is one that ``/metrics`` exports.

Skipped when no ``kubectl`` is installed (``.ci/run`` installs Debian's ``kubernetes-client``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import REPO, Server, free_port

from service.core.assets import DEFAULT_MODEL
from service.server.settings import ServeSettings

DEPLOY = REPO / "deploy"
VARIANTS = {"gpu": DEPLOY / "k8s", "cpu": DEPLOY / "k8s" / "cpu"}
KSERVE = DEPLOY / "kserve"
# the oldest Kubernetes these manifests claim (autoscaling/v2 and policy/v1 are GA since 1.23;
# 1.27 is the oldest release its vendors still patch) and the newest the validator knows
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not on PATH (apt-get install kubernetes-client; .ci/run does)"
)

Obj = dict[str, Any]


def render(folder: Path) -> list[Obj]:
    done = subprocess.run([str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {folder.relative_to(REPO)}:\n{done.stderr}"
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def one(objects: list[Obj], kind: str) -> Obj:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def image_port() -> int:
    (port,) = re.findall(r"^EXPOSE (\d+)", dockerfile(), re.M)
    return int(port)


def image_grpc_port() -> int:
    (port,) = re.findall(r"^EXPOSE \d+ (\d+)$", dockerfile(), re.M)
    return int(port)


def image_uid() -> int:
    (uid,) = re.findall(r"useradd .*--uid (\d+)", dockerfile())
    return int(uid)


def drain_seconds(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> float:
    """How long ``stlight serve`` with these STLIGHT_* settings lets requests finish after SIGTERM."""
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    return ServeSettings().drain_timeout_s


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def port_number(container: Obj, port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def probes(container: Obj) -> dict[str, Obj]:
    return {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container}


# ---------------------------------------------------------------------------------------
# the real server the probes are checked against
# ---------------------------------------------------------------------------------------


class LiveServer:
    """``stlight serve`` with a manifest's arguments and STLIGHT_* settings on loopback; what it
    answers at a path, and the metric names its /metrics exports."""

    def __init__(self, server: Server, grpc_port: int) -> None:
        self.server, self.grpc_port = server, grpc_port

    def status(self, path: str) -> int:
        return httpx.get(self.server.url + path, timeout=10).status_code

    def grpc_health(self, service: str) -> str:
        """What grpc.health.v1 Check answers for ``service`` (a Kubernetes gRPC probe's question)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    def metric_names(self) -> set[str]:
        text = httpx.get(self.server.url + "/metrics", timeout=10).text
        return {family.name for family in text_string_to_metric_families(text)} | {
            sample.name for family in text_string_to_metric_families(text) for sample in family.samples
        }


def serve_like(tmp: Path, argv: list[str], env: dict[str, str], mounts: dict[str, Path]) -> Iterator[LiveServer]:
    """Start ``stlight serve`` as a container would (``argv`` after ``stlight serve``, ``env``),
    with the container's mount paths mapped onto local folders and --host/--port on loopback."""
    args, grpc_port = list(argv), free_port()
    for name, value in (("--host", "127.0.0.1"), ("--port", "0"), ("--grpc-port", str(grpc_port))):
        if name in args:
            args[args.index(name) + 1] = value
    rewrite = {inside: str(outside) for inside, outside in mounts.items()}

    def local(value: str) -> str:
        for inside, outside in rewrite.items():
            if value == inside or value.startswith(inside + "/"):
                return outside + value[len(inside) :]
        return value

    server = Server(tmp / "server.log", *[local(a) for a in args], env={k: local(v) for k, v in env.items()})
    try:
        server.wait_listening(timeout=120)
        server.wait_ready(timeout=120)
    except BaseException:
        server.stop()
        raise
    yield LiveServer(server, grpc_port if "--grpc-port" in args else 0)
    assert server.stop() == 0, server.text()  # and it stops cleanly on SIGTERM


# ---------------------------------------------------------------------------------------
# Kubernetes: deploy/k8s (GPU) and deploy/k8s/cpu
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(VARIANTS[request.param])


@pytest.fixture(scope="module")
def live(variant: tuple[str, list[Obj]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The variant's container command and ConfigMap settings, served for real; its models
    volume holds the shipped default model under the file name the ConfigMap gives."""
    name, objects = variant
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = dict(one(objects, "ConfigMap")["data"])
    if name == "gpu":
        env["STLIGHT_DEVICE"] = "cpu"  # the one setting this GPU-less host must change
    tmp = tmp_path_factory.mktemp(f"k8s-{name}")
    models = tmp / "models"
    models.mkdir()
    model_file = env.get("STLIGHT_MODEL")
    if model_file:
        assert model_file.startswith("/models/"), model_file
        shutil.copy(DEFAULT_MODEL, models / model_file.removeprefix("/models/"))
    assert container["command"][:2] == ["stlight", "serve"]
    yield from serve_like(tmp, container["command"][2:], env, {"/models": models})


def test_every_object_is_valid_kubernetes(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    assert sorted(obj["kind"] for obj in objects) == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    )
    for version in K8S_VERSIONS:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_gpu_only_in_the_gpu_variant(variant: tuple[str, list[Obj]]) -> None:
    name, objects = variant
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    env = one(objects, "ConfigMap")["data"]
    image = pod["containers"][0]["image"]
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and env["STLIGHT_DEVICE"] == "cuda" and image.endswith(":gpu")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in limits and env["STLIGHT_DEVICE"] == "cpu" and image.endswith(":cpu")
        assert "tolerations" not in pod
        # ONNX Runtime's thread count is the CPU the pod may use, not the node's
        assert int(env["STLIGHT_INTRA_OP_THREADS"]) == int(limits["cpu"])


def test_probes_answer_on_the_real_server(variant: tuple[str, list[Obj]], live: LiveServer) -> None:
    _, objects = variant
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    found = probes(container)
    assert set(found) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in found.items():
        path = probe["httpGet"]["path"]
        assert port_number(container, probe["httpGet"]["port"]) == image_port(), kind
        assert live.status(path) == 200, f"{kind} {path}: not a route the ready server answers"
    # readiness (and the startup probe) must follow warm-up, liveness must not
    assert found["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/v2/health/ready")
    assert found["startupProbe"]["httpGet"]["path"] == found["readinessProbe"]["httpGet"]["path"]
    assert found["livenessProbe"]["httpGet"]["path"] in ("/healthz", "/v2/health/live")
    startup = found["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # CUDA start-up + warm-up


def test_port_is_the_images(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [image_port(), image_grpc_port()]
    assert int(flag(container["command"], "--port")) == image_port() and flag(container["command"], "--host") == "0.0.0.0"
    assert int(flag(container["command"], "--grpc-port")) == image_grpc_port()
    service = one(objects, "Service")
    http, grpc = service["spec"]["ports"]
    assert port_number(container, http["targetPort"]) == image_port()
    # gRPC is HTTP/2 without TLS: appProtocol tells meshes and gateways to balance it call by call
    assert port_number(container, grpc["targetPort"]) == image_grpc_port() and grpc["appProtocol"] == "kubernetes.io/h2c"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for selector in (service["spec"]["selector"], one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == image_port()


def test_autoscales_on_a_metric_the_server_exports(variant: tuple[str, list[Obj]], live: LiveServer) -> None:
    _, objects = variant
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stlight"}
    assert hpa["spec"]["minReplicas"] >= 2  # the PodDisruptionBudget may take one away
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "the server's own load signal, not CPU"
    name = metric["pods"]["metric"]["name"]
    assert name == "stlight_queue_depth"
    assert name in live.metric_names(), f"{name} is not on /metrics"
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert live.status(annotations["prometheus.io/path"]) == 200


def test_pod_is_locked_down(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()  # numeric: the kubelet can check non-root
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # with a read-only root, the one place the server writes (spooled uploads) is a volume
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_service_links_cannot_clobber_the_settings(variant: tuple[str, list[Obj]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A Service named ``stlight`` injects ``STLIGHT_PORT=tcp://...`` into pods unless service
    links are off, and the server reads that as its port setting."""
    _, objects = variant
    service = one(objects, "Service")
    monkeypatch.setenv(f"{service['metadata']['name'].upper().replace('-', '_')}_PORT", "tcp://10.96.0.10:8000")
    with pytest.raises(ValueError, match="port"):
        ServeSettings()
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_config_is_settings_the_server_knows(variant: tuple[str, list[Obj]], monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = variant
    config = one(objects, "ConfigMap")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]  # the hashed name
    for key, value in config["data"].items():
        assert key.startswith("STLIGHT_") and key.removeprefix("STLIGHT_").lower() in ServeSettings.model_fields, key
        monkeypatch.setenv(key, value)
    ServeSettings()  # every value valid
    assert config["data"]["STLIGHT_MODEL_CONTROL"] == "none"  # a load call through the Service reaches one replica


def test_graceful_stop_fits_the_grace_period(variant: tuple[str, list[Obj]], monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = variant
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5  # endpoints removed before the drain starts
    drain = drain_seconds(one(objects, "ConfigMap")["data"], monkeypatch)
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


def test_models_come_from_a_read_only_volume(variant: tuple[str, list[Obj]]) -> None:
    _, objects = variant
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts["/models"]["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    model = one(objects, "ConfigMap")["data"].get("STLIGHT_MODEL", "")
    assert model.startswith("/models/")


# ---------------------------------------------------------------------------------------
# KServe: deploy/kserve
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kserve() -> list[Obj]:
    return render(KSERVE)


def runtime_container(objects: list[Obj]) -> Obj:
    (container,) = one(objects, "ServingRuntime")["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def kserve_live(kserve: list[Obj], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The runtime's container command, served for real on a model repository holding the
    shipped default model (what KServe's storage initializer puts at /mnt/models)."""
    container = runtime_container(kserve)
    env = {e["name"]: e["value"] for e in container.get("env", [])} | {"STLIGHT_DEVICE": "cpu"}
    tmp = tmp_path_factory.mktemp("kserve")
    repository = tmp / "repository"
    (repository / "stlight" / "1").mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, repository / "stlight" / "1" / "model.onnx")
    assert container["command"][:2] == ["stlight", "serve"]
    yield from serve_like(tmp, container["command"][2:], env, {"/mnt/models": repository})


def test_kserve_objects(kserve: list[Obj]) -> None:
    assert sorted(obj["kind"] for obj in kserve) == ["InferenceService", "ServingRuntime"]
    runtime, isvc = one(kserve, "ServingRuntime"), one(kserve, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    container = runtime_container(kserve)
    assert container["name"] == "kserve-container"  # the container KServe wires storage and routing to
    assert flag(container["command"], "--model-repository") == "/mnt/models"  # where KServe puts storageUri
    assert {e["name"]: e["value"] for e in container["env"]}["STLIGHT_MODEL_CONTROL"] == "none"  # no load calls
    assert int(flag(container["command"], "--grpc-port")) == image_grpc_port()
    # The CRDs' schemas are not in kubernetes-validate: validate the pod parts (container, the
    # predictor's resource override) as the core Pod they become.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stlight-predictor"},
        "spec": {"containers": [container | {"resources": model["resources"]}]},
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kserve_probes_answer_on_the_real_server(kserve: list[Obj], kserve_live: LiveServer) -> None:
    container = runtime_container(kserve)
    assert [p["containerPort"] for p in container["ports"]] == [image_port()]
    assert int(flag(container["command"], "--port")) == image_port()
    found = probes(container)
    assert found["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # the OIP's readiness route
    for kind, probe in found.items():
        assert probe["httpGet"]["port"] == image_port(), kind
        assert kserve_live.status(probe["httpGet"]["path"]) == 200, f"{kind} {probe['httpGet']['path']}"
    annotations = one(kserve, "ServingRuntime")["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == image_port()
    assert kserve_live.status(annotations["prometheus.kserve.io/path"]) == 200


def test_kserve_container_is_locked_down(kserve: list[Obj]) -> None:
    container = runtime_container(kserve)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == image_uid()
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp["name"] in {v["name"] for v in one(kserve, "ServingRuntime")["spec"]["volumes"]}


def test_kserve_grpc_variant_routes_to_the_grpc_port_and_its_probes_answer(kserve_live: LiveServer) -> None:
    """deploy/kserve/grpc: the predictor on grpc-v2, Knative's one port the server's gRPC port
    named h2c, and gRPC health probes there that the real server answers SERVING."""
    objects = render(KSERVE / "grpc")
    assert sorted(obj["kind"] for obj in objects) == ["InferenceService", "ServingRuntime"]
    model = one(objects, "InferenceService")["spec"]["predictor"]["model"]
    assert (
        model["protocolVersion"] == "grpc-v2"
        and model["protocolVersion"] in one(objects, "ServingRuntime")["spec"]["protocolVersions"]
    )
    assert model["ports"] == [{"name": "h2c", "containerPort": image_grpc_port(), "protocol": "TCP"}]
    container = runtime_container(objects) | {k: v for k, v in model.items() if k in ("ports", "readinessProbe", "livenessProbe")}
    for version in K8S_VERSIONS:  # the predictor's container as the core Pod it becomes
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}},
            version,
            strict=True,
        )
    for kind in ("readinessProbe", "livenessProbe"):
        probe = model[kind]["grpc"]
        assert probe["port"] == image_grpc_port(), kind
        assert kserve_live.grpc_health(probe.get("service", "")) == "SERVING", kind
