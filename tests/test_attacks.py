"""One anonymous client trying to exhaust a real server (uvicorn on loopback, one per module):
each attack must be refused with a problem+json that names the limit, quickly, while the
server's peak RSS stays near idle and a well-formed client beside it keeps being answered.

The server runs with small limits (1 codec worker and 1 waiting place, a 40-frame and 1 MiB answer
budget, a 2 s decode and 5 s request deadline) so that each is reached with small requests;
everything else is at its default."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from bombs import canvas_gif, growing_mkv
from serving import Server, load_npy, moving_digits, npy_bytes, running

NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}
RAW_V2 = {"Inference-Header-Content-Length": "0"}  # the body is one raw FP32 clip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("attacks") / "server.log"
    env = {
        "STLIGHT_MAX_FRAMES_OUT": "40",
        "STLIGHT_CODEC_WORKERS": "1",
        "STLIGHT_CODEC_QUEUE": "1",
        "STLIGHT_MAX_ANSWER_MB": "1",
        "STLIGHT_DECODE_TIMEOUT_S": "2",
        "STLIGHT_MAX_DECODED_PIXELS": str(1 << 40),  # the deadline, not the pixel total, ends the slow decodes
        "STLIGHT_REQUEST_TIMEOUT_S": "5",
    }
    with running(log, "--model", f"tiny={tiny_onnx}", "--device", "cpu", env=env) as srv:
        yield srv


def peak_rss_mb(server: Server) -> float:
    """The server process's peak resident memory so far (VmHWM), MB."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _clips(digits: np.ndarray, n: int) -> np.ndarray:
    return np.stack([moving_digits(digits, i) for i in range(n)]).astype(np.float32) / 255


def well_formed(server: Server, clip: np.ndarray) -> float:
    """Seconds a /v2 binary request and a /predict npy request took, both answered 200."""
    began = time.perf_counter()
    v2 = httpx.post(server.url + "/v2/models/tiny/infer", content=clip.astype("<f4").tobytes(), headers=RAW_V2, timeout=30)
    assert v2.status_code == 200, v2.text
    predicted = httpx.post(server.url + "/predict", content=npy_bytes(clip), headers=NPY, timeout=30)
    assert predicted.status_code == 200, predicted.text
    return time.perf_counter() - began


# ---------------------------------------------------------------------------------------
# answer amplification: clips x horizon
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/x-npy", "application/json", "application/zip"])
def test_answer_beyond_frames_budget_is_refused_before_work(server: Server, digits: np.ndarray, accept: str) -> None:
    began = time.perf_counter()
    headers = {**NPY, "accept": accept}
    answer = httpx.post(server.url + "/predict?horizon=20", content=npy_bytes(_clips(digits, 4)), headers=headers, timeout=30)
    took = time.perf_counter() - began
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert "80 frames" in detail and "limit of 40" in detail and "STLIGHT_MAX_FRAMES_OUT" in detail
    assert took < 2.0  # refused up front: 20 rollout steps of 4 clips never ran


def test_answer_at_frames_budget_is_answered(server: Server, digits: np.ndarray) -> None:
    answer = httpx.post(server.url + "/predict", content=npy_bytes(_clips(digits, 4)), headers=NPY, timeout=30)
    assert answer.status_code == 200, answer.text
    assert load_npy(answer.content).shape == (4, 10, 1, 64, 64)


def test_answer_bytes_are_budgeted_per_format(server: Server, digits: np.ndarray) -> None:
    """1 MiB: one clip of 10 64x64 frames is 160 KiB as npy (4 bytes a value), 640 KiB as PNGs,
    1.9 MiB as JSON (48: Python floats and their text): JSON is refused, before any model run."""
    one, two = npy_bytes(_clips(digits, 1)), npy_bytes(_clips(digits, 2))
    as_json = httpx.post(server.url + "/predict", content=one, headers={**NPY, "accept": "application/json"}, timeout=30)
    assert as_json.status_code == 413 and as_json.headers["content-type"] == "application/problem+json", as_json.text
    detail = as_json.json()["detail"]
    assert "as JSON" in detail and "limit of 1 MiB" in detail and "STLIGHT_MAX_ANSWER_MB" in detail, detail
    assert httpx.post(server.url + "/predict", content=one, headers=NPY, timeout=30).status_code == 200
    zipped = {**NPY, "accept": "application/zip"}
    assert httpx.post(server.url + "/predict", content=one, headers=zipped, timeout=30).status_code == 200
    assert httpx.post(server.url + "/predict", content=two, headers=zipped, timeout=30).status_code == 413
    # /v2: JSON outputs cost what JSON costs; binary outputs what npy costs (well_formed sends those)
    clip = _clips(digits, 1)
    v2_json = {"inputs": [{"name": "frames", "shape": list(clip.shape), "datatype": "FP32", "data": clip.ravel().tolist()}]}
    refused = httpx.post(server.url + "/v2/models/tiny/infer", json=v2_json, timeout=30)
    assert refused.status_code == 413 and "STLIGHT_MAX_ANSWER_MB" in refused.json()["error"], refused.text


