"""Decoding within its limits while it runs, as an attacker would try it: frames that grow after
their container's header, a GIF whose huge canvas changes one pixel a frame, an animation sent
as one multipart frame, an .npz whose header declares gigabytes. Each file is built here, small,
with PyAV or by hand; each must be refused quickly, before the memory it asks for is taken.

The same attacks against a running server (its peak RSS and a well-formed client's latency
beside them) are in tests/test_attacks.py."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bombs import canvas_gif, deflate_bomb, growing_mkv

from service.codecs import media
from service.core import video
from service.core.card import ClipSpec
from service.core.errors import LimitExceeded, Unprocessable
from service.core.frames import load_npz_member
from service.core.limits import DEFAULT_DECODE_LIMITS, DecodeLimits

# ---------------------------------------------------------------------------------------
# video bodies (service.core.video: the server, stlight predict and training read through it)
# ---------------------------------------------------------------------------------------


def read(data: bytes, kind: str, limits: DecodeLimits = DEFAULT_DECODE_LIMITS, count: int = 10) -> video.Video:
    return video.read_video(data, media_type=kind, channels=1, height=64, width=64, resize="fit", count=count, limits=limits)


def test_frames_larger_than_their_header_said_are_refused_before_they_are_allocated() -> None:
    data = growing_mkv()
    assert video.probe(data, "video/x-matroska").width == 64  # the container claims 64x64
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as refused:
        read(data, "video/x-matroska", count=2)
    assert time.monotonic() - started < 1.0
    assert refused.value.kind == "frame-too-large"
    assert "frame 2" in refused.value.detail and "16,777,216" in refused.value.detail
    # within a limit of their own size they decode: the refusal is the limit's, not a broken file
    assert read(growing_mkv(big=128), "video/x-matroska", count=6).decoded == 6


def test_a_gif_canvas_bomb_is_refused_from_its_header() -> None:
    data = canvas_gif(8192, 1000)  # 23 KB: a decoder would hand over 1000 canvases of 256 MiB
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as refused:
        read(data, "image/gif")
    assert time.monotonic() - started < 0.5
    assert refused.value.kind == "frame-too-large" and "8192x8192" in refused.value.detail


def test_pixels_decoded_in_all_are_budgeted_frame_by_frame() -> None:
    data = canvas_gif(1024, 2000)  # each frame a 1 Mpx canvas: 2 Gpx in 46 KB
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as refused:
        read(data, "image/gif", DecodeLimits(max_decoded_pixels=20 << 20))
    assert time.monotonic() - started < 2.0
    assert refused.value.kind == "decode-too-large"
    assert "at frame 20" in refused.value.detail and "STLIGHT_MAX_DECODED_PIXELS" in refused.value.detail
    with pytest.raises(LimitExceeded) as slow:  # the wall clock, checked after each frame
        read(data, "image/gif", DecodeLimits(timeout_s=0.05))
    assert slow.value.kind == "decode-too-slow" and "STLIGHT_DECODE_TIMEOUT_S" in slow.value.detail
    # a small canvas is converted as it arrives: the last 10 of 2000 frames, at the model's size
    clip = read(canvas_gif(64, 2000), "image/gif")
    assert clip.decoded == 2000 and clip.frames.shape == (10, 1, 64, 64)


def test_an_animation_sent_as_one_frame_is_refused_without_walking_its_frames() -> None:
    spec = ClipSpec(10, 10, 1, 64, 64)
    animation = canvas_gif(64, 500_000)  # 11 MB; walking its frames (n_frames) takes over a second
    files = [(f"f{i}.gif", animation if i == 3 else canvas_gif(64, 1)) for i in range(10)]
    started = time.monotonic()
    with pytest.raises(Unprocessable) as refused:
        media.decode_images(files, spec)
    assert time.monotonic() - started < 0.5
    assert refused.value.kind == "animated-image" and "frame 3" in refused.value.detail


# ---------------------------------------------------------------------------------------
# .npz members (stlight predict, training): checked from their headers before they are inflated
# ---------------------------------------------------------------------------------------


def test_npz_members_are_read_from_checked_headers(tmp_path: Path) -> None:
    clips = np.random.default_rng(0).integers(0, 255, (3, 20, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", clips=clips)
    np.savez_compressed(tmp_path / "deflated.npz", clips=clips)
    for name in ("stored.npz", "deflated.npz"):
        for mmap_above in (0, 1 << 30):  # mapped (in place / from a temporary file), or in memory
            loaded = load_npz_member(tmp_path / name, "clips", mmap_above=mmap_above)
            assert isinstance(loaded, np.memmap) == (mmap_above == 0)
            np.testing.assert_array_equal(loaded, clips)
    # a .npy header that claims more than the zip says the member holds
    forged = io.BytesIO()
    with zipfile.ZipFile(forged, "w", zipfile.ZIP_DEFLATED) as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (40_000, 20, 1, 64, 64)})
        archive.writestr("clips.npy", header.getvalue() + bytes(1000))
    (tmp_path / "forged.npz").write_bytes(forged.getvalue())
    with pytest.raises(ValueError, match=r"\(40000, 20, 1, 64, 64\) uint8 = 3,276,800,000 bytes.*holds 1,000"):
        load_npz_member(tmp_path / "forged.npz", "clips")


def test_an_npz_bomb_for_stlight_predict_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    deflate_bomb(src / "bomb.npz", (81_920, 20, 1, 32, 32))  # 1.6 GiB of zeros in ~1.6 MB
    assert (src / "bomb.npz").stat().st_size < 4 << 20
    np.save(src / "good.npy", np.zeros((10, 1, 64, 64), np.uint8))
    script = (
        "import re, sys\n"
        "from service.cli.stlight import main\n"
        "code = main(sys.argv[1:])\n"
        # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child of a
        # large pytest process would report the parent's peak as its own
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
        "print('peak-rss-mb', int(hwm.group(1)) // 1024)\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", script, "predict", str(src), "--out", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 1, run.stdout + run.stderr  # one input failed, the other answered
    line = next(ln for ln in run.stdout.splitlines() if "bomb.npz" in ln)
    assert "1,677,721,600 bytes" in line and "numpy.savez" in line, line
    assert (tmp_path / "out" / "good.npy").is_file()
    peak = int(run.stdout.split("peak-rss-mb")[1].split()[0])
    assert peak < 600, f"peak RSS {peak} MB"  # the bomb would take 1,600 MB more
    assert "Traceback" not in run.stdout + run.stderr
    assert elapsed < 60
