"""The serving image, for real: build it, run it on loopback, predict, stop it; validate and run
the compose file.

Opt-in: they build images and start containers on the machine's Docker engine, so they run only
with ``STLIGHT_DOCKER_TESTS=1`` (``.ci/run`` sets it) and a daemon that answers ``docker info``;
otherwise they skip saying so. The build needs the base image ``python:3.11-slim-bookworm``
(``docker pull``; offline, a local stand-in with that tag, as CI's ``../shared/tools/docker-base.sh``
makes). The CPU image (``--build-arg RUNTIME=cpu``) is always built; ``STLIGHT_DOCKER_GPU=1`` also builds and runs the
default CUDA image (~2.9 GB of pip wheels; without a GPU it serves on CPU, as ``/readyz`` says).
The image ships whatever ``service/assets/default.onnx`` holds; predictions are compared with
in-process ONNX Runtime on that same file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from serving import REPO

from service.core.card import ModelCard

DEFAULT_MODEL = REPO / "service" / "assets" / "default.onnx"
BUILD_TIMEOUT_S = 1500  # a cold CUDA build downloads ~2.9 GB of wheels
READY_TIMEOUT_S = 120
BASE_IMAGE = "python:3.11-slim-bookworm"  # the Dockerfile's default BASE


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _why_skip() -> str:
    """Empty when the Docker tests may run; else why not and how to run them."""
    if os.environ.get("STLIGHT_DOCKER_TESTS") != "1":
        return "builds Docker images and starts containers: opt in with STLIGHT_DOCKER_TESTS=1 (.ci/run does)"
    if not _docker_answers():
        return "STLIGHT_DOCKER_TESTS=1 but no Docker daemon answers `docker info`: start one (and have the rights to use it)"
    return ""


SKIP_REASON = _why_skip()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)]

RUNTIMES = ["cpu"] + (["cuda"] if os.environ.get("STLIGHT_DOCKER_GPU") == "1" else [])


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def logs(cid: str) -> str:
    done = docker("logs", cid, check=False)
    return (done.stdout + done.stderr)[-4000:]


def state(cid: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", cid).stdout)


def wait_ready(cid: str, base_url: str, timeout_s: float = READY_TIMEOUT_S) -> dict:
    """Poll /readyz until 200; fail with the container's logs if it exits or never gets ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not state(cid)["Running"]:
            pytest.fail(f"container exited ({state(cid)['ExitCode']}) before /readyz answered 200:\n{logs(cid)}")
        try:
            answer = httpx.get(f"{base_url}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"/readyz not 200 within {timeout_s} s:\n{logs(cid)}")


def start(image: str, *run_args: str) -> tuple[str, str]:
    """``docker run -d`` with port 8000 published on a free loopback port; (container id, url)."""
    cid = docker(
        "run", "-d", "--health-interval", "1s", "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8001", *run_args, image
    ).stdout.strip()
    host_port = docker("port", cid, "8000/tcp").stdout.split()[0]  # "127.0.0.1:49153"
    return cid, f"http://{host_port}"


def mnist_digits(mnist_dir: Path, count: int) -> np.ndarray:
    """The first ``count`` real MNIST digits, (count, 28, 28) uint8."""
    path = next(mnist_dir.glob("*-images-idx3-ubyte*"))
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    _, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, count * rows * cols, offset=16).reshape(count, rows, cols)


def moving_digit_clip(digit: np.ndarray, frames: int, channels: int, height: int, width: int) -> np.ndarray:
    """A real digit sliding diagonally across a black canvas: (T, C, H, W) float32 in [0, 1]."""
    clip = np.zeros((frames, channels, height, width), np.float32)
    d = digit[:height, :width].astype(np.float32) / 255.0
    span_y, span_x = height - d.shape[0], width - d.shape[1]
    for t in range(frames):
        y, x = (3 * t) % (span_y + 1), (2 * t) % (span_x + 1)
        clip[t, :, y : y + d.shape[0], x : x + d.shape[1]] = d  # same digit in every channel
    return clip


@pytest.fixture(scope="module")
def default_model() -> Path:
    if not DEFAULT_MODEL.is_file():
        pytest.fail(f"{DEFAULT_MODEL} is missing: the image ships it as its default model")
    return DEFAULT_MODEL


