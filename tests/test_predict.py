"""``stlight predict`` and the Python clients, on real Moving MNIST clips.

Local mode, remote mode (a real ``stlight serve`` uvicorn process on loopback, torch blocked in
both the server and the remote CLI) and both clients must give what an in-process ONNX Runtime
session gives on the same file.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import Server, free_port, run_cli

from service.cli.stlight import build_parser, main
from service.client import Client, LocalClient, ServiceError, ServiceUnreachable
from service.core.frames import to_uint8

T, T_OUT = 10, 10  # the tiny preset: 10 -> 10 frames of 1 x 64 x 64


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def save_gif(path: Path, frames: np.ndarray, duration: int = 100) -> None:
    """(T, 1, H, W) uint8 -> animated GIF (Pillow merges identical consecutive frames)."""
    images = [Image.fromarray(f[0]) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


def gif_frames(path: Path) -> list[np.ndarray]:
    """Frames of a GIF, each repeated by its duration in units of the shortest one."""
    with Image.open(path) as image:
        frames = [(np.asarray(f.convert("L")), f.info["duration"]) for f in _frames(image)]
    unit = min(d for _, d in frames)
    return [f for f, d in frames for _ in range(round(d / unit))]


def _frames(image: Image.Image) -> Iterator[Image.Image]:
    for index in range(image.n_frames):
        image.seek(index)
        yield image


def stlight(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(mnist_dir: Path) -> np.ndarray:
    """(12, 20, 1, 64, 64) uint8: Moving MNIST clips of real digits, 10 past + 10 future frames."""
    from model.data import load_mnist_digits, moving_mnist_clip

    digits = load_mnist_digits(mnist_dir, download=False)
    rng = np.random.default_rng(6)
    return np.stack([moving_mnist_clip(rng, digits, T + T_OUT) for _ in range(12)])[:, :, None]


@pytest.fixture(scope="module")
def inputs(clips: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder of every input kind; returns it and {output path relative to --out: the input
    clips as float32 in [0, 1], with the input's leading shape}."""
    root = tmp_path_factory.mktemp("inputs")
    past = clips[:, :T]  # (12, 10, 1, 64, 64) uint8
    expected: dict[str, np.ndarray] = {}
    np.save(root / "one.npy", past[0])  # (T, C, H, W) uint8
    expected["one.npy"] = past[0] / np.float32(255)
    many = (past[1:6] / np.float32(255)).astype(np.float32)  # (5, T, C, H, W) float32
    np.save(root / "many.npy", many)
    expected["many.npy"] = many
    (root / "nested" / "walk").mkdir(parents=True)
    np.savez_compressed(root / "nested" / "archive.npz", clips=past[6:9])
    expected["nested/archive.npy"] = past[6:9] / np.float32(255)
    frames = root / "nested" / "walk" / "frames_a"
    frames.mkdir()
    for t, frame in enumerate(past[9]):
        Image.fromarray(frame[0]).save(frames / f"frame_{t:02d}.png")
    (frames / "notes.txt").write_text("not a frame; ignored")
    expected["nested/walk/frames_a.npy"] = past[9] / np.float32(255)
    save_gif(root / "anim.gif", past[10])
    expected["anim.npy"] = past[10] / np.float32(255)
    held = past[11].copy()
    held[1] = held[0]  # the digits stand still for a frame: Pillow merges the two GIF frames
    save_gif(root / "held.gif", held)
    expected["held.npy"] = held / np.float32(255)
    return root, expected


