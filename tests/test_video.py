"""Video in, video out, and longer horizons, on Moving MNIST clips of real digits.

The videos are written here with PyAV (H.264 MP4, VP9 WebM, MJPEG AVI, GIF) and decoded here
with PyAV too, independently of service/video.py: every path (a real ``stlight serve`` with
torch blocked, ``stlight predict``, the clients) must equal in-process ONNX Runtime on the
frames this file decodes from the same bytes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from serving import NO_TORCH, Server, running

from service.client import Client, LocalClient, ServiceError

T, T_OUT = 10, 10  # the tiny preset: 10 -> 10 frames of 1 x 64 x 64
PROBLEM, NPY = "application/problem+json", "application/x-npy"
# format -> (muxer, encoder, pixel format, media type, suffix)
FORMATS = {
    "mp4": ("mp4", "libx264", "yuv420p", "video/mp4", ".mp4"),
    "webm": ("webm", "libvpx-vp9", "yuv420p", "video/webm", ".webm"),
    "avi": ("avi", "mjpeg", "yuvj420p", "video/x-msvideo", ".avi"),
    "mkv": ("matroska", "libx264", "yuv420p", "video/x-matroska", ".mkv"),
    "mov": ("mov", "libx264", "yuv420p", "video/quicktime", ".mov"),  # as browsers send a .mov
    "mpeg4": ("avi", "mpeg4", "yuv420p", "video/x-msvideo", ".avi"),
    "gif": ("gif", "gif", "gray", "image/gif", ".gif"),
}


# ---------------------------------------------------------------------------------------
# helpers: PyAV straight, not service.core.video
# ---------------------------------------------------------------------------------------


def make_video(frames: np.ndarray, fmt: str, fps: int = 10) -> bytes:
    """(N, H, W) grey or (N, H, W, 3) RGB uint8 -> the bytes of a video file."""
    muxer, codec, pix_fmt, _, _ = FORMATS[fmt]
    if fmt == "gif" and frames.ndim == 4:
        pix_fmt = "rgb8"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(frame, format="gray" if frame.ndim == 2 else "rgb24")
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def decode_grey(data: bytes) -> np.ndarray:
    """Every frame of a video as (N, 1, H, W) float32 in [0, 1] (FFmpeg's grey conversion)."""
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    return (np.stack(frames)[:, None] / np.float32(255)).astype(np.float32)


def by_hand(reference, clip: np.ndarray, horizon: int) -> np.ndarray:
    """(T, C, H, W) -> (horizon, C, H, W): the model's outputs fed back as inputs, step by step."""
    window, out = clip[None], []
    while sum(len(o) for o in out) < horizon:
        prediction = reference(window)[0]  # (T', C, H, W)
        out.append(prediction)
        window = np.concatenate([window[0], prediction])[-T:][None]
    return np.concatenate(out)[:horizon]


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(mnist_dir: Path) -> np.ndarray:
    """(4, 24, 64, 64) uint8: Moving MNIST clips of real digits, a few frames longer than T + T'."""
    from model.data import load_mnist_digits, moving_mnist_clip

    digits = load_mnist_digits(mnist_dir, download=False)
    rng = np.random.default_rng(15)
    return np.stack([moving_mnist_clip(rng, digits, T + T_OUT + 4) for _ in range(4)])


@pytest.fixture(scope="module")
def videos(clips: np.ndarray) -> dict[str, bytes]:
    return {fmt: make_video(clips[i % len(clips)], fmt) for i, fmt in enumerate(FORMATS)}


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("video-server") / "server.log"
    env = {"STLIGHT_MAX_VIDEO_FRAMES": "200", "STLIGHT_MAX_HORIZON": "60"}
    with running(log, "--model", str(tiny_onnx), "--device", "cpu", env=env) as srv:
        yield srv


def post(server: Server, body: bytes, media_type: str, accept: str = NPY, **params: object) -> httpx.Response:
    return httpx.post(
        server.url + "/predict",
        content=body,
        params=params,
        headers={"Content-Type": media_type, "Accept": accept},
        timeout=60,
    )


# ---------------------------------------------------------------------------------------
# the module itself
# ---------------------------------------------------------------------------------------


def test_video_module_imports_neither_onnxruntime_nor_fastapi_nor_torch() -> None:
    code = (
        NO_TORCH + "import service.core.video\nprint(sorted(m for m in ('onnxruntime', 'fastapi', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_through_predict_equals_onnxruntime_on_its_decoded_frames(
    server: Server, videos: dict[str, bytes], reference, fmt: str
) -> None:
    data = videos[fmt]
    frames = decode_grey(data)
    assert len(frames) == T + T_OUT + 4
    response = post(server, data, FORMATS[fmt][3])
    assert response.status_code == 200, response.text
    got = np.load(io.BytesIO(response.content))
    np.testing.assert_allclose(got, reference(frames[None, -T:])[0], atol=1e-5)  # the last T frames by default
    response = post(server, data, FORMATS[fmt][3], start=2)
    np.testing.assert_allclose(np.load(io.BytesIO(response.content)), reference(frames[None, 2 : 2 + T])[0], atol=1e-5)


def test_multipart_video_part_is_decoded_like_a_body(server: Server, videos: dict[str, bytes], reference) -> None:
    data = videos["webm"]
    response = httpx.post(
        server.url + "/predict", files={"video": ("clip.webm", data, "video/webm")}, headers={"Accept": NPY}, timeout=60
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.load(io.BytesIO(response.content)), reference(decode_grey(data)[None, -T:])[0], atol=1e-5)


@pytest.mark.parametrize("accept", ["video/mp4", "video/webm"])
def test_video_answers_hold_input_then_prediction_at_the_input_rate(
    server: Server, clips: np.ndarray, accept: str, reference
) -> None:
    data = make_video(clips[0], "mp4", fps=25)
    response = post(server, data, "video/mp4", accept=accept)
    assert response.status_code == 200 and response.headers["content-type"] == accept, response.text
    with av.open(io.BytesIO(response.content)) as answer:
        assert float(answer.streams.video[0].average_rate) == 25
    shown = decode_grey(response.content)
    assert len(shown) == T + T_OUT
    expected = np.clip(reference(decode_grey(data)[None, -T:])[0], 0, 1)
    assert np.abs(shown[T:] - expected).mean() < 0.03  # lossy, but the prediction and not something else
    alone = post(server, data, "video/mp4", accept=accept, include_input="false")
    assert len(decode_grey(alone.content)) == T_OUT
    # arrays have no frame rate: 10 fps
    body = io.BytesIO()
    np.save(body, clips[0, :T, None])
    from_array = post(server, body.getvalue(), NPY, accept=accept, horizon=15)
    with av.open(io.BytesIO(from_array.content)) as answer:
        assert float(answer.streams.video[0].average_rate) == 10
    assert len(decode_grey(from_array.content)) == T + 15


def test_truncated_and_non_video_bodies_are_400_problems(server: Server, videos: dict[str, bytes]) -> None:
    mp4 = videos["mp4"]
    for body, media_type, words in [
        (mp4[: len(mp4) // 2], "video/mp4", "not a readable"),
        (np.random.default_rng(0).bytes(20_000), "video/mp4", "not a readable"),
        (b"\x93NUMPY not a video", "video/webm", "not a readable"),
        (videos["avi"][: len(videos["avi"]) * 2 // 3], "video/x-msvideo", "truncated"),
        (videos["webm"][: len(videos["webm"]) // 2], "video/webm", "truncated"),
        (mp4[: mp4.rindex(b"moov") + 100], "video/mp4", "truncated or corrupt"),  # cut inside the index it writes last
    ]:
        response = post(server, body, media_type)
        assert response.status_code == 400, (media_type, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert words in response.json()["detail"], response.json()
    assert post(server, b"", "video/mp4").status_code == 400


def test_an_mp4_cut_anywhere_in_its_index_is_undecodable_and_an_audio_only_file_has_no_video(videos: dict[str, bytes]) -> None:
    """MP4 writes its index (moov) last. Cut inside it, FFmpeg still opens the file and lists no
    stream, a bare data stream or a video stream without its codec: each is the truncated video
    it is (docs/video.md), never "no video stream", and never an exception of another type."""
    from service.core import video
    from service.core.errors import InputError

    mp4 = videos["mp4"]
    details = []
    for cut in range(mp4.rindex(b"moov") - 4, len(mp4), 3):
        try:
            video.read_video(mp4[:cut], media_type="video/mp4", channels=1, height=64, width=64)
        except InputError as exc:
            assert exc.kind in ("undecodable-video", "truncated-video"), (cut, exc.kind, exc.detail)
            details.append(exc.detail)
    assert any("its container lists no stream" in d for d in details)
    assert any("lists only data stream(s)" in d for d in details)
    assert any("video stream has no codec parameters" in d for d in details)
    assert all("MP4 cut short" in d for d in details if "lists" in d or "codec parameters" in d)

    audio = io.BytesIO()
    with av.open(audio, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(InputError, match=r"holds no video stream \(streams: audio\)") as refused:
        video.probe(audio.getvalue(), "video/mp4")
    assert refused.value.kind == "no-video-stream"


def test_wrong_size_colour_video_is_422_naming_both_sizes_and_resize_fit_serves_it(server: Server, clips: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    colour = np.stack([np.stack([np.kron(f, np.ones((1, 2), np.uint8))[:48]] * 3, axis=-1) for f in clips[1]])
    colour[..., 0] = rng.integers(0, 255, colour.shape[:3], dtype=np.uint8)  # (N, 48, 128, 3) really in colour
    data = make_video(colour, "mp4")
    response = post(server, data, "video/mp4")
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    detail = response.json()["detail"]
    assert "128x48" in detail and "64x64" in detail and "resize=fit" in detail
    for mode in ("fit", "crop"):
        served = post(server, data, "video/mp4", resize=mode)
        assert served.status_code == 200, served.text
        assert np.load(io.BytesIO(served.content)).shape == (T_OUT, 1, 64, 64)
    assert post(server, data, "video/mp4", resize="stretch").status_code == 422


def test_video_limits_and_misplaced_options_are_422(server: Server, clips: np.ndarray, videos: dict[str, bytes]) -> None:
    long = make_video(np.concatenate([clips[0]] * 10), "webm")  # 240 frames; the server decodes at most 200
    response = post(server, long, "video/webm")
    assert response.status_code == 422 and "200" in response.json()["detail"]
    short = make_video(clips[0, : T - 1], "mp4")
    assert "9 frame" in post(server, short, "video/mp4").json()["detail"]
    beyond = post(server, videos["mp4"], "video/mp4", start=20)
    assert beyond.status_code == 422 and "start=20" in beyond.json()["detail"]
    body = io.BytesIO()
    np.save(body, clips[0, :T, None])
    assert post(server, body.getvalue(), NPY, resize="fit").status_code == 422
    assert post(server, body.getvalue(), NPY, horizon=61).status_code == 422
    assert post(server, body.getvalue(), NPY, horizon=0).status_code == 422
    # a batch cannot be one video
    batch = io.BytesIO()
    np.save(batch, clips[:2, :T, None])
    assert post(server, batch.getvalue(), NPY, accept="video/mp4").status_code == 406


def test_horizon_25_equals_feeding_predictions_back_by_hand(server: Server, clips: np.ndarray, reference) -> None:
    batch = clips[:3, :T, None]  # (3, T, 1, 64, 64) uint8
    body = io.BytesIO()
    np.save(body, batch)

    def queued() -> float:  # requests that waited in the batcher's queue (summed over model labels)
        return sum(v for (name, _), v in server.metrics().items() if name == "stlight_queue_wait_seconds_count")

    before = queued()
    response = post(server, body.getvalue(), NPY, horizon=25)
    assert response.status_code == 200, response.text
    # ceil(25 / T') = 3 steps, each queued through the batcher like any request
    assert queued() == before + 3
    got = np.load(io.BytesIO(response.content))
    assert got.shape == (3, 25, 1, 64, 64)
    for b in range(3):
        np.testing.assert_allclose(got[b], by_hand(reference, batch[b] / np.float32(255), 25), atol=1e-4)
    # the Open Inference Protocol's parameters.horizon: the same rollout
    name = httpx.get(server.url + "/v1/model").json()["name"]
    tensor = {"name": "frames", "shape": [1, T, 1, 64, 64], "datatype": "FP32", "data": (batch[:1] / 255).ravel().tolist()}
    answer = httpx.post(
        f"{server.url}/v2/models/{name}/infer", json={"inputs": [tensor], "parameters": {"horizon": 25}}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    rolled = np.array(output["data"], np.float32).reshape(output["shape"])
    np.testing.assert_allclose(rolled[0], by_hand(reference, batch[0] / np.float32(255), 25), atol=1e-4)
    # N <= T': the first N frames of one run
    short = np.load(io.BytesIO(post(server, body.getvalue(), NPY, horizon=4).content))
    np.testing.assert_allclose(short, reference(batch / np.float32(255))[:, :4], atol=1e-5)


def test_clients_send_videos_and_horizons(
    server: Server, tiny_onnx: Path, videos: dict[str, bytes], clips: np.ndarray, reference, tmp_path: Path
) -> None:
    with Client(server.url) as remote, LocalClient(tiny_onnx, device="cpu") as local:
        for fmt, data in videos.items():
            path = tmp_path / f"clip{FORMATS[fmt][4]}"
            path.write_bytes(data)
            want = reference(decode_grey(data)[None, -T:])[0]
            for client in (remote, local):
                np.testing.assert_allclose(client.predict_video(path), want, atol=1e-5)
        clip = clips[2, :T, None]
        want = by_hand(reference, clip / np.float32(255), 25)
        np.testing.assert_allclose(remote.predict(clip, horizon=25), want, atol=1e-4)
        np.testing.assert_allclose(local.predict(clip, horizon=25), want, atol=1e-4)
        with pytest.raises(ServiceError) as caught:
            remote.predict_video(videos["mp4"][:1000])
        assert caught.value.status == 400
        with pytest.raises(ValueError, match="horizon"):
            local.predict(clip, horizon=0)


# ---------------------------------------------------------------------------------------
# stlight predict
# ---------------------------------------------------------------------------------------


def test_stlight_predict_reads_each_format_and_writes_npy_and_mp4(
    tiny_onnx: Path, videos: dict[str, bytes], reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli.stlight import main

    folder = tmp_path / "in"
    folder.mkdir()
    for fmt, data in videos.items():
        (folder / f"{fmt}{FORMATS[fmt][4]}").write_bytes(data)
    code = main(["predict", str(folder), "--out", str(tmp_path / "out"), "--model", str(tiny_onnx), "--video", "--no-progress"])
    assert code == 0, capsys.readouterr()
    for fmt, data in videos.items():
        got = np.load(tmp_path / "out" / f"{fmt}.npy")
        np.testing.assert_allclose(got, reference(decode_grey(data)[None, -T:])[0], atol=1e-5, err_msg=fmt)
        assert len(decode_grey((tmp_path / "out" / f"{fmt}.mp4").read_bytes())) == T + T_OUT


def test_stlight_predict_windows_through_a_server_and_horizon_locally(
    server: Server,
    tiny_onnx: Path,
    videos: dict[str, bytes],
    clips: np.ndarray,
    reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli.stlight import main

    path = tmp_path / "clip.webm"
    path.write_bytes(videos["webm"])
    out = tmp_path / "remote"
    code = main(["predict", str(path), "--out", str(out), "--url", server.url, "--windows", "--stride", "5", "--no-progress"])
    assert code == 0, capsys.readouterr()
    frames = decode_grey(videos["webm"])  # 24 frames: windows start at 0, 5 and 10
    want = reference(np.stack([frames[s : s + T] for s in (0, 5, 10)]))
    np.testing.assert_allclose(np.load(out / "clip.npy"), want, atol=1e-5)
    # --horizon: locally and through the server, both equal to feeding predictions back by hand
    np.save(tmp_path / "clip.npy", clips[3, :T, None])
    for where in (["--model", str(tiny_onnx)], ["--url", server.url]):
        out = tmp_path / where[0].strip("-")
        code = main(["predict", str(tmp_path / "clip.npy"), "--out", str(out), *where, "--horizon", "25", "--no-progress"])
        assert code == 0, capsys.readouterr()
        want = by_hand(reference, clips[3, :T, None] / np.float32(255), 25)
        np.testing.assert_allclose(np.load(out / "clip.npy"), want, atol=1e-4)


def test_stlight_predict_video_mistakes(tiny_onnx: Path, videos: dict[str, bytes], tmp_path: Path) -> None:
    from serving import run_cli

    (tmp_path / "cut.mp4").write_bytes(videos["mp4"][:2000])
    done = run_cli("predict", str(tmp_path / "cut.mp4"), "--out", str(tmp_path / "out"), "--model", str(tiny_onnx))
    assert done.returncode == 1 and "not a readable MP4" in done.stdout + done.stderr
    done = run_cli("predict", str(tmp_path / "cut.mp4"), "--out", str(tmp_path / "out"), "--stride", "3")
    assert done.returncode == 2 and "--windows" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------
# training: --dataset videos
# ---------------------------------------------------------------------------------------

# a small model predicting 1 frame from 4 (as tests/test_train.py): windows of 5 frames
SMALL = ["--preset", "tiny", "--dim", "32", "--depth", "2", "--in-frames", "4", "--out-frames", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def video_dir(clips: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 24-frame Moving MNIST videos in three formats, two in a sub-folder."""
    root = tmp_path_factory.mktemp("videos")
    (root / "more").mkdir()
    names = ["a.mp4", "b.webm", "c.avi", "more/d.mp4", "more/e.webm"]
    for i, name in enumerate(names):
        (root / name).write_bytes(make_video(np.roll(clips[i % len(clips)], i, axis=2), name.rsplit(".", 1)[1]))
    (root / ".hidden.mp4").write_bytes(b"not read")
    return root


def test_videos_dataset_splits_by_file_and_windows_decoded_frames(video_dir: Path) -> None:
    from model.config import preset
    from model.data import DataSpec, build_datasets

    config = preset("tiny").replace(in_frames=4, out_frames=1, dim=32, depth=2)
    spec = DataSpec("videos", data_dir=str(video_dir), val_fraction=0.4, stride=4)
    train, val = build_datasets(spec, config)
    assert len(train.files) == 3 and len(val.files) == 2
    assert not set(train.files) & set(val.files)
    assert {p.relative_to(video_dir).as_posix() for p in train.files + val.files} == {
        "a.mp4",
        "b.webm",
        "c.avi",
        "more/d.mp4",
        "more/e.webm",
    }
    per_file = len(range(0, 24 - 5 + 1, 4))  # windows of 5 frames, 4 apart
    assert len(train) == 3 * per_file and len(val) == 2 * per_file
    frames = decode_grey(train.files[0].read_bytes())
    inputs, targets = train[1]  # the first file's second window: frames 4-7, then 8
    np.testing.assert_allclose(inputs.numpy(), frames[4:8], atol=1e-6)
    np.testing.assert_allclose(targets.numpy(), frames[8:9], atol=1e-6)
    # the same seed, the same split; the whole folder for eval
    again, _ = build_datasets(spec, config)
    assert again.files == train.files
    from model.data import build_test_dataset

    assert len(build_test_dataset(spec, config)) == 5 * per_file


@pytest.mark.slow
def test_train_on_videos_resumes_to_identical_weights_and_evaluates(
    video_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from service.cli.stlight import main

    run = [*SMALL, "--dataset", "videos", "--data-dir", str(video_dir), "--stride", "4", "--val-fraction", "0.4"]
    run += ["--batch-size", "4", "--max-steps", "6", "--no-progress"]  # 15 training windows: 3 steps per epoch
    assert main(["train", *run, "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *run, "--stop-after", "4", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--threads", "1", "--no-progress"]) == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["step"] == whole["step"] == 6
    assert split["data"]["stride"] == 4 and split["data"]["resize"] == "none"
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--stride", "2"]) == 2
    assert "--stride 2 (run: 4)" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "whole" / "last.pt"), "--data-dir", str(video_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mse"] > 0


def test_train_on_wrong_size_colour_videos_says_resize(clips: np.ndarray, tmp_path: Path, capsys) -> None:
    from service.cli.stlight import main

    colour = np.stack([np.stack([np.kron(f, np.ones((1, 2), np.uint8))[:48]] * 3, axis=-1) for f in clips[0]])
    for name in ("x.mp4", "y.mp4"):
        (tmp_path / name).write_bytes(make_video(colour, "mp4"))
    base = ["train", *SMALL, "--dataset", "videos", "--data-dir", str(tmp_path), "--val-fraction", "0.5", "--max-steps", "1"]
    # the size is fitted from the data unless --height/--width say otherwise
    assert main([*base, "--height", "64", "--width", "64", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "128x48" in err and "64x64" in err and "--resize fit" in err and "Traceback" not in err
    assert main([*base, "--resize", "crop", "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "b")]) == 0


# ---------------------------------------------------------------------------------------
# the rollout plan and the OIP parameter, in process
# ---------------------------------------------------------------------------------------


def test_rollout_windows_and_the_oip_horizon_parameter() -> None:
    from service.core import horizon
    from service.core.errors import LimitExceeded, Unprocessable

    seen: list[np.ndarray] = []

    def model(window: np.ndarray) -> np.ndarray:  # T=3 -> T'=2: "next frames" = last frame + 1, + 2
        seen.append(window[0, :, 0, 0, 0].copy())
        return window[:, -1:] + np.arange(1, 3, dtype=np.float32)[None, :, None, None, None]

    clip = np.arange(3, dtype=np.float32)[None, :, None, None, None] * np.ones((1, 3, 1, 2, 2), np.float32)
    out = horizon.rollout(model, clip, 5, out_frames=2)
    assert out[0, :, 0, 0, 0].tolist() == [3, 4, 5, 6, 7]  # 3 steps, the last one's second frame dropped
    assert [w.tolist() for w in seen] == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]  # each step: the last T frames so far
    assert horizon.steps(1, 10) == 1 and horizon.steps(25, 10) == 3
    assert horizon.from_parameters({}) is None
    assert horizon.from_parameters({"horizon": 25, "binary_data_output": True}) == 25
    for bad in (0, -3, 2.5, "25", True):
        with pytest.raises(Unprocessable, match="integer >= 1"):
            horizon.from_parameters({"horizon": bad})
    with pytest.raises(LimitExceeded, match="limit of 60"):
        horizon.from_parameters({"horizon": 61}, max_horizon=60)
