"""The Open Inference Protocol (KServe V2) routes and the model repository, driven by NVIDIA's own
``tritonclient[http]`` against a real ``stlight serve --model-repository`` on loopback (torch
blocked in the server). Answers are compared with in-process ONNX Runtime on the same files;
inputs are real MNIST digits moving across the frame.
"""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from serving import Server, load_npy, moving_digits, npy_bytes, run_cli, running

from service.core.frames import to_uint8

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def digits(mnist_dir: Path) -> np.ndarray:
    from model.data import read_idx_images

    return read_idx_images(next(mnist_dir.glob("*-images-idx3-ubyte*")))  # (N, 28, 28) uint8


@pytest.fixture(scope="module")
def second_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with other weights (seed 1): a second, different model."""
    from export import export_preset

    return export_preset("tiny", tmp_path_factory.mktemp("onnx") / "second.onnx", seed=1)


@pytest.fixture(scope="module")
def repo(tiny_onnx: Path, second_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha.onnx (flat), beta/1/model.onnx (Triton's layout) and a corrupt broken.onnx."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copy(tiny_onnx, root / "alpha.onnx")
    (root / "beta" / "1").mkdir(parents=True)
    shutil.copy(second_onnx, root / "beta" / "1" / "model.onnx")
    (root / "broken.onnx").write_bytes(b"this is not an ONNX file")
    (root / "README.txt").write_text("not a model: ignored")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("serve") / "oip.log",
        "--model-repository",
        str(repo),
        "--model-control",
        "explicit",  # these tests load and unload; the default refuses that (test_model_control.py)
        env={"STLIGHT_DEVICE": "cpu"},
    )
    srv.wait_listening()
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.text()
    assert "Traceback" not in srv.text()


@pytest.fixture
def client(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield triton
    triton.close()


def reference(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda clips: session.run(None, {"frames": np.asarray(clips, np.float32)})[0]


def triton_infer(client, model: str, clips: np.ndarray, *, binary: bool, version: str = "", request_id: str = ""):
    datatype = "UINT8" if clips.dtype == np.uint8 else "FP32"
    tensor = httpclient.InferInput("frames", list(clips.shape), datatype)
    tensor.set_data_from_numpy(clips, binary_data=binary)
    output = httpclient.InferRequestedOutput("predicted", binary_data=binary)
    return client.infer(model, [tensor], model_version=version, outputs=[output], request_id=request_id)


def error_of(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------------------
# metadata, configuration, readiness
# ---------------------------------------------------------------------------------------


def test_server_and_model_metadata_config_and_readiness(client, server: Server) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "stlight" and {"binary_tensor_data", "model_repository", "model_configuration"} <= set(
        meta["extensions"]
    )

    for name in ("alpha", "beta"):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        model = client.get_model_metadata(name)
        assert model["name"] == name and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
        assert model["inputs"] == [{"name": "frames", "datatype": "FP32", "shape": [-1, 10, 1, 64, 64]}]
        assert model["outputs"] == [{"name": "predicted", "datatype": "FP32", "shape": [-1, 10, 1, 64, 64]}]
        assert client.get_model_metadata(name, "1") == model
        config = client.get_model_config(name)
        assert config["name"] == name and config["max_batch_size"] == 8 and config["backend"] == "onnxruntime"
        assert config["input"][0] == {
            "name": "frames",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [10, 1, 64, 64],
        }
        assert config["output"][0]["dims"] == [10, 1, 64, 64] and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert not client.is_model_ready("beta", "7") and not client.is_model_ready("broken") and not client.is_model_ready("nope")

    index = {(row["name"], row.get("version")): row for row in client.get_model_repository_index()}
    assert index[("alpha", "1")]["state"] == index[("beta", "1")]["state"] == "READY"
    assert index[("broken", None)]["state"] == "UNAVAILABLE" and "broken.onnx" in index[("broken", None)]["reason"]
    assert "README" not in {name for name, _ in index}
    ready_only = httpx.post(server.url + "/v2/repository/index", json={"ready": True}).json()
    assert {row["name"] for row in ready_only} >= {"alpha", "beta"} and "broken" not in {row["name"] for row in ready_only}

    # the bad file was reported by name at start, and the others are served
    assert "model broken:" in server.text() and "cannot load" in server.text()
    # the protocol's bodies, which KServe's client reads (.json()["ready"]), and no redirect for /v2/
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    for path in ("/v2/models/alpha/ready", "/v2/models/alpha/versions/1/ready"):
        assert httpx.get(server.url + path).json() == {"name": "alpha", "ready": True}
    for path in ("/v2", "/v2/"):
        answer = httpx.get(server.url + path)  # httpx follows no redirect by default
        assert answer.status_code == 200 and answer.json()["name"] == "stlight", (path, answer.status_code)
    not_ready = httpx.get(server.url + "/v2/models/broken/ready")
    assert not_ready.status_code == 503 and "broken.onnx" in not_ready.json()["error"]


# ---------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnxruntime_for_two_models(
    client, digits: np.ndarray, tiny_onnx: Path, second_onnx: Path, binary: bool
) -> None:
    clips_u8 = np.stack([moving_digits(digits, i) for i in (5, 6)])  # (2, 10, 1, 64, 64) uint8
    clips_f32 = clips_u8.astype(np.float32) / 255
    for name, path in (("alpha", tiny_onnx), ("beta", second_onnx)):
        want = reference(path)(clips_f32)
        for clips in (clips_f32, clips_u8):
            result = triton_infer(client, name, clips, binary=binary, request_id=f"{name}-{clips.dtype}")
            got = result.as_numpy("predicted")
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
            response = result.get_response()
            assert response["id"] == f"{name}-{clips.dtype}" and response["model_name"] == name
            assert response["model_version"] == "1"
        # a request may hold more clips than the config's max_batch_size (8): it runs in chunks of 8
        many = np.concatenate([clips_u8] * 8)  # (16, 10, 1, 64, 64)
        got = triton_infer(client, name, many, binary=binary).as_numpy("predicted")
        np.testing.assert_allclose(got, np.concatenate([want] * 8), rtol=0, atol=ATOL)
        # one clip without the batch axis, and the version named in the URL
        one = triton_infer(client, name, clips_f32[0], binary=binary, version="1").as_numpy("predicted")
        np.testing.assert_allclose(one, want[0], rtol=0, atol=ATOL)
    # the two models really are different models
    assert np.abs(reference(tiny_onnx)(clips_f32) - reference(second_onnx)(clips_f32)).max() > 1e-3


def test_raw_http_binary_json_and_raw_binary_requests(server: Server, tiny_onnx: Path, digits: np.ndarray) -> None:
    """What tritonclient does not show: nested JSON data, a raw binary body, gzip, the headers."""
    clip = moving_digits(digits, 9).astype(np.float32) / 255  # (10, 1, 64, 64)
    want = reference(tiny_onnx)(clip[None])
    url = server.url + "/v2/models/alpha/infer"
    nested = {
        "id": "n",
        "inputs": [{"name": "frames", "shape": [1, 10, 1, 64, 64], "datatype": "FP32", "data": clip[None].tolist()}],
    }
    answer = httpx.post(url, json=nested)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["outputs"][0]["shape"] == [1, 10, 1, 64, 64] and body["id"] == "n"
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"], np.float32).reshape(want.shape), want, rtol=0, atol=ATOL)

    # parameters.horizon rolls the model forward, as /predict?horizon= does; its first T' frames are the plain answer
    rolled = httpx.post(url, json={**nested, "parameters": {"horizon": 25}}).json()["outputs"][0]
    assert rolled["shape"] == [1, 25, 1, 64, 64]
    rolled_frames = np.array(rolled["data"], np.float32).reshape(rolled["shape"])
    np.testing.assert_allclose(rolled_frames[:, :10], want, rtol=0, atol=ATOL)

    raw = httpx.post(url, content=clip.astype("<f4").tobytes(), headers={"Inference-Header-Content-Length": "0"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
    length = int(raw.headers["inference-header-content-length"])
    np.testing.assert_allclose(np.frombuffer(raw.content[length:], "<f4").reshape(want.shape), want, rtol=0, atol=ATOL)

    import gzip
    import json

    head = json.dumps(
        {
            "inputs": [
                {"name": "frames", "shape": [10, 1, 64, 64], "datatype": "FP32", "parameters": {"binary_data_size": clip.nbytes}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    packed = gzip.compress(head + clip.astype("<f4").tobytes())
    zipped = httpx.post(
        url, content=packed, headers={"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 200, zipped.text
    length = int(zipped.headers["inference-header-content-length"])
    np.testing.assert_allclose(np.frombuffer(zipped.content[length:], "<f4").reshape(want[0].shape), want[0], rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------
# errors: what tritonclient reports, and the same words as /predict
# ---------------------------------------------------------------------------------------


def test_errors_are_reported_by_tritonclient_with_their_message(client, server: Server) -> None:
    wrong = np.zeros((1, 9, 1, 64, 64), np.float32)
    error = error_of(lambda: triton_infer(client, "alpha", wrong, binary=True))
    assert error.status() == "422" and "expected 10 input frames (T), got 9" in error.message()
    # the same check, the same status and words as /predict: the model checked against, the source, the words
    buffer = io.BytesIO()
    np.save(buffer, wrong)
    problem = httpx.post(
        server.url + "/predict?model=alpha", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"}
    )
    assert problem.status_code == 422
    detail, message = problem.json()["detail"].split(": ", 2), error.message().split(": ", 2)
    assert detail[0] == message[0] == "model 'alpha' version 1 checked this clip"
    assert detail[2] == message[2]

    error = error_of(lambda: triton_infer(client, "nope", wrong, binary=True))
    assert error.status() == "404" and "no model named 'nope'" in error.message() and "alpha, beta" in error.message()
    error = error_of(lambda: client.get_model_metadata("broken"))
    assert error.status() == "503" and "'broken' failed to load" in error.message() and "broken.onnx" in error.message()
    error = error_of(lambda: triton_infer(client, "broken", wrong, binary=False))
    assert error.status() == "503" and "broken.onnx" in error.message()
    error = error_of(lambda: triton_infer(client, "beta", wrong, binary=True, version="2"))
    assert error.status() == "404" and "no version '2'" in error.message()
    error = error_of(lambda: triton_infer(client, "alpha", np.full((1, 10, 1, 64, 64), 2.0, np.float32), binary=False))
    assert error.status() == "422" and "[0, 1]" in error.message()

    tensor = httpclient.InferInput("frames", [1, 10, 1, 64, 64], "INT32")
    tensor.set_data_from_numpy(np.zeros((1, 10, 1, 64, 64), np.int32))
    error = error_of(lambda: client.infer("alpha", [tensor]))
    assert error.status() == "422" and "INT32" in error.message() and "UINT8" in error.message()
    tensor = httpclient.InferInput("pixels", [1, 10, 1, 64, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 10, 1, 64, 64), np.float32))
    error = error_of(lambda: client.infer("alpha", [tensor]))
    assert error.status() == "400" and "'frames'" in error.message() and "pixels" in error.message()
    error = error_of(lambda: client.infer("alpha", [tensor], parameters={"horizon": 10**6}))
    assert error.status() == "422" and "STLIGHT_MAX_HORIZON" in error.message()
    error = error_of(lambda: client.load_model("alpha", config="{}"))
    assert error.status() == "400" and "not supported" in error.message()

    # BYTES is in the protocol's datatype table (refused here: no string tensors); FOO is in no table
    for datatype, named in (("BYTES", False), ("FOO", True)):
        tensor = {"name": "frames", "shape": [1], "datatype": datatype, "data": ["x"]}
        answer = httpx.post(server.url + "/v2/models/alpha/infer", json={"inputs": [tensor]})
        assert answer.status_code == 422 and ("not an OIP datatype" in answer.json()["error"]) == named, answer.text

    # data nested deeper than a clip can be, or ragged: what was expected, not numpy's words
    deep: object = 0.5
    for _ in range(100):
        deep = [deep]
    for data, why in ((deep, "nested more than 5 deep"), ([[0.5] * 3, [0.5] * 2], "depth 2 differ in length (2, 3)")):
        tensor = {"name": "frames", "shape": [10, 1, 64, 64], "datatype": "FP32", "data": data}
        answer = httpx.post(server.url + "/v2/models/alpha/infer", json={"inputs": [tensor]})
        assert answer.status_code == 422 and "rectangular nested list" in answer.json()["error"], answer.text
        assert why in answer.json()["error"] and "numpy" not in answer.json()["error"], answer.text

    # every /v2 error is {"error": "..."} JSON: from routes, from the router, from the body limit
    for response in (
        httpx.get(server.url + "/v2/no/such/route"),
        httpx.post(server.url + "/v2/models/alpha/infer", content=b"{not json"),
        httpx.post(server.url + "/v2/models/alpha/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}),
        httpx.post(server.url + "/v2/repository/models/..hidden/load"),
        httpx.delete(server.url + "/v2/models/alpha/infer"),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/json" and list(response.json()) == ["error"], response.text
    assert httpx.post(server.url + "/v2/repository/models/..hidden/load").status_code == 400  # never a path outside DIR
    too_big = _send_head_then_hold(server.url, "/v2/models/alpha/infer", b"", {"Content-Length": str(1 << 40)})
    status, headers, body = _read_response(too_big)
    too_big.close()
    assert status == 413 and headers["content-type"] == "application/json" and b"limit" in body


# ---------------------------------------------------------------------------------------
# the repository: load, reload, unload while serving
# ---------------------------------------------------------------------------------------


def test_load_a_model_added_after_start_then_unload_it_others_unaffected(
    client, server: Server, repo: Path, tiny_onnx: Path, second_onnx: Path, digits: np.ndarray
) -> None:
    clips = np.stack([moving_digits(digits, 11)]).astype(np.float32) / 255
    alpha_before = triton_infer(client, "alpha", clips, binary=True).as_numpy("predicted")

    (repo / "gamma" / "3").mkdir(parents=True)
    shutil.copy(second_onnx, repo / "gamma" / "3" / "model.onnx")
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    assert rows["gamma"]["state"] == "UNAVAILABLE" and not client.is_model_ready("gamma")
    client.load_model("gamma")
    assert client.is_model_ready("gamma") and client.get_model_metadata("gamma")["versions"] == ["3"]
    got = triton_infer(client, "gamma", clips, binary=False).as_numpy("predicted")
    np.testing.assert_allclose(got, reference(second_onnx)(clips), rtol=0, atol=ATOL)
    assert triton_infer(client, "gamma", clips, binary=True).get_response()["model_version"] == "3"

    client.unload_model("gamma")
    assert not client.is_model_ready("gamma")
    error = error_of(lambda: triton_infer(client, "gamma", clips, binary=True))
    assert error.status() == "404" and "unloaded" in error.message()
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    assert rows["gamma"] == {"name": "gamma", "state": "UNAVAILABLE", "reason": "unloaded"}
    # the others never noticed
    assert client.is_server_ready() and client.is_model_ready("alpha") and client.is_model_ready("beta")
    np.testing.assert_array_equal(triton_infer(client, "alpha", clips, binary=True).as_numpy("predicted"), alpha_before)

    # a corrupt file fails its load with its reason; nothing else changes
    error = error_of(lambda: client.load_model("broken"))
    assert error.status() == "400" and "cannot load" in error.message() and "broken.onnx" in error.message()
    error = error_of(lambda: client.load_model("missing"))
    assert error.status() == "404" and "missing.onnx" in error.message()
    assert client.is_server_ready() and client.is_model_ready("alpha")


def test_reload_picks_up_a_changed_file(client, repo: Path, tiny_onnx: Path, second_onnx: Path, digits: np.ndarray) -> None:
    clips = moving_digits(digits, 12)[None].astype(np.float32) / 255
    shutil.copy(tiny_onnx, repo / "delta.onnx")
    client.load_model("delta")
    np.testing.assert_allclose(
        triton_infer(client, "delta", clips, binary=True).as_numpy("predicted"), reference(tiny_onnx)(clips), atol=ATOL
    )
    shutil.copy(second_onnx, repo / "delta.onnx")
    client.load_model("delta")  # reload: the new file serves once warm
    got = triton_infer(client, "delta", clips, binary=True).as_numpy("predicted")
    np.testing.assert_allclose(got, reference(second_onnx)(clips), rtol=0, atol=ATOL)
    (repo / "delta.onnx").write_bytes(b"garbage")
    error = error_of(lambda: client.load_model("delta"))
    assert error.status() == "400" and "delta.onnx" in error.message()
    # a failed reload keeps the loaded version serving (as Triton does)
    assert client.is_model_ready("delta")
    np.testing.assert_allclose(triton_infer(client, "delta", clips, binary=True).as_numpy("predicted"), got, rtol=0, atol=0)
    client.unload_model("delta")


def _send_head_then_hold(url: str, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    """An HTTP request whose headers and all but the last byte of body are sent: the route has
    started (and holds its model) while the body is incomplete."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    headers = {"Content-Length": str(len(body)), **headers}
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body[:-1])  # an empty body: just the headers
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def test_requests_in_flight_during_an_unload_finish_and_none_is_lost(
    server: Server, repo: Path, tiny_onnx: Path, digits: np.ndarray
) -> None:
    clip = moving_digits(digits, 13).astype(np.float32) / 255
    want = reference(tiny_onnx)(clip[None])
    shutil.copy(tiny_onnx, repo / "epsilon.onnx")
    assert httpx.post(server.url + "/v2/repository/models/epsilon/load").status_code == 200

    # 1. deterministic: a request that has started (its body not yet complete) when the unload comes
    raw = clip.astype("<f4").tobytes()
    held = _send_head_then_hold(server.url, "/v2/models/epsilon/infer", raw, {"Inference-Header-Content-Length": "0"})
    time.sleep(0.5)  # the route is running and holds epsilon
    unload = ThreadPoolExecutor(1).submit(httpx.post, server.url + "/v2/repository/models/epsilon/unload", timeout=60)
    deadline = time.monotonic() + 10
    while (
        httpx.post(
            server.url + "/v2/models/epsilon/infer", content=raw, headers={"Inference-Header-Content-Length": "0"}
        ).status_code
        != 404
    ):
        assert time.monotonic() < deadline, "new requests should be refused once the unload began"
        time.sleep(0.02)
    assert not unload.done()  # it waits for the request in flight
    held.sendall(raw[-1:])
    status, headers, body = _read_response(held)
    held.close()
    assert status == 200
    length = int(headers["inference-header-content-length"])
    np.testing.assert_allclose(np.frombuffer(body[length:], "<f4").reshape(want.shape), want, rtol=0, atol=ATOL)
    assert unload.result(timeout=30).status_code == 200

    # 2. under load: 6 clients hammer zeta while it is unloaded; every answer is right or a clear 404
    shutil.copy(tiny_onnx, repo / "zeta.onnx")
    assert httpx.post(server.url + "/v2/repository/models/zeta/load").status_code == 200
    answers: list[tuple[int, str]] = []
    lock, stop = threading.Lock(), threading.Event()
    request = {
        "inputs": [{"name": "frames", "shape": [10, 1, 64, 64], "datatype": "UINT8", "data": to_uint8(clip).ravel().tolist()}]
    }
    want_u8 = reference(tiny_onnx)(to_uint8(clip)[None].astype(np.float32) / 255)[0]

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v2/models/zeta/infer", json=request)
                ok = r.status_code == 200 and np.allclose(
                    np.array(r.json()["outputs"][0]["data"]).reshape(want_u8.shape), want_u8, atol=ATOL
                )
                with lock:
                    answers.append((r.status_code, "correct" if ok else r.text[:200]))
                if r.status_code != 200:
                    return

    with ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(hammer) for _ in range(6)]
        deadline = time.monotonic() + 30
        while len(answers) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert httpx.post(server.url + "/v2/repository/models/zeta/unload", timeout=60).status_code == 200
        stop.set()
        for worker in workers:
            worker.result(timeout=60)
    ok = [a for a in answers if a == (200, "correct")]
    refused = [a for a in answers if a[0] == 404 and "unloaded" in a[1]]
    assert len(ok) >= 12 and len(ok) + len(refused) == len(answers), [a for a in answers if a not in ok][:5]
    assert httpx.get(server.url + "/v2/models/alpha/ready").status_code == 200