@pytest.fixture(scope="module", params=RUNTIMES)
def image(request: pytest.FixtureRequest, default_model: Path) -> str:
    runtime = request.param
    tag = f"stlight-serve:test-{runtime}"
    began = time.monotonic()
    done = docker("build", "--build-arg", f"RUNTIME={runtime}", "-t", tag, str(REPO), timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        hint = (
            ""
            if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0
            else (
                f"\n(no local {BASE_IMAGE}: `docker pull {BASE_IMAGE}`; offline, tag a local stand-in with that name, "
                "as CI's ../shared/tools/docker-base.sh does)"
            )
        )
        pytest.fail(f"docker build of {tag} failed:\n{(done.stdout + done.stderr)[-4000:]}{hint}")
    print(f"built {tag} in {time.monotonic() - began:.0f} s")
    return tag


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[tuple[str, str, dict]]:
    cid, url = start(image)
    try:
        yield cid, url, wait_ready(cid, url)
    finally:
        docker("rm", "-f", cid, check=False)


def test_predicts_like_onnxruntime_in_process(served: tuple[str, str, dict], default_model: Path, mnist_dir: Path) -> None:
    _, url, ready = served
    session = ort.InferenceSession(str(default_model), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    clip = moving_digit_clip(mnist_digits(mnist_dir, 1)[0], card.in_frames, card.channels, card.height, card.width)
    body = io.BytesIO()
    np.save(body, clip)

    answer = httpx.post(f"{url}/predict", content=body.getvalue(), headers={"Content-Type": "application/x-npy"}, timeout=30)

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-npy")
    got = np.load(io.BytesIO(answer.content), allow_pickle=False)
    assert got.shape == (card.out_frames, card.channels, card.height, card.width)
    (want,) = session.run(None, {session.get_inputs()[0].name: clip[None]})
    np.testing.assert_allclose(got, want[0], rtol=0, atol=1e-5)
    info = httpx.get(f"{url}/v1/model", timeout=5).json()
    assert info["provider"] == ready["provider"] == "CPUExecutionProvider"  # no GPU on the test host


def test_image_serves_grpc_on_its_exposed_port(served: tuple[str, str, dict], default_model: Path, mnist_dir: Path) -> None:
    """The image's CMD listens for gRPC on 8001 (EXPOSE): health SERVING, and tritonclient.grpc
    gets the answer in-process ONNX Runtime gives."""
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the dev extra")
    cid, _, _ = served
    target = docker("port", cid, "8001/tcp").stdout.split()[0]
    client = grpcclient.InferenceServerClient(target)
    assert client.is_server_ready() and client.is_model_ready("default")
    clip = moving_digit_clip(mnist_digits(mnist_dir, 1)[0], 10, 1, 64, 64)[None]  # (1, T, C, H, W) float32
    tensor = grpcclient.InferInput("frames", list(clip.shape), "FP32")
    tensor.set_data_from_numpy(clip)
    got = client.infer("default", [tensor]).as_numpy("predicted")
    session = ort.InferenceSession(str(default_model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"frames": clip})[0], rtol=0, atol=1e-5)
    client.close()


def test_container_is_not_root_and_has_no_torch(served: tuple[str, str, dict]) -> None:
    cid, _, _ = served
    uid = docker("exec", cid, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0
    no_torch = docker("exec", cid, "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr


def test_nvidia_runtime_settings_only_on_the_gpu_image(image: str) -> None:
    """The CUDA image asks the NVIDIA runtime for compute GPUs and a CUDA 13 driver; the CPU image
    asks for nothing, so it runs the same under any runtime."""
    env = dict(
        item.split("=", 1) for item in json.loads(docker("image", "inspect", image, "--format", "{{json .Config.Env}}").stdout)
    )
    if image.endswith("-cuda"):
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
        assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    else:
        assert not {k for k in env if k.startswith("NVIDIA_")}, env


def test_image_healthcheck_turns_healthy(served: tuple[str, str, dict]) -> None:
    cid, _, _ = served  # started with --health-interval 1s; the HEALTHCHECK command is the image's
    deadline = time.monotonic() + 30
    while (health := state(cid).get("Health", {}).get("Status")) != "healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert health == "healthy", json.dumps(state(cid).get("Health"), indent=1)


def test_serves_a_mounted_model_named_by_stlight_model(image: str, default_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(default_model, models / "mine.onnx")
    models.chmod(0o755)  # the container's user (uid 10001) must read it
    (models / "mine.onnx").chmod(0o644)
    cid, url = start(image, "-v", f"{models}:/models:ro", "-e", "STLIGHT_MODEL=/models/mine.onnx")
    try:
        wait_ready(cid, url)
        info = httpx.get(f"{url}/v1/model", timeout=5).json()
        assert info["path"] == "/models/mine.onnx"
        assert info["sha256"] == default_model_sha(default_model)
    finally:
        docker("rm", "-f", cid, check=False)

    cid, _ = start(image, "-v", f"{models}:/models:ro", "-e", "STLIGHT_MODEL=/models/missing.onnx")
    try:
        deadline = time.monotonic() + 60
        while state(cid)["Running"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not state(cid)["Running"] and state(cid)["ExitCode"] != 0
        assert "/models/missing.onnx" in logs(cid)
    finally:
        docker("rm", "-f", cid, check=False)


def default_model_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_docker_stop_is_graceful(image: str) -> None:
    cid, url = start(image)
    try:
        wait_ready(cid, url)
        began = time.monotonic()
        docker("stop", "--time", "30", cid, timeout=60)
        took = time.monotonic() - began
        final = state(cid)
        assert final["ExitCode"] == 0, logs(cid)
        assert took < 10, f"docker stop took {took:.1f} s: SIGTERM did not reach uvicorn as PID 1\n{logs(cid)}"
        assert "Finished server process" in logs(cid)
    finally:
        docker("rm", "-f", cid, check=False)