def test_one_deadline_covers_the_whole_request_body_included(server: Server) -> None:
    """A client that sends its headers and a little of its body, then stalls (slowloris), gets
    the 504 at the request deadline, not a connection held forever."""
    host, port = server.url.removeprefix("http://").split(":")
    began = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=20) as stalled:
        head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\nContent-Length: 163968\r\n\r\n"
        stalled.sendall(head.encode() + b"\x93NUMPY" + bytes(100))
        answer = stalled.recv(65536).decode(errors="replace")
        length = int(answer.lower().split("content-length:")[1].split()[0])
        while len(answer.split("\r\n\r\n", 1)[1]) < length:
            answer += stalled.recv(65536).decode(errors="replace")
    took = time.perf_counter() - began
    assert answer.startswith("HTTP/1.1 504"), answer
    assert "deadline-exceeded" in answer and "STLIGHT_REQUEST_TIMEOUT_S" in answer
    assert 4.5 < took < 12, took


# ---------------------------------------------------------------------------------------
# decoding bombs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "body", "needle"),
    [
        ("image/gif", canvas_gif(8192, 1000), "8192x8192"),  # 23 KB; 1000 canvases of 256 MiB
        ("video/x-matroska", growing_mkv(), "frame 2"),  # says 64x64, then 6000x6000 frames
    ],
    ids=["gif-canvas-bomb", "frames-grow-after-header"],
)
def test_decoding_bombs_are_refused_within_a_second_at_idle_memory(
    server: Server, digits: np.ndarray, media_type: str, body: bytes, needle: str
) -> None:
    well_formed(server, _clips(digits, 1)[0])  # the server's own working set first
    idle = peak_rss_mb(server)
    began = time.perf_counter()
    answer = httpx.post(server.url + "/predict?resize=fit", content=body, headers={"content-type": media_type}, timeout=30)
    took = time.perf_counter() - began
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", answer.text
    problem = answer.json()
    assert problem["type"].endswith("frame-too-large") and needle in problem["detail"], problem
    assert "STLIGHT_MAX_FRAME_PIXELS" in problem["detail"] or "pixel limit" in problem["detail"]
    assert took < 2.0
    assert peak_rss_mb(server) - idle < 150, f"peak RSS grew from {idle:.0f} to {peak_rss_mb(server):.0f} MB"


def test_slow_decodes_get_503_and_unready_while_well_formed_clients_are_answered(server: Server, digits: np.ndarray) -> None:
    """Three bodies (46 KB) that each take the 2 s decode deadline (a 2048x2048 GIF canvas changing one
    pixel a frame) against 1 worker and 1 waiting place: one runs, one waits, the third is a 503
    with Retry-After at once; /readyz and /v2/health/ready say so; /v2 and /predict well-formed
    requests keep being answered beside them (before bounded workers: timed out after 8 s)."""
    slow = canvas_gif(2048, 2000)
    statuses: list[int] = []
    kinds: list[str] = []

    def attack() -> None:
        answer = httpx.post(server.url + "/predict?resize=fit", content=slow, headers={"content-type": "image/gif"}, timeout=60)
        statuses.append(answer.status_code)
        kinds.append(answer.json()["type"].rsplit(":", 1)[-1])
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1" and "STLIGHT_CODEC_QUEUE" in answer.json()["detail"]

    clip = _clips(digits, 1)[0]
    baseline = well_formed(server, clip)
    attackers = [threading.Thread(target=attack) for _ in range(3)]
    for thread in attackers:
        thread.start()
        time.sleep(0.1)
    saturated, oip_ready = httpx.get(server.url + "/readyz"), httpx.get(server.url + "/v2/health/ready")
    assert saturated.status_code == 503 and saturated.json()["type"].endswith("codec-busy"), saturated.text
    assert saturated.headers["retry-after"] == "1"
    assert oip_ready.status_code == 503 and "STLIGHT_CODEC_QUEUE" in oip_ready.json()["error"], oip_ready.text
    beside = [well_formed(server, clip) for _ in range(3)]
    for thread in attackers:
        thread.join(60)
    assert sorted(statuses) == [422, 422, 503], (statuses, kinds)
    assert set(kinds) - {"codec-busy"} <= {"decode-too-slow", "decode-too-large"}, kinds
    assert max(beside) < max(1.0, 5 * baseline), (baseline, beside)
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["codecs"] == {"workers": 1, "running": 0, "waiting": 0, "queue": 1}
