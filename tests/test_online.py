"""Online accuracy: a real server keeps its answers, grades them by the true frames posted to
/v1/feedback/{request_id}, and its figures per step equal the offline scores of the same
predictions; the store honours its byte budget and time-to-live."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import Server, load_npy, moving_digits, npy_bytes, running

from service.client.http import Client, ServiceError
from service.core import scores
from service.inference.online import AnswerStore

NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("online") / "server.log"
    with running(log, "--model", str(tiny_onnx), "--device", "cpu", grpc=True) as srv:
        yield srv


def _clip(digits: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(10, 1, 64, 64) input and its true next 10 frames, float32 in [0, 1]."""
    clip = moving_digits(digits, index, frames=20).astype(np.float32) / 255
    return clip[:10], clip[10:]


def test_online_figures_equal_offline_scores_per_step(server: Server, digits: np.ndarray) -> None:
    preds, truths = [], []
    for index in range(4):
        clip, truth = _clip(digits, index)
        answer = httpx.post(server.url + "/predict", content=npy_bytes(clip), headers=NPY)
        assert answer.status_code == 200, answer.text
        pred = load_npy(answer.content)[None]
        graded = httpx.post(server.url + f"/v1/feedback/{answer.headers['x-request-id']}", content=npy_bytes(truth), headers=NPY)
        assert graded.status_code == 200, graded.text
        body = graded.json()
        np.testing.assert_allclose(body["scores"]["mse"][0], scores.frame_squared_error(pred, truth[None])[0], rtol=1e-2)
        preds.append(pred)
        truths.append(truth[None])
        # graded once: the same id again is unknown
        again = httpx.post(server.url + f"/v1/feedback/{answer.headers['x-request-id']}", content=npy_bytes(truth), headers=NPY)
        assert again.status_code == 404 and again.headers["content-type"] == "application/problem+json"
    pred, true = np.concatenate(preds), np.concatenate(truths)
    model = httpx.get(server.url + "/v1/model").json()
    name, info = model["name"], model["online"]
    assert httpx.get(server.url + f"/v1/models/{name}").json()["online"] == info
    assert info["graded"] == 4
    metrics = server.metrics()
    for step in range(10):
        offline = scores.ScoreSums()
        offline.update(pred[:, step : step + 1], true[:, step : step + 1])
        expected = offline.result()
        online = info["steps"][step]
        assert online["step"] == step + 1 and online["frames"] == 4
        for metric in ("mse", "mae"):
            assert online[metric] == pytest.approx(expected[metric], rel=1e-2)
        assert online["psnr"] == pytest.approx(expected["psnr"], abs=0.05)
        ssim = float(np.mean(scores.frame_ssim(pred[:, step : step + 1], true[:, step : step + 1])))
        assert online["ssim"] == pytest.approx(ssim, abs=1e-3)
        labels = (("model", name), ("step", str(step + 1)), ("version", "1"))
        assert metrics[("stlight_online_mse", labels)] == pytest.approx(online["mse"])
        # the summaries PromQL takes windowed means from: count of frames and sum of scores
        assert metrics[("stlight_online_frame_ssim_count", labels)] == online["frames"]
        assert metrics[("stlight_online_frame_ssim_sum", labels)] / online["frames"] == pytest.approx(online["ssim"])
    assert metrics[("stlight_online_graded", (("model", name), ("version", "1")))] == 4


