"""``stlight serve`` as a real uvicorn process on loopback, run with torch blocked from import.

Answers are compared with an in-process ONNX Runtime session on the same file; inputs are
real MNIST digits moving across the frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serving import NO_TORCH, REPO, Server, load_npy, moving_digits, npy_bytes, run_cli, running, wait_until

from service.core.frames import to_uint8

NPY, JSON, ZIP, GIF, PROBLEM = "application/x-npy", "application/json", "application/zip", "image/gif", "application/problem+json"

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def metric(values: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (and any others: model, version...)."""
    want = set(labels.items())
    return sum(value for (key, have), value in values.items() if key == name and want <= set(have))


def png_bytes(frame: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=fmt)
    return buffer.getvalue()


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    for needle in needles:
        assert needle.lower() in problem["detail"].lower(), (needle, problem["detail"])
    return problem


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model, batching up to 8 clips, bodies up to 2 MiB."""
    log = tmp_path_factory.mktemp("serve") / "tiny.log"
    args = ("--model", str(tiny_onnx), "--max-batch-size", "8", "--max-delay-ms", "20", "--max-body-mb", "2")
    with running(log, *args, env={"STLIGHT_DEVICE": "cpu"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model slow enough on CPU (~0.1-0.5 s per 8 clips) to fill a queue on purpose."""
    from export import export_preset

    return export_preset(
        "tiny", tmp_path_factory.mktemp("onnx") / "slow.onnx", seed=1, overrides={"dim": 256, "depth": 8, "patch_size": 2}
    )


@pytest.fixture(scope="module")
def slow_server(slow_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict]]:
    """Two queue places; records what /readyz and /predict said the moment the port opened,
    while warm-up was running."""
    srv = Server(
        tmp_path_factory.mktemp("serve") / "slow.log",
        "--model",
        str(slow_onnx),
        env={"STLIGHT_QUEUE_SIZE": "2", "STLIGHT_WARMUP_RUNS": "2"},
    )
    url = srv.wait_listening()
    clip = np.zeros((10, 1, 64, 64), np.uint8)
    early = {
        "readyz": httpx.get(url + "/readyz"),
        "predict": httpx.post(url + "/predict", content=npy_bytes(clip), headers={"Content-Type": NPY}),
    }
    srv.wait_ready()
    yield srv, early
    srv.stop()


def start_blocker(srv: Server, clips: int) -> tuple[httpx.Client, object]:
    """POST ``clips`` clips (clips/8 session.run calls) in a thread; return once they run."""
    import concurrent.futures

    http = httpx.Client(base_url=srv.url, timeout=120)
    body = npy_bytes(np.random.default_rng(clips).integers(0, 256, (clips, 10, 1, 64, 64), dtype=np.uint8))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(http.post, "/predict", content=body, headers={"Content-Type": NPY})
    pool.shutdown(wait=False)
    wait_until(lambda: metric(srv.metrics(), "stlight_running_clips") > 0 or future.done())
    return http, future


# ---------------------------------------------------------------------------------------
# every body and Accept combination equals in-process ONNX Runtime
# ---------------------------------------------------------------------------------------

BODIES = [
    "npy-uint8",
    "npy-float32",
    "npy-float16",
    "npy-float64",
    "npy-batch",
    "json-float",
    "json-uint8",
    "json-batch",
    "png",
    "jpeg",
]
ACCEPTS = [None, "*/*", NPY, JSON, ZIP, GIF]


