"""The Compose variants, for real: GPU (``docker-compose.yml``), CPU (``+ compose.cpu.yaml``) and
N CPU replicas behind HAProxy (``+ compose.balanced.yaml``). Each is started with its documented
command and stopped with a plain ``docker compose down``, after which nothing of the project may
be left (containers, networks). The balanced variant is driven with load while one replica is
killed: no clip is lost and the balancer stops sending to the dead replica.

Needs a Docker daemon (skipped when none answers) and Compose v2 for everything but the v1
validation. Uses the serving image that tests/test_docker.py builds (same tag, cached layers).
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import free_port
from test_docker import REPO, default_model, docker, image, logs, mnist_digits, moving_digit_clip, pytestmark, state, wait_ready

from service.client import Client
from service.core.card import ModelCard

__all__ = ["default_model", "image", "pytestmark"]  # fixtures and skip marks shared with test_docker.py

BASE = "docker-compose.yml"
VARIANTS = {"gpu": [BASE], "cpu": [BASE, "compose.cpu.yaml"], "balanced": [BASE, "compose.balanced.yaml"]}
LB_TAG = "stlight-haproxy:test"
REPLICAS = 3


def compose_v2() -> list[str]:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("Compose v2 (`docker compose`) is not installed")
    return ["docker", "compose"]


def compose(
    *args: str, files: list[str], env: dict[str, str], command: list[str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Compose in the repository folder with ``-f`` for each of ``files`` (none: what a plain
    ``docker compose`` reads there) and no STLIGHT_* variables from the caller but ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("STLIGHT_", "COMPOSE_"))} | env
    argv = [*(command or compose_v2()), *[a for f in files for a in ("-f", f)], *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=environment)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)}:\n{done.stdout}{done.stderr}")
    return done


def leftovers(project: str) -> list[str]:
    """Containers (running or not) and networks that carry the project's compose label."""
    label = f"label=com.docker.compose.project={project}"
    containers = docker("ps", "-a", "--filter", label, "--format", "container {{.Names}} ({{.Status}})").stdout.splitlines()
    networks = docker("network", "ls", "--filter", label, "--format", "network {{.Name}}").stdout.splitlines()
    return containers + networks


@pytest.fixture
def project() -> Iterator[dict[str, str]]:
    """A fresh project name and port. Afterwards a plain ``docker compose down`` must leave
    nothing of it behind, whatever the test started."""
    name = f"stlight-test-{uuid.uuid4().hex[:8]}"
    env = {"COMPOSE_PROJECT_NAME": name, "STLIGHT_PORT": str(free_port()), "STLIGHT_GRPC_PORT": str(free_port())}
    yield env
    down = compose("down", files=[], env={"COMPOSE_PROJECT_NAME": name}, check=False, timeout=180)
    left = leftovers(name)
    if left:  # clean up for the next run, then fail
        for item in left:
            kind, item_name = item.split()[:2]
            docker(*(["rm", "-f"] if kind == "container" else ["network", "rm"]), item_name, check=False)
    assert down.returncode == 0 and not left, f"a plain `docker compose down` left {left}:\n{down.stdout}{down.stderr}"