def test_feedback_partial_truth_and_refusals(server: Server, digits: np.ndarray) -> None:
    clip, truth = _clip(digits, 7)
    answer = httpx.post(server.url + "/predict", content=npy_bytes(clip), headers=NPY)
    rid = answer.headers["x-request-id"]
    wrong = httpx.post(server.url + f"/v1/feedback/{rid}", content=npy_bytes(truth[:, :, :32]), headers=NPY)
    assert wrong.status_code == 422 and "64x64" in wrong.json()["detail"], wrong.text
    two = httpx.post(server.url + f"/v1/feedback/{rid}", content=npy_bytes(np.stack([truth, truth])), headers=NPY)
    assert two.status_code == 422 and "(1, 10, 1, 64, 64)" in two.json()["detail"], two.text
    partial = httpx.post(server.url + f"/v1/feedback/{rid}", content=npy_bytes(truth[:3]), headers=NPY)
    assert partial.status_code == 200, partial.text
    assert partial.json()["frames"] == 3 and len(partial.json()["scores"]["psnr"][0]) == 3
    unknown = httpx.post(server.url + "/v1/feedback/no-such-id", content=npy_bytes(truth), headers=NPY)
    assert unknown.status_code == 404 and "no-such-id" in unknown.json()["detail"]


# the bounded server: API keys on, room for 19 answers (81,920 B each), a 2 s time-to-live
KEY = {"authorization": "Bearer k1"}
ANSWER_BYTES = 10 * 64 * 64 * 2  # one kept 10-frame 64x64 answer, float16
BUDGET_MB = 1.5
BUDGET_ANSWERS = int(BUDGET_MB * 1024 * 1024) // ANSWER_BYTES
TTL_S = 2.0


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[Server]:
    env = {"STLIGHT_API_KEYS": "k1", "STLIGHT_ONLINE_BUDGET_MB": str(BUDGET_MB), "STLIGHT_ONLINE_TTL_S": str(TTL_S)}
    log = tmp_path_factory.mktemp("bounded") / "server.log"
    with running(log, "--model", str(tiny_onnx), "--device", "cpu", env=env) as srv:
        yield srv


def test_feedback_needs_a_key_when_keys_are_on(bounded: Server, digits: np.ndarray) -> None:
    clip, truth = _clip(digits, 3)
    answer = httpx.post(bounded.url + "/predict", content=npy_bytes(clip), headers={**NPY, **KEY})
    assert answer.status_code == 200, answer.text
    url = bounded.url + f"/v1/feedback/{answer.headers['x-request-id']}"
    assert httpx.post(url, content=npy_bytes(truth), headers=NPY).status_code == 401
    ok = httpx.post(url, content=npy_bytes(truth), headers={**NPY, **KEY})
    assert ok.status_code == 200, ok.text