def make_request(kind: str, digits: np.ndarray) -> tuple[dict, np.ndarray, bool]:
    """(httpx kwargs, the float32 clips the server should see (B, T, C, H, W), batched)."""
    clip = moving_digits(digits, 7)  # (10, 1, 64, 64) uint8
    batch = np.stack([moving_digits(digits, i) for i in (1, 2, 3)])  # (3, 10, 1, 64, 64)
    as_float = (clip / 255.0)[None].astype(np.float32)
    if kind == "npy-uint8":
        return {"content": npy_bytes(clip), "headers": {"Content-Type": NPY}}, as_float, False
    if kind in ("npy-float32", "npy-float16", "npy-float64"):
        dtype = {"npy-float32": np.float32, "npy-float16": np.float16, "npy-float64": np.float64}[kind]
        sent = (clip / 255.0).astype(dtype)
        return {"content": npy_bytes(sent), "headers": {"Content-Type": NPY}}, sent[None].astype(np.float32), False
    if kind == "npy-batch":
        return {"content": npy_bytes(batch), "headers": {"Content-Type": NPY}}, (batch / 255.0).astype(np.float32), True
    if kind == "json-float":
        sent = (clip / 255.0).astype(np.float32)
        return {"content": json.dumps({"frames": sent.tolist()}), "headers": {"Content-Type": JSON}}, sent[None], False
    if kind == "json-uint8":
        return (
            {"content": json.dumps({"frames": clip.tolist(), "dtype": "uint8"}), "headers": {"Content-Type": JSON}},
            as_float,
            False,
        )
    if kind == "json-batch":
        sent = (batch / 255.0).astype(np.float32)
        return {"content": json.dumps({"frames": sent.tolist()}), "headers": {"Content-Type": JSON}}, sent, True
    fmt = {"png": "PNG", "jpeg": "JPEG"}[kind]
    files = [("frames", (f"f{t}.{kind}", png_bytes(clip[t, 0], fmt), f"image/{kind}")) for t in range(len(clip))]
    seen = np.stack([np.asarray(Image.open(io.BytesIO(f[1][1])).convert("L")) for f in files])[
        :, None
    ]  # (T, 1, H, W), JPEG as decoded
    return {"files": files}, (seen / 255.0)[None].astype(np.float32), False


def test_every_body_and_accept_matches_in_process_onnxruntime(server: Server, reference, digits: np.ndarray) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for kind in BODIES:
            kwargs, clips, batched = make_request(kind, digits)
            expected = reference(clips)  # (B, T', C, H, W)
            for accept in ACCEPTS:
                if accept == GIF and batched:
                    continue  # one animation per clip: 406, checked below
                headers = {**kwargs.get("headers", {}), **({"Accept": accept} if accept else {})}
                response = http.post("/predict", **{**kwargs, "headers": headers})
                label = f"{kind} -> {accept}"
                assert response.status_code == 200, (label, response.text[:300])
                family = kind.split("-")[0]
                answer = accept if accept not in (None, "*/*") else {"npy": NPY, "json": JSON, "png": ZIP, "jpeg": ZIP}[family]
                assert response.headers["content-type"] == answer, label
                want = expected if batched else expected[0]
                if answer == NPY:
                    got = load_npy(response.content)
                    assert got.dtype == np.float32 and got.shape == want.shape, label
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=label)
                elif answer == JSON:
                    body = response.json()
                    assert body["shape"] == list(want.shape), label
                    np.testing.assert_allclose(np.array(body["frames"], np.float32), want, atol=1e-5, rtol=0, err_msg=label)
                elif answer == ZIP:
                    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                        names = sorted(archive.namelist())
                        clips_out = want if batched else want[None]
                        assert len(names) == clips_out.shape[0] * clips_out.shape[1], (label, names)
                        for name in names:
                            b, t = (
                                (int(n) for n in re.findall(r"\d+", name)) if batched else (0, int(re.findall(r"\d+", name)[0]))
                            )
                            png = np.asarray(Image.open(io.BytesIO(archive.read(name))))
                            diff = np.abs(png.astype(int) - to_uint8(clips_out[b, t, 0]).astype(int))
                            assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (label, name)
                else:  # animated GIF: input frames, then predicted frames
                    gif = Image.open(io.BytesIO(response.content))
                    frames = []
                    for index in range(gif.n_frames):
                        gif.seek(index)
                        frames.append(np.asarray(gif.convert("L")))
                    shown = np.concatenate([to_uint8(clips[0][:, 0]), to_uint8(want[:, 0])])  # (T + T', H, W)
                    assert len(frames) == len(shown), label
                    diff = np.abs(np.stack(frames).astype(int) - shown.astype(int))
                    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, label
        kwargs, _, _ = make_request("npy-batch", digits)
        assert_problem(
            http.post("/predict", content=kwargs["content"], headers={"Content-Type": NPY, "Accept": GIF}), 406, "one clip"
        )
        assert_problem(
            http.post("/predict", content=kwargs["content"], headers={"Content-Type": NPY, "Accept": "text/html"}),
            406,
            "available",
        )


