"""The engine on the CPU provider: bucketed, IO-bound runs (the CUDA code path, run on CPU
buffers) against plain ``session.run``; ONNX Runtime's failures sorted for the batcher; the CUDA
provider options shared with export validation; and what the service does with those failures
(in-process with a real session whose ``run`` is made to fail as CUDA would, and one real
``stlight serve`` whose warm-up fails)."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException
from serving import Server, npy_bytes
from starlette.testclient import TestClient

from service.core.assets import DEFAULT_MODEL
from service.core.runtime import DeviceLost, OutOfMemory, classify_run_error, cuda_provider_options
from service.inference.engine import CUDA, Engine, EngineError, bucket_sizes
from service.server.app import create_app
from service.server.settings import ServeSettings

NPY = "application/x-npy"


def clips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 10, 1, 64, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def plain() -> Engine:
    return Engine(DEFAULT_MODEL, "cpu", 1, 1)


@pytest.fixture(scope="module")
def bound() -> Engine:
    """The CUDA path on CPU buffers: batches padded to 1, 2, 4, 6 and run through IO binding."""
    return Engine(DEFAULT_MODEL, "cpu", 1, 1, max_batch_size=6, buckets=True, io_binding=True)


def test_bucket_sizes() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(33) == (1, 2, 4, 8, 16, 32, 33)


def test_bucketed_bound_runs_equal_plain_runs_for_every_batch_size(plain: Engine, bound: Engine) -> None:
    assert bound.buckets == (1, 2, 4, 6) and plain.buckets == ()
    assert [bound.bucket_for(n) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    for n in (1, 3, 5, 6, 13):  # 13 clips: two full buckets of 6, then 1
        x = clips(n, seed=n)
        got = bound.run(x)
        assert got.shape == (n, 10, 1, 64, 64)
        np.testing.assert_allclose(got, plain.run(x), atol=1e-6, rtol=0, err_msg=f"batch of {n}")
    first = bound.run(clips(2, seed=1))
    bound.run(clips(2, seed=2))  # the same bound output buffer is written again...
    np.testing.assert_array_equal(first, plain.run(clips(2, seed=1)))  # ...and the earlier answer is intact


def test_warm_up_runs_every_bucket() -> None:
    engine = Engine(DEFAULT_MODEL, "cpu", 1, 1, max_batch_size=5, buckets=True, io_binding=True)
    assert not engine.is_warm and not engine._bindings
    engine.warm_up(runs=1)
    assert engine.is_warm and sorted(engine._bindings) == [1, 2, 4, 5]


def test_describe_reports_the_gpu_settings(bound: Engine, plain: Engine) -> None:
    info = bound.describe()
    assert info["batch_buckets"] == [1, 2, 4, 6] and info["io_binding"] is True
    assert info["tf32"] is False and info["cuda_graphs"] is False
    assert plain.describe()["batch_buckets"] == []


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Failed to allocate memory for requested buffer of size 536870912", OutOfMemory),
        ("CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; file=cuda_allocator.cc", OutOfMemory),
        ("CUDNN failure 4: CUDNN_STATUS_ALLOC_FAILED", OutOfMemory),
        ("CUDA failure 700: an illegal memory access was encountered", DeviceLost),
        ("CUDA error cudaErrorLaunchFailure:unspecified launch failure", DeviceLost),
        ("CUBLAS failure 13: CUBLAS_STATUS_EXECUTION_FAILED", DeviceLost),
        ("Non-zero status code returned while running Reshape node. Input shape:{2,40960}", RuntimeException),
    ],
)
def test_run_errors_are_sorted_by_kind(message: str, kind: type[Exception]) -> None:
    sorted_error = classify_run_error(RuntimeException(f"[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : {message}"))
    assert type(sorted_error) is kind and message in str(sorted_error)


def test_engine_run_raises_the_sorted_error(plain: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered")

    monkeypatch.setattr(plain, "session", _FailingSession(plain.session, fail))
    with pytest.raises(DeviceLost, match="illegal memory access"):
        plain.run(clips(1))


def test_one_set_of_cuda_options_for_validation_and_serving() -> None:
    options = cuda_provider_options()
    assert options["use_tf32"] == "0" and options["arena_extend_strategy"] == "kSameAsRequested"
    assert options["enable_cuda_graph"] == "0" and cuda_provider_options(tf32=True, cuda_graphs=True)["use_tf32"] == "1"
    import export.validation

    assert export.validation.cuda_provider_options is cuda_provider_options


def test_cuda_requests_fail_clearly_where_cuda_does_not_load(caplog: pytest.LogCaptureFixture) -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fail loading")
    with pytest.raises(EngineError, match="--cuda-graphs needs --device cuda"):
        Engine(DEFAULT_MODEL, "cpu", 1, 1, cuda_graphs=True)
    try:
        engine = Engine(DEFAULT_MODEL, "cuda", 1, 1)
    except EngineError as exc:
        assert "did not load" in str(exc)
        preload = [r.getMessage() for r in caplog.records if "CUDA library preload" in r.getMessage()]
        if preload:  # the libraries of the cuda extra are missing here: their reason is shown, not hidden at DEBUG
            assert "the library preload said" in str(exc) and preload[0].split(": ", 1)[1] in str(exc)
        return
    assert engine.provider == CUDA  # a GPU machine


class _FailingSession:
    """A real session whose ``run`` fails as ``fail`` says (what CUDA does; no GPU here)."""

    def __init__(self, session: ort.InferenceSession, fail) -> None:
        self._session, self.fail = session, fail

    def run(self, *args: object, **kwargs: object):
        return self.fail(*args) or self._session.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def _serving(engine: Engine) -> tuple[TestClient, list[str]]:
    app = create_app(ServeSettings(model=DEFAULT_MODEL, device="cpu", warmup_runs=1, grpc_port=0), engine=engine)
    stops: list[str] = []
    app.state.service.shutdown = lambda: stops.append(app.state.service.error)
    return TestClient(app), stops


def _wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"not ready within {timeout} s")


def test_a_sticky_cuda_error_makes_the_service_not_ready_logs_once_and_asks_to_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(DEFAULT_MODEL, "cpu", 1, 1)
    broken = {"now": False}

    def fail(*args: object) -> None:
        if broken["now"]:
            raise RuntimeException("[ONNXRuntimeError] : 6 : CUDA failure 700: an illegal memory access was encountered")

    engine.session = _FailingSession(engine.session, fail)  # type: ignore[assignment]
    client, stops = _serving(engine)
    with client, caplog.at_level(logging.INFO):
        _wait_ready(client)
        assert client.post("/predict", content=npy_bytes(clips(1)), headers={"Content-Type": NPY}).status_code == 200
        broken["now"] = True
        for _ in range(3):
            answer = client.post("/predict", content=npy_bytes(clips(1)), headers={"Content-Type": NPY})
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert "illegal memory access" in answer.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["state"] == "failed"
        info = client.get("/v1/model").json()
        assert info["state"] == "failed" and info["tf32"] is False and info["ort_spinning"] == "run"
    assert len(stops) == 1 and "illegal memory access" in stops[0]
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "illegal memory access" in critical[0].getMessage()


def test_out_of_memory_answers_503_with_retry_after_and_keeps_serving() -> None:
    engine = Engine(DEFAULT_MODEL, "cpu", 1, 1)
    limit = {"clips": 99}

    def fail(output_names: object, feed: dict[str, np.ndarray]) -> None:
        if len(next(iter(feed.values()))) > limit["clips"]:
            raise RuntimeException("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer of size 1")

    engine.session = _FailingSession(engine.session, fail)  # type: ignore[assignment]
    client, stops = _serving(engine)
    with client:
        _wait_ready(client)
        limit["clips"] = 0
        answer = client.post("/predict", content=npy_bytes(clips(2)), headers={"Content-Type": NPY})
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
        assert answer.json()["type"].endswith("out-of-memory") and "fewer clips" in answer.json()["detail"]
        limit["clips"] = 1  # a batch of 2 fails, its halves fit
        ok = client.post("/predict", content=npy_bytes(clips(2)), headers={"Content-Type": NPY})
        assert ok.status_code == 200 and np.load(io.BytesIO(ok.content)).shape == (2, 10, 1, 64, 64)
        assert client.get("/readyz").status_code == 200
    assert stops == []


def test_serve_exits_non_zero_when_warm_up_fails(tmp_path: Path) -> None:
    """A model that runs one clip but fails on two (a Reshape to batch 1 appended): warm-up at
    the largest bucket fails, and the process exits 1 for its orchestrator to replace it."""
    model = onnx.load(str(DEFAULT_MODEL))
    graph = model.graph
    old = graph.output[0].name
    graph.node[-1].output[0] = "raw"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 10, 1, 64, 64], np.int64), "batch_one"))
    graph.node.append(onnx.helper.make_node("Reshape", ["raw", "batch_one"], [old]))
    path = tmp_path / "one-clip-only.onnx"
    onnx.save(model, str(path))
    srv = Server(tmp_path / "serve.log", "--model", str(path), "--device", "cpu", env={"STLIGHT_WARMUP_RUNS": "1"})
    try:
        code = srv.proc.wait(90)
    finally:
        srv.stop()
    log = srv.text()
    assert code == 1, log
    assert log.count("warm-up failed") >= 1 and "stlight serve: stopped, the model cannot serve" in log
    assert "Traceback" not in log