# ---------------------------------------------------------------------------------------
# /predict, the client, the CLI, /v1/models, metrics and /docs reach every model
# ---------------------------------------------------------------------------------------


def test_predict_client_cli_and_v1_reach_any_model(
    server: Server, tiny_onnx: Path, second_onnx: Path, digits: np.ndarray, tmp_path: Path
) -> None:
    from service.client import Client, ServiceError

    clip = moving_digits(digits, 14)
    want_beta = reference(second_onnx)(clip[None].astype(np.float32) / 255)[0]
    with Client(server.url, model="beta") as beta, Client(server.url) as default:
        np.testing.assert_allclose(beta.predict(clip), want_beta, rtol=0, atol=ATOL)
        assert beta.model()["name"] == "beta" and default.model()["name"] == "alpha"  # the first by name
        np.testing.assert_allclose(default.predict(clip), reference(tiny_onnx)(clip[None].astype(np.float32) / 255)[0], atol=ATOL)
    with Client(server.url, model="broken", retries=3) as broken, pytest.raises(ServiceError, match="failed to load"):
        broken.predict(clip)
    assert broken.retried["503"] == 0  # a file that does not load is not retried

    listing = httpx.get(server.url + "/v1/models").json()
    assert listing["default"] == "alpha" and {m["name"] for m in listing["models"]} >= {"alpha", "beta"}
    assert len(listing["models"]) == len({m["name"] for m in listing["models"]})  # one entry per model
    assert next(m for m in listing["models"] if m["name"] == "beta")["versions"] == ["1"]
    assert any(row["name"] == "broken" and row["state"] == "UNAVAILABLE" for row in listing["repository"])
    assert (
        httpx.get(server.url + "/v1/models/beta").json()["sha256"]
        == httpx.get(server.url + "/v1/model?model=beta").json()["sha256"]
    )
    unknown = httpx.get(server.url + "/v1/model?model=nope")
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/problem+json")

    np.save(tmp_path / "clip.npy", clip)
    done = run_cli(
        "predict", str(tmp_path / "clip.npy"), "--url", server.url, "--model-name", "beta", "--out", str(tmp_path / "out")
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out" / "clip.npy"), want_beta, rtol=0, atol=ATOL)
    wrong = run_cli(
        "predict", str(tmp_path / "clip.npy"), "--url", server.url, "--model-name", "nope", "--out", str(tmp_path / "o2")
    )
    assert wrong.returncode != 0 and "no model named 'nope'" in wrong.stderr and "Traceback" not in wrong.stderr

    values = server.metrics()
    label = {dict(labels).get("model") for (name, labels) in values if name == "stlight_batch_size_count"}
    assert {"alpha", "beta"} <= label
    assert any(
        name == "stlight_requests_total"
        and dict(labels)["model"] == "beta"
        and dict(labels)["route"] == "/v2/models/{name}/infer"
        for name, labels in values
    )
    assert values[("stlight_ready", (("model", "alpha"), ("version", "1")))] == 1

    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/config",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
        "/v2/repository/models/{name}/unload",
        "/v1/models",
        "/v1/models/{name}",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}