def test_64_concurrent_clients_get_their_own_answers_in_shared_batches(server: Server, reference, digits: np.ndarray) -> None:
    clips = np.stack([moving_digits(digits, 100 + i) for i in range(64)])  # (64, T, 1, H, W) uint8, all different
    before = server.metrics()

    async def one(http: httpx.AsyncClient, clip: np.ndarray) -> np.ndarray:
        response = await http.post("/predict", content=npy_bytes(clip), headers={"Content-Type": NPY})
        assert response.status_code == 200, response.text
        return load_npy(response.content)

    async def all_at_once() -> list[np.ndarray]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(one(http, clip) for clip in clips))

    answers = np.stack(asyncio.run(all_at_once()))  # (64, T', C, H, W)
    expected = reference(clips / np.float32(255))
    np.testing.assert_allclose(answers, expected, atol=1e-5, rtol=0)
    flat = answers.reshape(64, -1)
    assert min(np.abs(flat[i] - flat[j]).max() for i in range(64) for j in range(i)) > 1e-3  # 64 distinct answers

    after = server.metrics()
    runs = metric(after, "stlight_batch_size_count") - metric(before, "stlight_batch_size_count")
    clips_run = metric(after, "stlight_batch_size_sum") - metric(before, "stlight_batch_size_sum")
    singles = metric(after, "stlight_batch_size_bucket", le="1.0") - metric(before, "stlight_batch_size_bucket", le="1.0")
    assert clips_run == 64 and runs < 64 and singles < runs, (runs, singles)  # some session.run held several clips
    assert metric(after, "stlight_batch_size_bucket", le="8.0") == metric(after, "stlight_batch_size_count")  # never above max
    ok = metric(after, "stlight_requests_total", route="/predict", status="200") - metric(
        before, "stlight_requests_total", route="/predict", status="200"
    )
    assert ok == 64


# ---------------------------------------------------------------------------------------
# bad input: 4xx problem+json naming what was expected and what came
# ---------------------------------------------------------------------------------------


