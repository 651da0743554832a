"""The Open Inference Protocol over gRPC, driven by NVIDIA's ``tritonclient[grpc]`` and by a raw
``grpcio`` stub made from our .proto (for what tritonclient cannot send), against real
``stlight serve`` processes on loopback (torch blocked in the server). Answers are compared with
in-process ONNX Runtime on the same files; inputs are real MNIST digits moving across the frame.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from serving import REPO, Server, load_npy, moving_digits, npy_bytes, wait_until

from service.core import horizon
from service.grpc.proto import open_inference_grpc_pb2 as pb
from service.grpc.proto import open_inference_grpc_pb2_grpc as pb_grpc

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-5
KEY = "grpc-test-key-0123456789"
SHAPE = [1, 10, 1, 64, 64]
OFFICIAL_PROTO_SHA256 = "0f715460d60b014a23e06ac8e768cfa3d8336221cdb66bd7aeeab6dc27620b0f"  # d49cc23 of the OIP repo


# ---------------------------------------------------------------------------------------
# the proto and its generated modules
# ---------------------------------------------------------------------------------------


def test_generated_modules_are_current() -> None:
    """What grpcio-tools (the dev extra's pinned version) writes from the .proto is what is committed."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    result = subprocess.run(
        [sys.executable, "-m", "service.grpc.proto.generate", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_proto_holds_the_official_text_and_imports_beside_tritonclient() -> None:
    text = (REPO / "service/grpc/proto/open_inference_grpc.proto").read_text()
    body = text.split("\n\n", 1)[1]  # after our header
    addition = body[body.index("  // -- STLight Serve addition") : body.index("  // -- end of the addition --\n") + 31]
    official = body.replace("\n" + addition, "").split("\n// ----", 1)[0]
    assert hashlib.sha256(official.encode()).hexdigest() == OFFICIAL_PROTO_SHA256
    # tritonclient registers the same names (package inference) in protobuf's default pool; ours
    # have a pool of their own, so both import in one process and stay apart
    code = (
        "import tritonclient.grpc.service_pb2 as t\n"
        "from service.grpc.proto import open_inference_grpc_pb2 as ours\n"
        "from google.protobuf import descriptor_pool\n"
        "theirs = descriptor_pool.Default().FindMessageTypeByName('inference.ModelInferRequest')\n"
        "assert theirs.file.name != ours.DESCRIPTOR.name\n"
        "assert ours.ModelInferRequest.FromString(t.ModelInferRequest(model_name='x').SerializeToString()).model_name == 'x'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# a server with two models (and a broken file), gRPC on a free port
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with other weights (seed 1): a second, different model."""
    from export import export_preset

    return export_preset("tiny", tmp_path_factory.mktemp("onnx") / "second.onnx", seed=1)


@pytest.fixture(scope="module")
def repo(tiny_onnx: Path, second_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copy(tiny_onnx, root / "alpha.onnx")
    (root / "beta" / "1").mkdir(parents=True)
    shutil.copy(second_onnx, root / "beta" / "1" / "model.onnx")
    (root / "broken.onnx").write_bytes(b"this is not an ONNX file")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("serve") / "grpc.log",
        "--model-repository",
        str(repo),
        "--max-body-mb",
        "1",
        "--model-control",
        "explicit",  # these tests load and unload; the default refuses that (test_model_control.py)
        env={"STLIGHT_DEVICE": "cpu"},
        grpc=True,
    )
    srv.wait_listening()
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.text()
    assert "Traceback" not in srv.text()


@pytest.fixture
def client(server: Server) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(server.grpc_target)
    yield triton
    triton.close()


@pytest.fixture
def stub(server: Server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def reference(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda clips: session.run(None, {"frames": np.asarray(clips, np.float32)})[0]


def triton_infer(client, model: str, clips: np.ndarray, **kwargs):
    tensor = grpcclient.InferInput("frames", list(clips.shape), "UINT8" if clips.dtype == np.uint8 else "FP32")
    tensor.set_data_from_numpy(clips)
    return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("predicted")], **kwargs)


def error_of(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def request(
    model: str = "alpha", *, raw: bytes | None = None, datatype: str = "FP32", shape=SHAPE, **fields
) -> pb.ModelInferRequest:
    """A ModelInferRequest with one input 'frames'; ``fields`` go to the input tensor."""
    tensor = pb.ModelInferRequest.InferInputTensor(name=fields.pop("name", "frames"), datatype=datatype, shape=shape, **fields)
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw] if raw is not None else [])


def test_metadata_config_readiness_and_index(client, server: Server) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "stlight" and {"binary_tensor_data", "model_repository", "model_configuration"} <= set(meta.extensions)
    for name in ("alpha", "beta"):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        model = client.get_model_metadata(name, as_json=True)
        # what GET /v2/models/NAME answers, field by field (protobuf's JSON writes int64 as strings)
        rest = httpx.get(f"{server.url}/v2/models/{name}").json()
        assert model["name"] == rest["name"] == name and model["versions"] == rest["versions"] == ["1"]
        assert model["platform"] == rest["platform"] == "onnxruntime_onnx"
        for ours, theirs in ((model["inputs"][0], rest["inputs"][0]), (model["outputs"][0], rest["outputs"][0])):
            assert {**ours, "shape": [int(n) for n in ours["shape"]]} == theirs
        config = client.get_model_config(name, as_json=True)["config"]
        assert config["name"] == name and config["max_batch_size"] == 8 and config["backend"] == "onnxruntime"
        assert config["input"][0]["dims"] == ["10", "1", "64", "64"] and config["input"][0]["data_type"] == "TYPE_FP32"
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    rows = {row.name: row for row in client.get_model_repository_index().models}
    assert rows["alpha"].state == rows["beta"].state == "READY" and rows["broken"].state == "UNAVAILABLE"
    assert "broken.onnx" in rows["broken"].reason
    assert [row.name for row in client.get_model_repository_index().models if row.state == "READY"] == ["alpha", "beta"]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_infer_matches_onnxruntime_for_two_models(
    client, digits: np.ndarray, tiny_onnx: Path, second_onnx: Path, dtype: type
) -> None:
    clips_u8 = np.stack([moving_digits(digits, i) for i in (5, 6)])  # (2, 10, 1, 64, 64) uint8
    clips = clips_u8 if dtype == np.uint8 else clips_u8.astype(np.float32) / 255
    for name, path in (("alpha", tiny_onnx), ("beta", second_onnx)):
        want = reference(path)(clips_u8.astype(np.float32) / 255)
        result = triton_infer(client, name, clips, request_id=f"{name}-{clips.dtype}")
        got = result.as_numpy("predicted")
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
        response = result.get_response()
        assert response.id == f"{name}-{clips.dtype}" and response.model_name == name and response.model_version == "1"
        assert len(response.raw_output_contents) == 1  # tritonclient sends raw bytes; the answer is raw bytes
        one = triton_infer(client, name, clips[0], model_version="1").as_numpy("predicted")  # no batch axis
        np.testing.assert_allclose(one, want[0], rtol=0, atol=ATOL)
    assert np.abs(reference(tiny_onnx)(clips_u8 / 255) - reference(second_onnx)(clips_u8 / 255)).max() > 1e-3


def test_horizon_parameter_rolls_out_as_over_http(client, server: Server, digits: np.ndarray, tiny_onnx: Path) -> None:
    clip = moving_digits(digits, 7)[None].astype(np.float32) / 255
    got = triton_infer(client, "alpha", clip, parameters={"horizon": 25}).as_numpy("predicted")
    want = horizon.rollout(reference(tiny_onnx), clip, 25, 10)
    assert got.shape == (1, 25, 1, 64, 64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    over_http = httpx.post(
        f"{server.url}/predict?model=alpha&horizon=25", content=npy_bytes(clip), headers={"Content-Type": "application/x-npy"}
    )
    np.testing.assert_array_equal(load_npy(over_http.content), got)


def test_tensor_contents_instead_of_raw_bytes(stub, digits: np.ndarray, tiny_onnx: Path) -> None:
    """InferTensorContents (what tritonclient never sends): uint_contents for UINT8, fp32_contents for
    FP32; the answer then comes in fp32_contents too."""
    clip = moving_digits(digits, 8)[None]
    want = reference(tiny_onnx)(clip.astype(np.float32) / 255)
    for datatype, contents in (
        ("UINT8", pb.InferTensorContents(uint_contents=clip.ravel().tolist())),
        ("FP32", pb.InferTensorContents(fp32_contents=(clip.ravel() / 255).tolist())),
    ):
        answer = stub.ModelInfer(request(datatype=datatype, contents=contents))
        assert not answer.raw_output_contents and list(answer.outputs[0].shape) == list(want.shape)
        got = np.array(answer.outputs[0].contents.fp32_contents, np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------
# errors: the REST message, as a gRPC status code
# ---------------------------------------------------------------------------------------


def test_errors_through_tritonclient_carry_their_status_and_the_rest_message(client, server: Server) -> None:
    wrong = np.zeros((1, 9, 1, 64, 64), np.float32)
    error = error_of(lambda: triton_infer(client, "alpha", wrong))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "expected 10 input frames (T), got 9" in error.message()
    problem = httpx.post(
        f"{server.url}/predict?model=alpha", content=npy_bytes(wrong), headers={"Content-Type": "application/x-npy"}
    )
    assert problem.json()["detail"].split(": ", 2)[::2] == error.message().split(": ", 2)[::2]  # model and words as /predict

    error = error_of(lambda: triton_infer(client, "nope", wrong))
    assert error.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in error.message()
    # readiness is a question, not a mistake: not ready, whatever the reason (as Triton answers)
    assert not client.is_model_ready("nope") and not client.is_model_ready("broken") and not client.is_model_ready("beta", "2")
    error = error_of(lambda: triton_infer(client, "beta", wrong, model_version="2"))
    assert error.status() == "StatusCode.NOT_FOUND" and "no version '2'" in error.message()
    error = error_of(lambda: client.get_model_metadata("broken"))
    assert error.status() == "StatusCode.UNAVAILABLE" and "broken.onnx" in error.message()
    error = error_of(lambda: triton_infer(client, "alpha", np.full(SHAPE, 2.0, np.float32)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "[0, 1]" in error.message()
    tensor = grpcclient.InferInput("frames", SHAPE, "INT32")
    tensor.set_data_from_numpy(np.zeros(SHAPE, np.int32))
    error = error_of(lambda: client.infer("alpha", [tensor]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "INT32" in error.message() and "UINT8" in error.message()
    tensor = grpcclient.InferInput("pixels", SHAPE, "FP32")
    tensor.set_data_from_numpy(np.zeros(SHAPE, np.float32))
    error = error_of(lambda: client.infer("alpha", [tensor]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'frames'" in error.message() and "pixels" in error.message()
    error = error_of(lambda: triton_infer(client, "alpha", wrong, parameters={"horizon": 10**6}))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "STLIGHT_MAX_HORIZON" in error.message()
    error = error_of(lambda: client.load_model("alpha", config="{}"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "not supported" in error.message()
    error = error_of(lambda: client.load_model("..hidden"))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "not a model name" in error.message()  # never a path outside DIR


def test_what_tritonclient_cannot_send_is_refused_with_a_clear_status(stub) -> None:
    clip = np.zeros(SHAPE, np.float32).tobytes()
    cases = [
        (request(raw=clip[:-4]), grpc.StatusCode.INVALID_ARGUMENT, "holds 163,836 bytes; the shape needs 40,960 × 4 = 163,840"),
        (request(raw=b""), grpc.StatusCode.INVALID_ARGUMENT, "holds 0 bytes"),
        (pb.ModelInferRequest(model_name="alpha"), grpc.StatusCode.INVALID_ARGUMENT, "the request has 0: []"),
        (request(), grpc.StatusCode.INVALID_ARGUMENT, "no values; send them in raw_input_contents or in contents.fp32_contents"),
        (request(raw=clip, shape=[1, 10, 1, 64, -64]), grpc.StatusCode.INVALID_ARGUMENT, "non-negative"),
        (
            request(raw=clip, contents=pb.InferTensorContents(fp32_contents=[0.5])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not both",
        ),
        (
            request(datatype="UINT8", contents=pb.InferTensorContents(fp32_contents=[0.5])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UINT8 values belong in contents.uint_contents, got contents.fp32_contents",
        ),
        (
            request(datatype="UINT8", shape=[1], contents=pb.InferTensorContents(uint_contents=[300])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "integers in 0-255",
        ),
        (request(datatype="FP16", contents=pb.InferTensorContents(fp32_contents=[0.5])), grpc.StatusCode.INVALID_ARGUMENT, "raw"),
        (request(datatype="BYTES", raw=clip), grpc.StatusCode.INVALID_ARGUMENT, "not accepted"),
        (request(model=""), grpc.StatusCode.INVALID_ARGUMENT, "names no model"),
    ]
    two = request(raw=clip)
    two.raw_input_contents.append(clip)
    cases.append((two, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents holds 2 tensors"))
    for message, code, words in cases:
        error = rpc_error(lambda message=message: stub.ModelInfer(message))
        assert error.code() == code and words in error.details(), (error.code(), error.details())
    # a message over --max-body-mb (1 MiB here) is refused before it is parsed
    huge = request(raw=np.zeros((8, 10, 1, 64, 64), np.float32).tobytes(), shape=[8, 10, 1, 64, 64])
    error = rpc_error(lambda: stub.ModelInfer(huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in error.details()


def test_health_reflection_request_ids_and_metrics(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        listed = {s.name for s in answers[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
        asked = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        described = next(iter(reflect.ServerReflectionInfo(iter([asked])))).file_descriptor_response
        assert described.file_descriptor_proto and b"RepositoryModelLoad" in described.file_descriptor_proto[0]

        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        raw = np.zeros(SHAPE, np.float32).tobytes()
        _, call = stub.ModelInfer.with_call(request(raw=raw), metadata=(("x-request-id", "trace-42 <evil>"),))
        assert ("x-request-id", "trace-42evil") in call.trailing_metadata()  # sanitised, as over HTTP
        error = rpc_error(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
        assert any(k == "x-request-id" and len(v) == 32 for k, v in error.trailing_metadata())  # a fresh one
    assert "'/inference.GRPCInferenceService/ModelInfer' OK" in server.text() and "request_id=trace-42evil" in server.text()
    samples = server.metrics()
    ok = [
        v for (name, labels), v in samples.items() if name == "stlight_requests_total" and dict(labels).get("protocol") == "grpc"
    ]
    assert sum(ok) > 0
    key = (
        "stlight_requests_total",
        (("model", "alpha"), ("protocol", "grpc"), ("route", "/inference.GRPCInferenceService/ModelInfer"), ("status", "OK")),
    )
    assert samples[key] >= 1


def test_load_and_unload_while_a_client_streams_requests(
    client, server: Server, repo: Path, tiny_onnx: Path, second_onnx: Path, digits: np.ndarray
) -> None:
    """gamma is loaded, hammered by 4 gRPC clients while it is unloaded: every answer is right or
    UNAVAILABLE naming the unload; alpha never notices."""
    clip = moving_digits(digits, 13)[None]
    want = reference(second_onnx)(clip.astype(np.float32) / 255)
    (repo / "gamma" / "3").mkdir(parents=True)
    shutil.copy(second_onnx, repo / "gamma" / "3" / "model.onnx")
    assert not client.is_model_ready("gamma")
    client.load_model("gamma")
    assert client.is_model_ready("gamma") and client.get_model_metadata("gamma").versions == ["3"]

    answers: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def hammer() -> None:
        triton = grpcclient.InferenceServerClient(server.grpc_target)
        try:
            while not stop.is_set():
                try:
                    got = triton_infer(triton, "gamma", clip).as_numpy("predicted")
                    outcome = "correct" if np.allclose(got, want, atol=ATOL) else "wrong"
                except InferenceServerException as exc:
                    outcome = f"{exc.status()} {exc.message()}"
                with lock:
                    answers.append(outcome)
                if outcome != "correct":
                    return
        finally:
            triton.close()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer) for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(answers) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.unload_model("gamma")
        stop.set()
        for worker in workers:
            worker.result(timeout=60)
    ok = [a for a in answers if a == "correct"]
    refused = [a for a in answers if a.startswith("StatusCode.UNAVAILABLE") and "unloaded" in a]
    assert len(ok) >= 12 and len(ok) + len(refused) == len(answers), [a for a in answers if a != "correct"][:5]
    assert client.is_model_ready("alpha") and not client.is_model_ready("gamma")
    client.load_model("gamma")  # and back
    np.testing.assert_allclose(triton_infer(client, "gamma", clip).as_numpy("predicted"), want, rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------
# a slow model: keys, one batch for both protocols, a full queue, deadlines, cancellation, drain
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~0.1-0.5 s per 8 clips on CPU: long enough to have requests queued behind one in flight."""
    from export import export_preset

    return export_preset(
        "tiny", tmp_path_factory.mktemp("onnx") / "slow.onnx", seed=1, overrides={"dim": 256, "depth": 8, "patch_size": 2}
    )


def gauge(srv: Server, name: str) -> float:
    return sum(v for (n, _), v in srv.metrics().items() if n == name)


def sample(srv: Server, name: str, **labels: str) -> float:
    return sum(v for (n, have), v in srv.metrics().items() if n == name and labels.items() <= dict(have).items())


def test_keys_one_batch_for_both_protocols_full_queue_deadline_cancel_and_drain(slow_model: Path, tmp_path: Path) -> None:
    srv = Server(
        tmp_path / "slow.log",
        "--model",
        f"slow={slow_model}",
        # the request timeout now spans the whole request: the 128-clip blocker below must not meet it
        # on a loaded box (the deadline this test checks is the gRPC client's own)
        env={
            "STLIGHT_WARMUP_RUNS": "1",
            "STLIGHT_QUEUE_SIZE": "2",
            "STLIGHT_API_KEYS": KEY,
            "STLIGHT_DEVICE": "cpu",
            "STLIGHT_REQUEST_TIMEOUT_S": "300",
        },
        grpc=True,
    )
    pool = concurrent.futures.ThreadPoolExecutor(8)
    try:
        srv.wait_listening()
        deadline = time.monotonic() + 120
        while httpx.get(srv.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, srv.text()
            time.sleep(0.1)
        bearer = {"authorization": f"Bearer {KEY}"}
        triton = grpcclient.InferenceServerClient(srv.grpc_target)
        clip = np.random.default_rng(1).integers(0, 256, SHAPE, dtype=np.uint8)

        # keys: the REST key store, over metadata; the probes' RPCs stay open
        assert triton.is_server_live() and triton.is_server_ready()
        for headers, words in (({}, "needs an API key"), ({"x-api-key": "wrong"}, "not valid")):
            error = error_of(lambda headers=headers: triton.get_model_metadata("slow", headers=headers))
            assert error.status() == "StatusCode.UNAUTHENTICATED" and words in error.message()
        assert triton.get_model_metadata("slow", headers={"x-api-key": KEY}).name == "slow"

        def grpc_infer(clips: np.ndarray, **kwargs):
            return triton_infer(triton, "slow", clips, headers=bearer, **kwargs)

        def http_infer(clips: np.ndarray) -> httpx.Response:
            headers = {"Content-Type": "application/x-npy", "X-API-Key": KEY}
            return httpx.post(srv.url + "/predict", content=npy_bytes(clips), headers=headers, timeout=120)

        # one batch for both protocols: behind a 64-clip blocker, an HTTP and a gRPC clip wait in the
        # queue (2 places) and run together; a third request finds the queue full
        blocker = np.random.default_rng(0).integers(0, 256, (64, 10, 1, 64, 64), dtype=np.uint8)
        pairs_before = sample(srv, "stlight_batch_size_bucket", le="2.0") - sample(srv, "stlight_batch_size_bucket", le="1.0")
        running = pool.submit(http_infer, blocker)
        wait_until(lambda: gauge(srv, "stlight_running_clips") > 0, "the blocker running")
        queued = [pool.submit(http_infer, clip[0]), pool.submit(grpc_infer, clip)]
        wait_until(lambda: gauge(srv, "stlight_queue_depth") == 2, "2 requests queued")
        error = error_of(lambda: grpc_infer(clip))
        assert error.status() == "StatusCode.UNAVAILABLE" and "queue places are taken" in error.message()
        assert running.result().status_code == 200 and queued[0].result().status_code == 200
        np.testing.assert_allclose(queued[1].result().as_numpy("predicted")[0], load_npy(queued[0].result().content), atol=ATOL)
        pairs_after = sample(srv, "stlight_batch_size_bucket", le="2.0") - sample(srv, "stlight_batch_size_bucket", le="1.0")
        assert pairs_after == pairs_before + 1, "the HTTP and the gRPC clip ran as one batch of 2"

        # the retry hint of a full queue, in trailing metadata (raw stub: tritonclient hides metadata)
        # the drain's 64-clip answer is 10 MiB, over a client's default limit of 4 MiB
        with grpc.insecure_channel(srv.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            raw = request("slow", raw=clip.tobytes(), datatype="UINT8")
            running = pool.submit(http_infer, blocker)
            wait_until(lambda: gauge(srv, "stlight_running_clips") > 0, "the blocker running")
            queued = [pool.submit(http_infer, clip[0]) for _ in range(2)]
            wait_until(lambda: gauge(srv, "stlight_queue_depth") == 2, "2 requests queued")
            error = rpc_error(lambda: stub.ModelInfer(raw, metadata=tuple(bearer.items())))
            trailing = dict(error.trailing_metadata())
            assert error.code() == grpc.StatusCode.UNAVAILABLE and int(trailing["retry-after"]) >= 1
            assert int(trailing["grpc-retry-pushback-ms"]) == 1000 * int(trailing["retry-after"])
            for future in (running, *queued):
                assert future.result().status_code == 200

            # a call its client cancels while it waits, and a deadline that passes while the clip waits
            # (DEADLINE_EXCEEDED): both clips are dropped when their turn comes, not run. The cancelled
            # call goes first and the blocker is twice as long, so both are decided while it runs
            # however fast the box is (the deadline alone takes 0.3 s of it).
            dropped = sample(srv, "stlight_dropped_requests_total", reason="cancelled")
            running = pool.submit(http_infer, np.concatenate([blocker, blocker]))
            wait_until(lambda: gauge(srv, "stlight_running_clips") > 0, "the blocker running")
            call = stub.ModelInfer.future(raw, metadata=tuple(bearer.items()))
            wait_until(lambda: gauge(srv, "stlight_queue_depth") == 1, "the call queued")
            call.cancel()
            error = rpc_error(lambda: stub.ModelInfer(raw, metadata=tuple(bearer.items()), timeout=0.3))
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert not running.done(), "the blocker ended before both clips were decided: make it longer"
            assert running.result().status_code == 200
            wait_until(
                lambda: sample(srv, "stlight_dropped_requests_total", reason="cancelled") == dropped + 2, "2 clips dropped"
            )

            # drain: SIGTERM while a gRPC call runs; it finishes, new calls are refused, exit 0
            big = request("slow", raw=blocker.tobytes(), datatype="UINT8", shape=list(blocker.shape))
            in_flight = stub.ModelInfer.future(big, metadata=tuple(bearer.items()))
            wait_until(lambda: gauge(srv, "stlight_running_clips") > 0, "the gRPC blocker running")
            srv.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "gRPC: new calls refused" in srv.text(), "the drain begun")
            error = rpc_error(lambda: stub.ModelInfer(raw, metadata=tuple(bearer.items()), timeout=5))
            # refused: UNAVAILABLE, or CANCELLED when the call raced gRPC core's shutdown on an open connection
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
            assert not in_flight.done(), "the check came too late to show anything"
            assert list(in_flight.result(timeout=60).outputs[0].shape) == list(blocker.shape)
        triton.close()
        assert srv.proc.wait(30) == 0, srv.text()
        assert "gRPC stopped" in srv.text() and "Traceback" not in srv.text()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        srv.stop()


def test_grpc_port_taken_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    from serving import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", "0", "--grpc-port", str(port), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--grpc-port {port}" in result.stderr and "0 to turn gRPC off" in result.stderr