@pytest.fixture(scope="module")
def served(
    tiny_onnx: Path, clips: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, np.ndarray, dict[str, int]]]:
    """The tiny model served; a client asks for a prediction the moment the process starts, so it
    meets refused connections (not listening yet) and 503 + Retry-After (warming up: 40 warm-up
    runs). Yields the server, that first answer and the client's retry counts."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = Server(
        log,
        "--model",
        str(tiny_onnx),
        "--max-batch-size",
        "8",
        "--device",
        "cpu",
        port=free_port(),
        env={"STLIGHT_WARMUP_RUNS": "40"},
    )
    try:
        with Client(server.url, retries=200, backoff_s=0.02, max_backoff_s=0.2) as client:
            first = client.predict(clips[0, :T])
            retried = dict(client.retried)
        yield server, first, retried
    finally:
        code = server.stop()
    assert code == 0, server.text()


# ---------------------------------------------------------------------------------------
# same arrays in every mode
# ---------------------------------------------------------------------------------------


def check_outputs(out: Path, expected: dict[str, np.ndarray], reference) -> None:
    for name, clip_in in expected.items():
        got = np.load(out / name)
        want = reference(clip_in if clip_in.ndim == 5 else clip_in[None])
        want = want if clip_in.ndim == 5 else want[0]
        assert got.dtype == np.float32 and got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    assert written == sorted(expected), written
    assert not list(out.rglob(".*partial")), "a partial output was left behind"


def test_local_cli_matches_in_process_session(inputs, reference, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    root, expected = inputs
    code, out, err = stlight(
        capsys, str(root), "--out", str(tmp_path / "out"), "--model", str(tiny_onnx), "--batch-size", "4", "--device", "cpu"
    )
    assert code == 0, out + err
    check_outputs(tmp_path / "out", expected, reference)
    assert re.search(r"12 clip\(s\) from 6 input\(s\) in [\d.]+ s \([\d.]+ clips/s\); 0 skipped .*; 0 failed", out), out


def test_remote_cli_without_torch_matches_in_process_session(served, inputs, reference, tmp_path: Path) -> None:
    server, _, _ = served
    root, expected = inputs
    args = [
        "predict",
        str(root),
        "--out",
        str(tmp_path / "out"),
        "--url",
        server.url,
        "--batch-size",
        "3",
        "--concurrency",
        "3",
        "--no-progress",
    ]
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    check_outputs(tmp_path / "out", expected, reference)
    assert "12 clip(s) from 6 input(s)" in result.stdout


def test_python_clients_match_in_process_session(served, tiny_onnx: Path, clips: np.ndarray, reference) -> None:
    server, _, _ = served
    past = clips[:, :T]  # (12, T, 1, 64, 64) uint8
    want = reference(past / np.float32(255))
    with Client(server.url, batch_size=5, concurrency=3) as remote:  # 12 clips: 3 requests, at once
        np.testing.assert_allclose(remote.predict(past), want, rtol=1e-5, atol=1e-5)
        single = remote.predict(past[3])
        assert single.shape == (T_OUT, 1, 64, 64)
        np.testing.assert_allclose(single, want[3], rtol=1e-5, atol=1e-5)
        with pytest.raises(ServiceError) as bad:
            remote.predict(past[0, :, :, :32])
        assert bad.value.status == 422 and "64x64" in str(bad.value)
    with LocalClient(tiny_onnx, device="cpu", batch_size=5) as local:
        assert local.spec.input_shape == (T, 1, 64, 64)
        np.testing.assert_allclose(local.predict(past), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(local.predict(past[3]), want[3], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="64x64"):
            local.predict(past[0, :, :, :32])


def test_client_retries_until_the_server_is_ready(served, clips: np.ndarray, reference) -> None:
    _, first, retried = served
    assert retried.get("connection", 0) >= 1, retried  # asked before the port was open
    assert retried.get("503", 0) >= 1, retried  # then while the model warmed up
    np.testing.assert_allclose(first, reference(clips[:1, :T] / np.float32(255))[0], rtol=1e-5, atol=1e-5)


def test_client_gives_up_after_its_retries() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff_s=0.01) as client:
        with pytest.raises(ServiceUnreachable, match="after 2 retries"):
            client.predict(np.zeros((T, 1, 64, 64), np.uint8))
        assert client.retried["connection"] == 2


def test_client_retries_a_gateways_502_but_not_a_400() -> None:
    """A load balancer answers 502 when the replica it chose dies mid-request (tests/test_compose.py
    kills one for real); the clip is re-sent. A 400 is the request's own fault and is not."""
    answers = iter([502, 502, 200, 400])
    body = io.BytesIO()
    np.save(body, np.zeros((2, 1, 4, 4), np.float32))

    def gateway(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 200:
            return httpx.Response(200, content=body.getvalue(), headers={"Content-Type": "application/x-npy"})
        return httpx.Response(status, json={"title": "Bad Gateway" if status == 502 else "Bad Request"})

    with Client("http://gateway", client=httpx.Client(transport=httpx.MockTransport(gateway)), backoff_s=0.001) as client:
        assert client.predict(np.zeros((T, 1, 4, 4), np.float32)).shape == (2, 1, 4, 4)
        assert client.retried["502"] == 2
        with pytest.raises(ServiceError) as error:
            client.predict(np.zeros((T, 1, 4, 4), np.float32))
        assert error.value.status == 400 and client.retried["502"] == 2


# ---------------------------------------------------------------------------------------
# bad inputs, resuming, images
# ---------------------------------------------------------------------------------------


def test_broken_inputs_are_reported_and_the_rest_written(clips: np.ndarray, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "good.npy", clips[0, :T])
    np.save(src / "whole.npy", clips[1])  # 20 frames without --has-targets
    np.save(src / "small.npy", clips[2, :T, :, :32, :32])
    (src / "truncated.npy").write_bytes((src / "good.npy").read_bytes()[:3000])
    (src / "noise.npy").write_bytes(b"these bytes are not numpy")
    frames = src / "frames_bad"
    frames.mkdir()
    for t, frame in enumerate(clips[3, :T]):
        Image.fromarray(frame[0]).save(frames / f"f{t:02d}.png")
    (frames / "f04.png").write_text("a text file named like a frame")
    save_gif(src / "anim.gif", clips[4, :T])
    (src / "corrupt.gif").write_bytes((src / "anim.gif").read_bytes()[:40] + b"\x00garbage" * 20)
    out = tmp_path / "out"
    code, stdout, stderr = stlight(capsys, str(src), "--out", str(out), "--model", str(tiny_onnx), "--device", "cpu")
    assert code == 1
    reasons = {
        "whole.npy": "clips have 20 frames",
        "small.npy": "1 x 64 x 64",
        "truncated.npy": "truncated",
        "noise.npy": "not an .npy array",
        "frames_bad": "f04.png",
        "corrupt.gif": "GIF",
    }
    for name, reason in reasons.items():
        line = next((ln for ln in stdout.splitlines() if name in ln), "")
        assert reason in line, f"{name}: {line!r}\n{stdout}"
        assert name in stderr  # also reported as it happened
    assert "--has-targets" in stdout  # the 20-frame clip gets the hint
    assert sorted(p.name for p in out.rglob("*.npy")) == ["anim.npy", "good.npy"]
    assert not list(out.rglob(".*partial"))
    assert "Traceback" not in stdout + stderr
    assert re.search(r"2 clip\(s\) from 2 input\(s\).*; 6 failed", stdout), stdout


def test_second_run_skips_finished_inputs_and_overwrite_redoes_them(inputs, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    root, expected = inputs
    out = tmp_path / "out"
    args = (str(root), "--out", str(out), "--model", str(tiny_onnx), "--device", "cpu", "--no-progress")
    assert stlight(capsys, *args)[0] == 0
    stamps = {name: (out / name).stat().st_mtime_ns for name in expected}
    time.sleep(0.01)
    code, stdout, _ = stlight(capsys, *args)
    assert code == 0 and "0 clip(s) from 0 input(s)" in stdout and "6 skipped" in stdout, stdout
    assert {name: (out / name).stat().st_mtime_ns for name in expected} == stamps
    (out / "many.npy").unlink()  # as if interrupted before this one finished
    code, stdout, _ = stlight(capsys, *args)
    assert code == 0 and "5 clip(s) from 1 input(s)" in stdout and "5 skipped" in stdout, stdout
    code, stdout, _ = stlight(capsys, *args, "--overwrite")
    assert code == 0 and "12 clip(s) from 6 input(s)" in stdout and "0 skipped" in stdout, stdout
    assert all((out / name).stat().st_mtime_ns != stamps[name] for name in expected if name != "many.npy")


def test_png_and_gif_outputs_open_with_pillow(clips: np.ndarray, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "single.npy", clips[0, :T])
    np.save(src / "pair.npy", clips[1:3, :T])
    out = tmp_path / "out"
    code, stdout, _ = stlight(capsys, str(src), "--out", str(out), "--model", str(tiny_onnx), "--device", "cpu", "--png", "--gif")
    assert code == 0, stdout
    cases = [(out / "single", out / "single.gif", clips[0, :T], np.load(out / "single.npy"))]
    pair = np.load(out / "pair.npy")
    cases += [(out / "pair" / f"clip_{i:03d}", out / "pair" / f"clip_{i:03d}.gif", clips[1 + i, :T], pair[i]) for i in range(2)]
    for folder, gif, clip_in, prediction in cases:
        pngs = sorted(folder.glob("frame_*.png"))
        assert len(pngs) == T_OUT, folder
        for png, frame in zip(pngs, to_uint8(prediction), strict=True):
            with Image.open(png) as image:
                assert image.format == "PNG" and image.size == (64, 64)
                np.testing.assert_array_equal(np.asarray(image), frame[0])
        with Image.open(gif) as image:
            assert image.format == "GIF" and image.is_animated
        shown = gif_frames(gif)
        assert len(shown) == T + T_OUT, gif
        np.testing.assert_array_equal(np.stack(shown), to_uint8(np.concatenate([clip_in / 255, prediction]))[:, 0])
    # asking for images later redoes inputs that lack them
    code, stdout, _ = stlight(capsys, str(src), "--out", str(out), "--model", str(tiny_onnx), "--device", "cpu", "--png", "--gif")
    assert code == 0 and "2 skipped" in stdout, stdout


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------


def test_streamed_score_sums_equal_whole_set_metrics() -> None:
    from model import metrics
    from service.core.scores import ScoreSums

    rng = np.random.default_rng(0)
    true = rng.random((3, 4, 2, 8, 8))
    pred = true + rng.normal(0, 0.2, true.shape)  # values outside [0, 1]: PSNR clips, MSE does not
    sums = ScoreSums()
    sums.update(pred[:2], true[:2])
    sums.update(pred[2:], true[2:])
    got = sums.result()
    assert got["mse"] == pytest.approx(metrics.mse(pred, true), rel=1e-12)
    assert got["mae"] == pytest.approx(metrics.mae(pred, true), rel=1e-12)
    assert got["psnr"] == pytest.approx(metrics.psnr(pred, true), rel=1e-12)
    exact = ScoreSums()
    exact.update(true, true)
    assert exact.result()["psnr"] == metrics.psnr(true, true) == np.inf


def test_has_targets_prints_openstl_metrics(clips: np.ndarray, reference, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    from model import metrics

    np.save(tmp_path / "test.npy", clips[:7])  # (7, 20, 1, 64, 64): past and true future
    pred = reference(clips[:7, :T] / np.float32(255))
    true = clips[:7, T:] / np.float32(255)
    want = {"MSE": metrics.mse(pred, true), "MAE": metrics.mae(pred, true), "PSNR": metrics.psnr(pred, true)}
    args = (
        str(tmp_path / "test.npy"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(tiny_onnx),
        "--device",
        "cpu",
        "--has-targets",
        "--batch-size",
        "3",
    )
    for run in ("first", "resumed"):  # a resumed run scores the existing outputs
        code, stdout, _ = stlight(capsys, *args)
        assert code == 0, stdout
        found = dict(re.findall(r"(MSE|MAE|PSNR) ([\d.]+)", stdout))
        assert "over 7 clip(s)" in stdout, stdout
        for name, value in want.items():
            assert float(found[name]) == pytest.approx(value, rel=1e-4, abs=1e-3), (run, name, stdout)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "test.npy"), pred, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# usage mistakes and --help
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--url", "http://127.0.0.1:9", "--device", "cpu"], "--device applies to local mode"),
        (["--concurrency", "2"], "--concurrency applies to --url"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--url", "127.0.0.1:8000"], "must start with http://"),
        (["--horizon", "1001"], "--horizon 1001 is beyond the limit of 1000 frames (the service's default too"),
        (["--horizon", "30", "--max-horizon", "20"], "add --max-horizon 30 to go on"),
        (["--url", "http://127.0.0.1:9", "--horizon", "5000"], "beyond the limit of 1000 frames"),
    ],
)
def test_usage_mistakes_are_one_line_errors(extra: list[str], needle: str, tiny_onnx: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.zeros((T, 1, 64, 64), np.uint8))
    model = [] if "--url" in extra else ["--model", str(tiny_onnx)]
    code, _, err = stlight(capsys, str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), *model, *extra)
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_model_and_url_together_are_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "x.npy", "--out", str(tmp_path), "--model", "m.onnx", "--url", "http://127.0.0.1:1"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_every_flag_has_help() -> None:
    parser = build_parser()
    predict = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices")).choices["predict"]  # type: ignore[union-attr]
    flags = {o for a in predict._actions for o in a.option_strings}
    for flag in (
        "--out",
        "--model",
        "--url",
        "--png",
        "--gif",
        "--overwrite",
        "--has-targets",
        "--batch-size",
        "--concurrency",
        "--device",
    ):
        assert flag in flags
    assert all(a.help for a in predict._actions), [a.dest for a in predict._actions if not a.help]


def test_large_inputs_stream_through_memory_maps(inputs, reference, tiny_onnx: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Arrays over MEMMAP_BYTES are read and written through memory maps (here: every array)."""
    from service.batch import readers

    monkeypatch.setattr(readers, "MEMMAP_BYTES", 1)
    root, expected = inputs
    code, stdout, _ = stlight(
        capsys,
        str(root / "many.npy"),
        str(root / "one.npy"),
        "--out",
        str(tmp_path),
        "--model",
        str(tiny_onnx),
        "--batch-size",
        "2",
    )
    assert code == 0, stdout
    check_outputs(tmp_path, {k: expected[k] for k in ("many.npy", "one.npy")}, reference)


def test_no_model_and_no_shipped_default_says_what_to_pass(tmp_path: Path, capsys, monkeypatch) -> None:
    import service.core.assets

    monkeypatch.setattr(service.core.assets, "DEFAULT_MODEL", tmp_path / "missing.onnx")
    np.save(tmp_path / "x.npy", np.zeros((T, 1, 64, 64), np.uint8))
    code, _, err = stlight(capsys, str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"))
    assert code == 2 and "no default model is shipped" in err and "--model" in err, err