def _bad_requests(digits: np.ndarray) -> list[tuple[str, dict, int, tuple[str, ...]]]:
    clip = moving_digits(digits, 3)  # (10, 1, 64, 64) uint8
    f32 = (clip / 255.0).astype(np.float32)
    nan = f32.copy()
    nan[2, 0, 5, 5] = np.nan
    png = png_bytes(clip[0, 0])
    small_png = png_bytes(clip[0, 0, :32, :32])
    animation, stills = io.BytesIO(), [Image.fromarray(frame) for frame in clip[:, 0]]
    stills[0].save(animation, format="GIF", save_all=True, append_images=stills[1:])  # the whole clip in one GIF
    npy = lambda a: {"content": npy_bytes(a), "headers": {"Content-Type": NPY}}  # noqa: E731
    js = lambda doc: {"content": json.dumps(doc), "headers": {"Content-Type": JSON}}  # noqa: E731
    frames = lambda images: {"files": [("frames", (f"f{i}.png", data, "image/png")) for i, data in enumerate(images)]}  # noqa: E731
    CHECKED = "version 1 checked this clip"  # the shape refusals name the model they were checked against
    return [
        ("frame count", npy(clip[:7]), 422, ("expected 10 input frames", "got 7", CHECKED)),
        ("size", npy(np.zeros((10, 1, 32, 48), np.uint8)), 422, ("64x64", "got 32x48", CHECKED)),
        ("channels", npy(np.zeros((10, 3, 64, 64), np.uint8)), 422, ("expected 1 channel", "got 3", CHECKED)),
        ("rank 3", npy(clip[:, 0]), 422, ("rank 3", "(T, C, H, W)", CHECKED)),
        ("rank 6", npy(clip[None, None]), 422, ("rank 6",)),
        ("empty batch", npy(np.zeros((0, 10, 1, 64, 64), np.uint8)), 422, ("empty",)),
        ("dtype int64", npy(clip.astype(np.int64)), 422, ("int64", "uint8")),
        ("dtype bool", npy(clip > 0), 422, ("bool",)),
        ("NaN", npy(nan), 422, ("nan", "finite")),
        ("inf", npy(np.where(f32 > 0.5, np.inf, f32).astype(np.float32)), 422, ("infinite",)),
        ("0-255 as float", npy(clip.astype(np.float32)), 422, ("[0, 1]", "255", "uint8")),
        ("garbage npy", {"content": b"hello world, not numpy", "headers": {"Content-Type": NPY}}, 400, (".npy", "magic")),
        ("truncated npy", {"content": npy_bytes(clip)[:1000], "headers": {"Content-Type": NPY}}, 400, (".npy",)),
        (
            "forged npy shape",
            {"content": npy_bytes(clip).replace(b"(10, 1, 64, 64)", b"(99999, 99999, 9)"), "headers": {"Content-Type": NPY}},
            400,
            ("header says", "bytes"),
        ),
        (
            "deep JSON",
            {"content": b'{"frames": ' + b"[" * 100000 + b"]" * 100000 + b"}", "headers": {"Content-Type": JSON}},
            400,
            ("json",),
        ),
        ("pickled npy", {"content": _pickled_npy(), "headers": {"Content-Type": NPY}}, 400, (".npy",)),
        ("bad JSON", {"content": b'{"frames": [1, 2', "headers": {"Content-Type": JSON}}, 400, ("not valid json",)),
        ("JSON without frames", js({"clip": []}), 422, ('"frames"', "clip")),
        ("JSON list", js([1, 2, 3]), 422, ('"frames"', "list")),
        ("JSON ragged", js({"frames": [[1, 2], [3]]}), 422, ("rectangular",)),
        ("JSON strings", js({"frames": [["a"]]}), 422, ("numbers",)),
        ("JSON wrong count", js({"frames": f32[:4].tolist()}), 422, ("expected 10 input frames", "got 4")),
        ("JSON bad dtype", js({"frames": f32.tolist(), "dtype": "int16"}), 422, ("dtype", "int16")),
        ("JSON uint8 out of range", js({"frames": (clip.astype(int) * 2).tolist(), "dtype": "uint8"}), 422, ("0-255",)),
        ("undecodable image", frames([png] * 9 + [b"GIF89a but not really"]), 400, ("frame 9", "not a readable image")),
        ("image size", frames([png] * 9 + [small_png]), 422, ("frame 9", "64x64", "32x32")),
        ("image count", frames([png] * 4), 422, ("expected 10", "got 4")),
        (
            "multipart without frames",
            {"files": [("other", ("x.png", png, "image/png"))]},
            422,
            ("'frames'", "parts named ['other']"),
        ),
        (
            "multipart text field",
            {"data": {"frames": "hello"}, "files": [("x", ("x.png", png, "image/png"))]},
            422,
            ("image files",),
        ),
        ("broken multipart", {"content": b"--nope\r\n", "headers": {"Content-Type": "multipart/form-data"}}, 400, ("multipart",)),
        ("text/plain", {"content": b"1 2 3", "headers": {"Content-Type": "text/plain"}}, 415, ("text/plain", NPY)),
        ("no content type", {"content": b"\x93NUMPY"}, 415, ("no content-type",)),
        ("empty npy", {"content": b"", "headers": {"Content-Type": NPY}}, 400, ("empty",)),
        ("empty JSON", {"content": b"", "headers": {"Content-Type": JSON}}, 400, ("empty",)),
        ("unacceptable Accept", {**npy(clip), "headers": {"Content-Type": NPY, "Accept": "text/csv"}}, 406, ("text/csv", NPY)),
        # easy to get wrong: a shape past int64, an integer past any float, an animation where one frame is expected
        (
            "npy shape past int64",
            {"content": npy_bytes(clip).replace(b"(10, 1, 64, 64)", b"(%d,)" % 2**70), "headers": {"Content-Type": NPY}},
            400,
            ("header says",),
        ),
        (
            "JSON 5000-digit integer",
            {"content": b'{"frames": [' + b"9" * 5000 + b"]}", "headers": {"Content-Type": JSON}},
            400,
            ("not valid json", "digits"),
        ),
        (
            "animated GIF as a frame",
            frames([png] * 9 + [animation.getvalue()]),
            422,
            ("frame 9", "an animation (more than one frame)"),
        ),
        (
            "invalid q in Accept",
            {**npy(clip), "headers": {"Content-Type": NPY, "Accept": "application/json;q=nan"}},
            400,
            ("q=nan", "0 to 1"),
        ),
    ]