class TestSoak:
    """Concurrent HTTP load on the bounded server: the byte budget and the time-to-live hold, every
    answer is accounted for (graded, dropped or still kept), and feedback fails only for an answer
    already dropped (404). A few seconds."""

    @staticmethod
    def counts(srv: Server) -> dict[str, float]:
        metrics = srv.metrics()
        model = httpx.get(srv.url + "/v1/model", headers=KEY).json()
        labels = (("model", model["name"]), ("version", model["version"]))
        return {
            "kept": metrics[("stlight_online_kept", ())],
            "bytes": metrics[("stlight_online_kept_bytes", ())],
            "graded": metrics.get(("stlight_online_graded", labels), 0.0),
            "expired": metrics.get(("stlight_online_expired", labels), 0.0),
            "api_expired": model["online"]["expired"],
        }

    def test_budget_under_concurrent_predictions_and_feedback(self, bounded: Server, digits: np.ndarray) -> None:
        clip, truth = _clip(digits, 5)
        before = self.counts(bounded)
        threads, per_thread = 8, 6
        peak: list[float] = []
        stop = threading.Event()

        def scrape() -> None:  # the budget is checked while the load runs, not only after it
            while not stop.wait(0.05):
                peak.append(bounded.metrics()[("stlight_online_kept_bytes", ())])

        def client(worker: int) -> list[tuple[str, int]]:
            statuses = []
            with httpx.Client(base_url=bounded.url, headers=KEY, timeout=60) as http:
                for i in range(per_thread):
                    rid = f"soak-{worker}-{i}"
                    answer = http.post("/predict", content=npy_bytes(clip), headers={**NPY, "x-request-id": rid})
                    statuses.append(("predict", answer.status_code))
                    if i % 2 == 0:  # half are graded at once, half are left to the budget
                        graded = http.post(f"/v1/feedback/{rid}", content=npy_bytes(truth), headers=NPY)
                        statuses.append(("feedback", graded.status_code))
            return statuses

        sampler = threading.Thread(target=scrape)
        sampler.start()
        try:
            with ThreadPoolExecutor(threads) as pool:
                statuses = [code for codes in pool.map(client, range(threads)) for code in codes]
        finally:
            stop.set()
            sampler.join()
        after = self.counts(bounded)
        predicted = threads * per_thread
        assert statuses.count(("predict", 200)) == predicted, sorted(set(statuses))
        # an answer pushed out (by the budget, or by the time-to-live on a loaded box) before its
        # truth came is a 404; nothing else may fail
        graded = statuses.count(("feedback", 200))
        assert graded + statuses.count(("feedback", 404)) == predicted // 2 and graded > 0, sorted(set(statuses))
        assert peak and max(peak) <= BUDGET_ANSWERS * ANSWER_BYTES
        assert after["bytes"] == after["kept"] * ANSWER_BYTES <= BUDGET_ANSWERS * ANSWER_BYTES
        assert after["graded"] - before["graded"] == graded
        # nothing lost: every answer kept is graded, dropped (budget or time-to-live) or still kept
        dropped = after["expired"] - before["expired"]
        assert dropped + graded + after["kept"] - before["kept"] == predicted
        assert dropped >= predicted - graded - BUDGET_ANSWERS

    def test_time_to_live_drops_answers_without_traffic(self, bounded: Server, digits: np.ndarray) -> None:
        clip, truth = _clip(digits, 6)
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(lambda i: _predict_as(bounded, clip, f"ttl-{i}"), range(8)))
        before = self.counts(bounded)
        assert before["kept"] >= 8
        time.sleep(TTL_S + 0.2)
        after = self.counts(bounded)  # the scrape itself drops them: no request needed
        assert after["kept"] == 0 and after["bytes"] == 0
        assert after["expired"] - before["expired"] == before["kept"] and after["api_expired"] == after["expired"]
        for rid in ids:
            late = httpx.post(f"{bounded.url}/v1/feedback/{rid}", content=npy_bytes(truth), headers={**NPY, **KEY})
            assert late.status_code == 404 and "older than 2 s" in late.json()["detail"], late.text


def _predict_as(srv: Server, clip: np.ndarray, request_id: str) -> str:
    answer = httpx.post(srv.url + "/predict", content=npy_bytes(clip), headers={**NPY, **KEY, "x-request-id": request_id})
    assert answer.status_code == 200, answer.text
    return answer.headers["x-request-id"]


def test_store_honours_byte_budget_and_time_to_live() -> None:
    frames = np.random.default_rng(0).random((1, 10, 1, 64, 64), dtype=np.float32)
    one = frames.astype(np.float16).nbytes
    store = AnswerStore(budget_bytes=5 * one, ttl_s=0.3)
    for i in range(200):
        store.keep(f"r{i}", "m", "1", frames)
        assert store.nbytes <= 5 * one
    assert len(store) == 5 and store.describe("m", "1")["expired"] == 195
    store.get("r199")
    with pytest.raises(Exception, match="r0"):
        store.get("r0")
    time.sleep(0.35)
    assert store.describe("m", "1")["expired"] == 200 and len(store) == 0 and store.nbytes == 0
    # an exact frame: PSNR is infinite, which JSON cannot say (null), Prometheus can (+Inf)
    store.keep("exact", "m", "1", frames)
    graded = store.grade("exact", frames[:, :2].astype(np.float16).astype(np.float32))
    assert graded.document()["scores"]["psnr"] == [[None, None]] and np.isinf(graded.scores["psnr"]).all()
    assert json.loads(json.dumps(store.describe("m", "1"), allow_nan=False))["steps"][0]["psnr"] is None