def test_your_model_beside_the_shipped_one(tiny_onnx: Path, digits: np.ndarray, tmp_path: Path) -> None:
    """The documented command (docs/serving.md): --model mine.onnx --model builtin. Yours is the
    default of /predict; the shipped model answers as 'default', as it would alone."""
    from service.core.assets import DEFAULT_MODEL

    both = ["--model", f"mine={tiny_onnx}", "--model", "builtin"]
    with running(tmp_path / "both.log", *both, env={"STLIGHT_DEVICE": "cpu"}) as srv:
        listing = httpx.get(srv.url + "/v1/models").json()
        assert listing["default"] == "mine" and sorted(m["name"] for m in listing["models"]) == ["default", "mine"]
        clip = moving_digits(digits, 15)
        for model, path in (("mine", tiny_onnx), ("default", DEFAULT_MODEL)):
            body, headers = npy_bytes(clip), {"Content-Type": "application/x-npy"}
            answer = httpx.post(srv.url + f"/predict?model={model}", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            want = reference(path)(clip[None].astype(np.float32) / 255)[0]
            np.testing.assert_allclose(load_npy(answer.content), want, rtol=0, atol=ATOL)


def test_start_up_mistakes_with_several_models_are_one_line_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    twice = run_cli("serve", "--model", f"m={tiny_onnx}", "--model", f"m={tiny_onnx}")
    assert twice.returncode == 2 and "two models are named 'm'" in twice.stderr and "Traceback" not in twice.stderr
    nowhere = run_cli("serve", "--model-repository", str(tmp_path / "nope"))
    assert nowhere.returncode == 2 and "not a folder" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_name_churn_on_the_repository_routes_costs_no_memory(server: Server) -> None:
    """An attacker trying many made-up names: each a 404, and the server's memory does not grow."""

    def rss_kib() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    with httpx.Client(base_url=server.url, timeout=30) as web:

        def churn(start: int, count: int) -> None:
            for index in range(start, start + count):
                for action in ("load", "unload"):
                    answer = web.post(f"/v2/repository/models/ghost{index}/{action}")
                    assert answer.status_code == 404, answer.text

        churn(0, 300)  # allocator and logging settle
        before = rss_kib()
        churn(300, 2000)
        assert rss_kib() - before < 16 * 1024
        assert web.get("/v2/models/alpha/ready").status_code == 200