def _pickled_npy() -> bytes:
    """An object array: loading it would unpickle, which the service refuses."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_every_bad_input_gets_a_4xx_problem(server: Server, digits: np.ndarray) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for name, kwargs, status, needles in _bad_requests(digits):
            response = http.post("/predict", **kwargs)
            try:
                assert_problem(response, status, *needles)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
        assert_problem(http.get("/no/such/route"), 404, "/no/such/route")
        assert_problem(http.get("/predict"), 405, "GET", "POST")
        assert_problem(http.delete("/healthz"), 405, "DELETE")
        assert http.get("/healthz").json() == {"status": "alive"}  # and still alive
    values = server.metrics()
    # /readyz answers 503 by design while the model warms up (the fixture polls it); nothing else may 5xx
    server_errors = [
        key
        for key, v in values.items()
        if key[0] == "stlight_requests_total"
        and dict(key[1])["status"].startswith("5")
        and dict(key[1])["route"] != "/readyz"
        and v
    ]
    assert not server_errors
    assert "Traceback" not in server.text()


def _raw_request(url: str, head: str, chunks: list[bytes], *, read_first: bool = False) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` over a socket; stop sending as soon as an answer arrives.
    Returns (answer bytes, number of chunks sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = 0
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):  # nothing to read yet
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            time.sleep(0.002)
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 50:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, sent


def test_oversized_bodies_get_413_while_streaming(server: Server) -> None:
    limit = 2 * 2**20
    # chunked upload of 8 MiB in 64 KiB chunks: refused once 2 MiB have come, long before the end
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {NPY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 65536 + b"\x00" * 65536 + b"\r\n"
    answer, sent = _raw_request(server.url, head, [chunk] * 128)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert PROBLEM.encode() in answer and f"{limit:,}".encode() in answer
    assert sent < 128, "the server read the whole body before refusing it"
    # a declared Content-Length over the limit is refused before any body byte is sent
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {NPY}\r\nContent-Length: {limit + 1}\r\n\r\n"
    answer, _ = _raw_request(server.url, head, [])
    assert answer.startswith(b"HTTP/1.1 413") and b"Content-Length" in answer, answer[:300]
    assert httpx.get(server.url + "/healthz").status_code == 200


# ---------------------------------------------------------------------------------------
# model, readiness, metrics, OpenAPI
# ---------------------------------------------------------------------------------------


def test_model_readyz_metrics_and_openapi(server: Server, tiny_onnx: Path) -> None:
    import hashlib

    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["provider"] == "CPUExecutionProvider"
    info = httpx.get(server.url + "/v1/model").json()
    want = {"name": "tiny", "in_frames": 10, "out_frames": 10, "channels": 1, "height": 64, "width": 64,
            "provider": "CPUExecutionProvider", "max_batch_size": 8}  # fmt: skip
    assert {k: info[k] for k in want} == want
    assert info["sha256"] == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert info["card"]["preset"] == "tiny" and info["card"]["config"]["dim"] > 0
    assert "serving tiny" in server.text() and "on CPUExecutionProvider" in server.text()  # the provider log line

    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(metrics.text)}
    for name in (
        "stlight_requests",
        "stlight_request_duration_seconds",
        "stlight_queue_wait_seconds",
        "stlight_inference_duration_seconds",
        "stlight_batch_size",
    ):
        assert name in names, name

    spec = httpx.get(server.url + "/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    videos = {"video/mp4", "video/quicktime", "video/webm", "video/x-msvideo", "video/x-matroska", GIF}
    assert set(predict["requestBody"]["content"]) == {NPY, JSON, "multipart/form-data", *videos}
    assert set(predict["responses"]["200"]["content"]) == {NPY, JSON, ZIP, GIF, "video/mp4", "video/webm"}
    assert {"400", "413", "415", "422", "503", "504"} <= set(predict["responses"])
    assert {"/healthz", "/readyz", "/v1/model", "/metrics"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


# ---------------------------------------------------------------------------------------
# warm-up, disconnected clients, SIGTERM (the slow model)
# ---------------------------------------------------------------------------------------


def test_readyz_is_503_until_warmed_up(slow_server: tuple[Server, dict]) -> None:
    srv, early = slow_server
    assert_problem(early["readyz"], 503, "warming")
    assert_problem(early["predict"], 503, "warming")
    assert early["predict"].headers["retry-after"] == "1"
    assert httpx.get(srv.url + "/readyz").json()["provider"] == "CPUExecutionProvider"


# queue full (503 + Retry-After), timeouts (504) and the batch policy are unit-tested in-process
# in tests/test_batching.py; here only what needs a real socket: a client that hangs up.


def test_requests_of_departed_clients_are_dropped_before_inference(slow_server: tuple[Server, dict]) -> None:
    srv, _ = slow_server
    before = srv.metrics()
    http, blocker = start_blocker(srv, 64)
    body = npy_bytes(np.zeros((2, 10, 1, 64, 64), np.uint8))
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {NPY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    host, port = srv.url.removeprefix("http://").split(":")
    quitters = [socket.create_connection((host, int(port))) for _ in range(2)]
    for sock in quitters:
        sock.sendall(head + body)
    wait_until(lambda: metric(srv.metrics(), "stlight_queue_depth") >= 2)  # both queued behind the blocker
    assert not blocker.done()
    for sock in quitters:
        sock.close()
    assert blocker.result().status_code == 200
    http.close()
    key = ("stlight_dropped_requests_total", {"reason": "disconnected"})
    wait_until(lambda: metric(srv.metrics(), key[0], **key[1]) - metric(before, key[0], **key[1]) >= 2, timeout=10)
    after = srv.metrics()
    assert metric(after, key[0], **key[1]) - metric(before, key[0], **key[1]) == 2
    assert (
        metric(after, "stlight_batch_size_sum") - metric(before, "stlight_batch_size_sum") == 64
    )  # only the blocker's clips ran
    assert (
        metric(after, "stlight_requests_total", route="/predict", status="499")
        - metric(before, "stlight_requests_total", route="/predict", status="499")
        == 2
    )


def test_sigterm_finishes_in_flight_requests_then_exits_cleanly(slow_server: tuple[Server, dict]) -> None:
    srv, _ = slow_server
    http, in_flight = start_blocker(srv, 16)
    srv.proc.send_signal(signal.SIGTERM)
    response = in_flight.result()
    http.close()
    assert response.status_code == 200 and load_npy(response.content).shape == (16, 10, 1, 64, 64)
    assert srv.proc.wait(30) == 0
    assert "stopped" in srv.text()


# ---------------------------------------------------------------------------------------
# start-up errors and the torch-free import
# ---------------------------------------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli("serve", *args, env=env)


def test_start_up_mistakes_are_one_line_errors(tmp_path: Path, tiny_onnx: Path) -> None:
    missing = _serve("--model", str(tmp_path / "nope.onnx"))
    assert missing.returncode == 2 and "model file not found" in missing.stderr and "Traceback" not in missing.stderr
    not_onnx = tmp_path / "bad.onnx"
    not_onnx.write_bytes(b"not a model")
    bad = _serve("--model", str(not_onnx))
    assert bad.returncode == 2 and "cannot load" in bad.stderr and "Traceback" not in bad.stderr
    invalid = _serve("--model", str(tiny_onnx), env={"STLIGHT_MAX_BATCH_SIZE": "0"})
    assert invalid.returncode == 2 and "max_batch_size" in invalid.stderr and "Traceback" not in invalid.stderr


def test_device_cuda_fails_clearly_or_serves_on_cuda(tiny_onnx: Path, tmp_path: Path) -> None:
    srv = Server(tmp_path / "cuda.log", "--model", str(tiny_onnx), "--device", "cuda")
    try:
        code = srv.proc.wait(60)
    except subprocess.TimeoutExpired:  # CUDA really loaded: the server runs on it
        srv.wait_listening()
        srv.wait_ready()
        assert httpx.get(srv.url + "/readyz").json()["provider"] == "CUDAExecutionProvider"
        return
    finally:
        srv.stop()
    assert code == 2, srv.text()
    last = srv.text().strip().splitlines()[-1]
    assert last.startswith("stlight serve: error: --device cuda") and "--device" in last and "Traceback" not in srv.text()


def test_no_model_and_no_shipped_default_says_pass_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_onnx: Path
) -> None:
    import shutil

    import service.inference.repository
    from service.inference.engine import EngineError
    from service.inference.metrics import ServiceMetrics
    from service.server.settings import ServeSettings

    monkeypatch.setattr(service.inference.repository, "DEFAULT_MODEL", tmp_path / "default.onnx")
    with pytest.raises(EngineError, match="pass --model"):
        service.inference.repository.Repository(ServeSettings(device="cpu").model_options(), ServiceMetrics())
    shutil.copy(tiny_onnx, tmp_path / "default.onnx")
    repository = service.inference.repository.Repository(ServeSettings(device="cpu").model_options(), ServiceMetrics())
    assert repository.default == "default" and repository.explicit == {"default": tmp_path / "default.onnx"}


def test_service_imports_and_serve_help_work_without_torch(tiny_onnx: Path) -> None:
    code = (
        NO_TORCH
        + f"""
import contextlib, io
from service.cli.stlight import main
import service.server.app, service.inference.batching, service.client, service.codecs.media, service.inference.engine
import service.server.problems, service.cli.serve, service.server.settings
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    main(["serve", "--help"])
assert "--max-batch-size" in out.getvalue() and "STLIGHT_" in out.getvalue()
app = service.server.app.create_app(service.server.settings.ServeSettings(model={str(tiny_onnx)!r}, grpc_port=0))
assert "torch" not in sys.modules
print("ok")
"""
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