def test_ssim_is_model_metrics_definition() -> None:
    """The server's numpy SSIM is the one model/metrics.py reports (checked there against skimage)."""
    pytest.importorskip("scipy")
    from scipy.ndimage import uniform_filter

    rng = np.random.default_rng(1)
    pred, true = rng.random((2, 3, 2, 20, 24)), rng.random((2, 3, 2, 20, 24))
    size = (1, 1, 1, 7, 7)
    x, y = np.clip(pred, 0, 1), true
    ux, uy = uniform_filter(x, size=size), uniform_filter(y, size=size)
    norm = 49 / 48
    vx = norm * (uniform_filter(x * x, size=size) - ux * ux)
    vy = norm * (uniform_filter(y * y, size=size) - uy * uy)
    vxy = norm * (uniform_filter(x * y, size=size) - ux * uy)
    c1, c2 = 0.02**2, 0.06**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    np.testing.assert_allclose(scores.frame_ssim(pred, true), s[..., 3:-3, 3:-3].mean(axis=(3, 4)).mean(axis=2), atol=1e-12)


def test_client_feedback(server: Server, digits: np.ndarray) -> None:
    clip, truth = _clip(digits, 11)
    with Client(server.url) as client:
        pred, request_id = client.predict_with_id(clip)
        graded = client.feedback(request_id, truth)
        np.testing.assert_allclose(graded["scores"]["mae"][0], scores.frame_absolute_error(pred[None], truth[None])[0], rtol=1e-2)
        with pytest.raises(ServiceError) as refused:
            client.feedback(request_id, truth)
        assert refused.value.status == 404


def _v2_truth(truth: np.ndarray, request_id: str, **parameters: object) -> dict[str, object]:
    """An OIP inference request carrying ``truth`` as feedback for ``request_id``."""
    tensor = {"name": "frames", "datatype": "FP32", "shape": list(truth.shape), "data": truth.ravel().tolist()}
    return {"id": "fb-1", "parameters": {"feedback": request_id, **parameters}, "inputs": [tensor]}