@pytest.fixture(scope="module")
def lb_image() -> str:
    """HAProxy's image (deploy/haproxy), built on the same local base image as the server's."""
    done = docker("build", "-t", LB_TAG, str(REPO / "deploy" / "haproxy"), timeout=600, check=False)
    if done.returncode != 0:
        pytest.fail(f"docker build of {LB_TAG} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return LB_TAG


# ---------------------------------------------------------------------------------------
# the files
# ---------------------------------------------------------------------------------------


def test_compose_v1_reads_the_gpu_file() -> None:
    """docker-compose 1.29 (Debian 12) still reads the plain file; the overrides need Compose v2."""
    if subprocess.run(["which", "docker-compose"], capture_output=True).returncode != 0:
        pytest.skip("docker-compose v1 is not installed")
    text = compose("config", files=[BASE], env={}, command=["docker-compose"]).stdout
    assert "driver: nvidia" in text and "RUNTIME: cuda" in text


def test_variants_render_as_documented() -> None:
    configs = {
        name: json.loads(compose("config", "--format", "json", files=files, env={"STLIGHT_MODEL": "/models/mine.onnx"}).stdout)
        for name, files in VARIANTS.items()
    }
    # every variant is the same two services: that is what lets a plain `down` stop any of them
    for config in configs.values():
        assert sorted(config["services"]) == ["lb", "stlight"]
    gpu, cpu, balanced = (configs[n]["services"] for n in ("gpu", "cpu", "balanced"))
    assert gpu["stlight"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert gpu["lb"]["scale"] == 0 and cpu["lb"]["scale"] == 0  # declared, starts nothing
    for service in (cpu["stlight"], balanced["stlight"]):
        assert "deploy" not in service and service["environment"]["STLIGHT_DEVICE"] == "cpu"
        assert service["build"]["args"]["RUNTIME"] == "cpu" and service["image"].endswith(":cpu")
    assert gpu["stlight"]["environment"]["STLIGHT_DEVICE"] == "cuda" and gpu["stlight"]["build"]["args"]["RUNTIME"] == "cuda"
    for service in (gpu["stlight"], cpu["stlight"], balanced["stlight"]):
        assert service["environment"]["STLIGHT_MODEL"] == "/models/mine.onnx"
        assert service["volumes"][0]["target"] == "/models" and service["volumes"][0]["read_only"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"]) and service["restart"] == "unless-stopped"
    for service in (gpu["stlight"], cpu["stlight"], balanced["lb"]):
        assert [(p["target"], p["published"]) for p in service["ports"]] == [(8000, "8000"), (8001, "8001")]
    # balanced: the replicas publish nothing (the balancer does), several of them, read-only root
    assert "ports" not in balanced["stlight"] and balanced["stlight"]["scale"] == 3 and balanced["lb"]["scale"] == 1
    assert balanced["stlight"]["read_only"] is True and balanced["stlight"]["tmpfs"] == ["/tmp"]


# ---------------------------------------------------------------------------------------
# each documented start, undone by a plain `docker compose down`
# ---------------------------------------------------------------------------------------


def test_gpu_variant_is_undone_by_plain_down(image: str, project: dict[str, str]) -> None:
    """``docker compose up -d``: on this GPU-less host Docker refuses the GPU reservation after
    creating the network and container; the plain ``down`` of the fixture must still remove them."""
    done = compose("up", "-d", "--no-build", files=[], env=project | {"STLIGHT_IMAGE": image}, check=False)
    assert leftovers(project["COMPOSE_PROJECT_NAME"]), f"`up` created nothing to clean up:\n{done.stderr}"
    if done.returncode != 0:
        assert "nvidia" in done.stderr, done.stderr


def test_cpu_variant_serves_and_is_undone_by_plain_down(image: str, project: dict[str, str]) -> None:
    env = project | {"STLIGHT_IMAGE": image}
    compose("up", "-d", "--no-build", files=VARIANTS["cpu"], env=env)
    (cid,) = compose("ps", "-q", "stlight", files=VARIANTS["cpu"], env=env).stdout.split()
    ready = wait_ready(cid, f"http://127.0.0.1:{project['STLIGHT_PORT']}")
    assert ready["provider"] == "CPUExecutionProvider"
    assert docker("exec", cid, "printenv", "STLIGHT_DEVICE").stdout.strip() == "cpu"
    assert docker("exec", cid, "printenv", "STLIGHT_MODEL", check=False).returncode == 1  # unset, not ""


# ---------------------------------------------------------------------------------------
# balanced: N replicas behind HAProxy, one killed under load
# ---------------------------------------------------------------------------------------


def replica_predictions(cid: str, route: str = "/predict", status: str = "200") -> float:
    """Requests to ``route`` the replica answered with ``status`` (default: ``/predict`` 200), from
    its own /metrics."""
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    done = docker("exec", cid, "python", "-c", script, check=False)
    if done.returncode != 0:
        pytest.fail(f"replica {cid[:12]} did not answer /metrics ({state(cid)}):\n{done.stderr[-500:]}\n{logs(cid)}")
    text = done.stdout
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "stlight_requests_total" and sample.labels.get("route") == route and sample.labels["status"] == status
    )


def balancer_servers(lb: str, backend: str = "replicas") -> dict[str, str]:
    """HAProxy's view of a backend, from its Runtime API: replica address -> UP / DOWN / MAINT."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/tmp/haproxy.sock'); "
        f"s.sendall(b'show servers state {backend}\\n'); print(b''.join(iter(lambda: s.recv(65536), b'')).decode())"
    )
    states = {}
    for line in docker("exec", lb, "python3", "-c", script).stdout.splitlines():
        fields = line.split()  # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        if len(fields) > 6 and fields[1] == backend and fields[4] not in ("0.0.0.0", "-"):
            operational, admin = int(fields[5]), int(fields[6])
            states[fields[4]] = "MAINT" if admin else ("UP" if operational == 2 else "DOWN")
    return states


def grpc_calls_spread_over_replicas(target: str, replicas: list[str]) -> None:
    """One tritonclient.grpc client (one HTTP/2 connection) through HAProxy's gRPC port: its calls
    reach every replica (HAProxy balances calls, not connections)."""
    from concurrent.futures import ThreadPoolExecutor

    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the dev extra")
    wait_for(lambda: _grpc_ready(grpcclient, target), 60, "gRPC through the balancer")
    client = grpcclient.InferenceServerClient(target)
    tensor = grpcclient.InferInput("frames", [1, 10, 1, 64, 64], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 10, 1, 64, 64), np.uint8))
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda _: client.infer("default", [tensor]).as_numpy("predicted").shape, range(48)))
    client.close()
    assert shapes == [(1, 10, 1, 64, 64)] * 48
    calls = [replica_predictions(cid, "/inference.GRPCInferenceService/ModelInfer", "OK") for cid in replicas]
    assert sum(calls) == 48 and all(calls), f"gRPC calls per replica: {calls}"


def _grpc_ready(grpcclient, target: str) -> bool:
    try:
        return grpcclient.InferenceServerClient(target).is_server_ready()
    except Exception:
        return False


def container_address(cid: str) -> str:
    return docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid).stdout.strip()


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.25)


def balancer_stats(lb: str) -> dict[str, dict[str, str]]:
    """HAProxy's statistics of the backend, from its Runtime API: server name (and BACKEND) -> row."""
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/tmp/haproxy.sock'); "
        "s.sendall(b'show stat\\n'); print(b''.join(iter(lambda: s.recv(65536), b'')).decode())"
    )
    lines = docker("exec", lb, "python3", "-c", script).stdout.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = (dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line)
    return {row["svname"]: row for row in rows if row.get("pxname") == "replicas"}


def balancer_replays(lb: str) -> int:
    """Requests the backend re-sent: its retries and redispatches."""
    backend = balancer_stats(lb)["BACKEND"]
    return int(backend["wretr"] or 0) + int(backend["wredis"] or 0)


def checked_ready(lb: str) -> dict[str, bool]:
    """Replica address -> UP *and* its last /readyz check passed. (HAProxy 2.6 counts a replica
    that DNS has just given it as UP before its first check.)"""
    script = "import socket; socket.socket(socket.AF_UNIX).connect('/tmp/haproxy.sock')"
    if docker("exec", lb, "python3", "-c", script, check=False).returncode != 0:
        return {}  # HAProxy has not opened its Runtime API socket yet (a slow start on a loaded box)
    return {
        row["addr"].split(":")[0]: row["status"] == "UP" and row.get("check_status") == "L7OK"
        for name, row in balancer_stats(lb).items()
        if name != "BACKEND" and row.get("addr")
    }


def in_flight_on(lb: str, address: str) -> int:
    """Requests HAProxy has in flight on the replica at ``address`` (its current sessions)."""
    return sum(int(row["scur"] or 0) for row in balancer_stats(lb).values() if row.get("addr", "").split(":")[0] == address)


def plain_request(
    connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[bytes, http.client.HTTPMessage]:
    """One request with the standard library's client: no retry of any kind. The answer, or an error."""
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data[:200]!r}")
    return data, response.headers


def test_balanced_replicas_lose_no_request_of_any_client_when_one_dies(
    image: str, lb_image: str, project: dict[str, str], default_model: Path, mnist_dir: Path, request: pytest.FixtureRequest
) -> None:
    """A replica killed under load: the balancer replays what it lost on another one, so clients
    that never retry (http.client, and the project's Client with retries=0) lose nothing."""
    files = VARIANTS["balanced"]
    env = project | {
        "STLIGHT_IMAGE": image,
        "STLIGHT_LB_IMAGE": lb_image,
        "STLIGHT_REPLICAS": str(REPLICAS),
        "STLIGHT_INTRA_OP_THREADS": "1",  # three replicas share this host's CPUs
    }
    port = int(project["STLIGHT_PORT"])
    url = f"http://127.0.0.1:{port}"
    compose("up", "-d", "--no-build", files=files, env=env)
    replicas = compose("ps", "-q", "stlight", files=files, env=env).stdout.split()
    (lb,) = compose("ps", "-q", "lb", files=files, env=env).stdout.split()
    assert len(replicas) == REPLICAS
    addresses = {cid: container_address(cid) for cid in replicas}
    everyone = dict.fromkeys(addresses.values(), True)
    wait_for(lambda: checked_ready(lb) == everyone, 120, "HAProxy sees every replica ready")
    assert httpx.get(f"{url}/lb-healthz", timeout=5).status_code == 200
    wait_for(
        lambda: balancer_servers(lb, "grpc_replicas") == dict.fromkeys(addresses.values(), "UP"), 60, "HAProxy's gRPC backend"
    )
    grpc_calls_spread_over_replicas(f"127.0.0.1:{project['STLIGHT_GRPC_PORT']}", replicas)

    # real digits, and what the model answers for them in this process
    session = ort.InferenceSession(str(default_model), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    digits = mnist_digits(mnist_dir, 16)
    clips = np.stack([moving_digit_clip(d, card.in_frames, card.channels, card.height, card.width) for d in digits])
    (want,) = session.run(None, {session.get_inputs()[0].name: clips})

    # the load: 4 threads of plain http.client (/predict with npy and /v2 infer with a raw binary
    # tensor, alternately) and 2 threads of Client(retries=0), one clip per request, from before
    # the kill until AFTER_KILL more requests have been answered after it
    plain_threads, client_threads, before_kill, after_kill = 4, 2, 100, 150
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []
    numbers, stop = itertools.count(), threading.Event()
    client = Client(url, retries=0, timeout=60)
    request.addfinalizer(client.close)

    def plain() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            i = next(numbers)
            clip = clips[i % len(clips)]
            try:
                if i % 2:
                    buffer = io.BytesIO()
                    np.save(buffer, clip)
                    data, _ = plain_request(connection, "/predict", buffer.getvalue(), {"Content-Type": "application/x-npy"})
                    results[i] = np.load(io.BytesIO(data))
                else:  # Triton's raw binary request: one FP32 clip; the answer's tensor follows its JSON
                    raw = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
                    data, headers = plain_request(connection, "/v2/models/default/infer", clip.astype("<f4").tobytes(), raw)
                    length = int(headers["Inference-Header-Content-Length"])
                    results[i] = np.frombuffer(data[length:], "<f4").reshape(want[0].shape)
            except Exception as exc:  # a lost request: recorded, reported below; a fresh connection
                errors.append(f"plain request {i}: {type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.close()

    def with_client() -> None:
        while not stop.is_set():
            i = next(numbers)
            try:
                results[i] = client.predict(clips[i % len(clips)])
            except Exception as exc:
                errors.append(f"Client request {i}: {type(exc).__name__}: {exc}")

    def answered() -> int:
        return len(results) + len(errors)

    pool = [threading.Thread(target=plain) for _ in range(plain_threads)]
    pool += [threading.Thread(target=with_client) for _ in range(client_threads)]
    for thread in pool:
        thread.start()
    try:
        wait_for(lambda: answered() >= before_kill, 120, f"{before_kill} answers through all replicas")
        served_before = {cid: replica_predictions(cid) for cid in replicas}
        assert all(count > 0 for count in served_before.values()), f"not every replica served: {served_before}"
        # The replica freezes, then dies: the requests it holds when it dies are certain to be
        # in flight (a plain kill at a random instant may find none on a model this fast).
        victim = replicas[1]
        docker("pause", victim)
        wait_for(lambda: in_flight_on(lb, addresses[victim]) >= 1, 20, "requests in flight on the frozen replica")
        docker("kill", victim)  # its connections close without an answer
        at_kill = answered()
        wait_for(lambda: answered() >= at_kill + after_kill, 120, f"{after_kill} answers after the kill")
    finally:
        stop.set()
        for thread in pool:
            thread.join(timeout=300)

    sent = answered()
    assert not errors, f"{len(errors)} of {sent} requests lost:\n" + "\n".join(errors[:10])
    assert sorted(results) == list(range(sent))
    for i, got in results.items():
        np.testing.assert_allclose(got, want[i % len(clips)], rtol=0, atol=1e-5)
    assert not client.retried, f"the Client retried: {dict(client.retried)}"
    replayed = balancer_replays(lb)
    assert replayed >= 1, f"the requests in flight on the killed replica were not replayed ({replayed})"

    # the balancer took the dead replica out and sends it nothing: plain requests, no retries
    survivors = [cid for cid in replicas if cid != victim]
    wait_for(lambda: balancer_servers(lb).get(addresses[victim], "gone") != "UP", 30, "HAProxy marks the killed replica down")
    assert [balancer_servers(lb)[addresses[cid]] for cid in survivors] == ["UP", "UP"]
    before = sum(replica_predictions(cid) for cid in survivors)
    buffer = io.BytesIO()
    np.save(buffer, clips[0])
    with httpx.Client(timeout=30) as raw:
        statuses = [
            raw.post(f"{url}/predict", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"}).status_code
            for _ in range(30)
        ]
    assert statuses == [200] * 30
    assert sum(replica_predictions(cid) for cid in survivors) - before == 30  # all of them on the survivors
    print(f"{sent} requests, {sent - at_kill} after the kill; the balancer replayed {replayed}")