def test_v2_and_grpc_answers_are_kept_and_graded_through_the_infer_parameter(server: Server, digits: np.ndarray) -> None:
    """/v2 infer and gRPC ModelInfer keep their answers under the request id; an infer request with
    parameters.feedback grades them (JSON and binary REST, tritonclient gRPC), as /v1/feedback does."""
    import tritonclient.grpc as grpcclient

    name = httpx.get(server.url + "/v1/model").json()["name"]
    infer = f"{server.url}/v2/models/{name}/infer"
    clip, truth = _clip(digits, 21)
    tensor = {"name": "frames", "datatype": "FP32", "shape": [1, *clip.shape], "data": clip.ravel().tolist()}
    answer = httpx.post(infer, json={"inputs": [tensor]}, headers={"x-request-id": "v2-clip-21"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "v2-clip-21", answer.text
    pred = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(1, 10, 1, 64, 64)
    expected = {"mse": scores.frame_squared_error(pred, truth[None]), "mae": scores.frame_absolute_error(pred, truth[None])}

    # refusals first: each leaves the answer kept
    other = httpx.post(f"{server.url}/v2/models/{name}/versions/2/infer", json=_v2_truth(truth[None], "v2-clip-21"))
    assert other.status_code == 404, other.text
    short = httpx.post(infer, json=_v2_truth(truth[None, :, :, :32], "v2-clip-21"))
    assert short.status_code == 422 and "64x64" in short.json()["error"], short.text
    rolled = httpx.post(infer, json=_v2_truth(truth[None], "v2-clip-21", horizon=3))
    assert rolled.status_code == 400 and "horizon" in rolled.json()["error"], rolled.text
    unknown = httpx.post(infer, json=_v2_truth(truth[None], "never-answered"))
    assert unknown.status_code == 404 and "never-answered" in unknown.json()["error"], unknown.text

    graded = httpx.post(f"{server.url}/v2/models/{name}/versions/1/infer", json=_v2_truth(truth[None], "v2-clip-21"))
    assert graded.status_code == 200, graded.text
    body = graded.json()
    assert body["id"] == "fb-1" and body["parameters"] == {"feedback": "v2-clip-21"} and body["model_version"] == "1"
    outputs = {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"]}
    assert sorted(outputs) == ["mae", "mse", "psnr", "ssim"] and outputs["mse"].shape == (1, 10)
    for metric, values in expected.items():
        np.testing.assert_allclose(outputs[metric], values, rtol=1e-2)
    assert httpx.post(infer, json=_v2_truth(truth[None], "v2-clip-21")).status_code == 404  # graded once

    # gRPC: a tritonclient prediction under a chosen id, then its first 4 true frames as feedback
    triton = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        clip, truth = _clip(digits, 22)
        frames = grpcclient.InferInput("frames", [1, *clip.shape], "FP32")
        frames.set_data_from_numpy(clip[None])
        pred = triton.infer(name, [frames], headers={"x-request-id": "grpc-clip-22"}).as_numpy("predicted")
        truth_tensor = grpcclient.InferInput("frames", [1, 4, *truth.shape[1:]], "FP32")
        truth_tensor.set_data_from_numpy(np.ascontiguousarray(truth[None, :4]))
        wanted = [grpcclient.InferRequestedOutput("mae"), grpcclient.InferRequestedOutput("psnr")]
        result = triton.infer(name, [truth_tensor], outputs=wanted, parameters={"feedback": "grpc-clip-22"})
        assert result.get_response().parameters["feedback"].string_param == "grpc-clip-22"
        assert [o.name for o in result.get_response().outputs] == ["mae", "psnr"]
        mae = scores.frame_absolute_error(pred[:, :4], truth[None, :4])
        np.testing.assert_allclose(result.as_numpy("mae"), mae, rtol=1e-2)
        assert result.as_numpy("psnr").shape == (1, 4)
    finally:
        triton.close()
    figures = httpx.get(f"{server.url}/v1/models/{name}").json()["online"]
    assert figures["steps"][0]["frames"] >= 2  # both graded into the same per-step figures as /v1/feedback


def _figures(line: str) -> dict[str, float]:
    """MSE / MAE / PSNR (/ SSIM) of a summary line of stlight predict."""
    return {name.lower(): float(value) for name, value in re.findall(r"(MSE|MAE|PSNR|SSIM) (-?[\d.]+)", line)}


def test_predict_report_online_agrees_with_the_offline_metrics(
    server: Server, digits: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """stlight predict --url --has-targets --report-online: the server's grades of the run's clips
    (7 clips in batches of 3 over two inputs, 2 requests at once) equal the run's own metrics."""
    from service.cli.stlight import main

    src = tmp_path / "src"
    src.mkdir()
    clips = np.stack([moving_digits(digits, 40 + i, frames=20) for i in range(7)])  # (7, 20, 1, 64, 64) uint8
    np.save(src / "many.npy", clips[:5])
    np.save(src / "one.npy", clips[5])
    np.save(src / "last.npy", clips[6])
    args = [str(src), "--out", str(tmp_path / "out"), "--url", server.url, "--has-targets", "--batch-size", "3"]
    code = main(["predict", *args, "--concurrency", "2", "--no-progress", "--report-online"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    offline = _figures(next(line for line in out.splitlines() if line.startswith("metrics over 7 clip(s)")))
    online = _figures(next(line for line in out.splitlines() if line.startswith("online (graded by the server) over 7")))
    assert online["mse"] == pytest.approx(offline["mse"], rel=1e-2) and online["mae"] == pytest.approx(offline["mae"], rel=1e-2)
    assert online["psnr"] == pytest.approx(offline["psnr"], abs=0.05) and 0 < online["ssim"] <= 1
    assert "the service's figures for" in out and "answer(s) graded" in out
    # it sends the truth to a service: without --url (or without truth) it is a usage mistake
    assert main(["predict", *args[:3], "--has-targets", "--report-online"]) == 2
    assert "needs --url and --has-targets" in capsys.readouterr().err
