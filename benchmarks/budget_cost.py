"""What the per-request budgets cost a well-formed request: each check timed with and without
it, side by side in one run, next to the latency of a real request to ``stlight serve``.

    python benchmarks/budget_cost.py                 # the shipped default model, CPU
    python benchmarks/budget_cost.py --repeats 200

Rows (medians of ``--repeats`` interleaved runs after a warm-up):

- answer budgets: ``check_frames_out`` + ``check_answer_bytes``, once per request;
- decode budget: decoding a 20-frame 64x64 MP4 body with the frame-by-frame checks, and with
  them replaced by a no-op (the same decode otherwise);
- codec pool: one hop through the bounded pool vs ``asyncio.to_thread`` (what the routes used);
- the deadline: a real ``/predict`` npy request (p50) with the default 30 s deadline; its cost is
  one timer per request, shown as the request's own latency for scale.

``share`` divides the added time by the p50 of a real ``/predict`` request (npy, one clip), so a
budget that costs a normal request nothing shows as ~0 %.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from common import start_server

from service.core import horizon, video
from service.core.limits import BINARY_ANSWER, MAX_ANSWER_MB, MAX_FRAMES_OUT
from service.server.workers import CodecPool


def interleaved(with_fn: Callable[[], object], without_fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median ms of each, run alternately, each first every other time (whichever runs first in
    a pair was measured ~1 ms slower on a 50 ms decode: an order effect, not the code)."""
    with_fn(), without_fn()
    times: dict[int, list[float]] = {0: [], 1: []}
    for index in range(repeats):
        order = ((0, with_fn), (1, without_fn)) if index % 2 == 0 else ((1, without_fn), (0, with_fn))
        for which, fn in order:
            began = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - began)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def answer_checks() -> None:
    horizon.check_frames_out(1, 10, MAX_FRAMES_OUT)
    horizon.check_answer_bytes(1, 10, 4096, BINARY_ANSWER, MAX_ANSWER_MB)


def _count_only(budget: video._Budget, frame: object) -> None:
    """The frame count the decoder reads back, and none of the checks."""
    budget.frames += 1


def decode_rows(repeats: int) -> tuple[float, float]:
    frames = (np.random.default_rng(0).integers(0, 255, (20, 1, 64, 64))).astype(np.uint8)
    body = video.encode_video(frames, 10.0, "mp4")

    def decode() -> object:
        return video.read_video(body, media_type="video/mp4", channels=1, height=64, width=64, count=10)

    checked = video._Budget.charge

    def unchecked() -> object:
        video._Budget.charge = _count_only  # type: ignore[method-assign]
        try:
            return decode()
        finally:
            video._Budget.charge = checked  # type: ignore[method-assign]

    return interleaved(decode, unchecked, repeats)


def pool_rows(repeats: int) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        pool = CodecPool(os.cpu_count() or 1, 8)
        job = sum
        data = list(range(100))
        a, b = [], []
        for _ in range(repeats):
            began = time.perf_counter()
            await pool.run(job, data)
            a.append(time.perf_counter() - began)
            began = time.perf_counter()
            await asyncio.to_thread(job, data)
            b.append(time.perf_counter() - began)
        pool.close()
        return statistics.median(a) * 1e3, statistics.median(b) * 1e3

    return asyncio.run(run())


def request_p50(repeats: int) -> tuple[float, float]:
    """p50 ms of /predict (npy, one clip) and of its JSON answer, against a real server."""
    clip = np.random.default_rng(1).random((10, 1, 64, 64), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, clip)
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_server(["--device", "cpu"], Path(folder) / "server.log")
        try:
            with httpx.Client(timeout=30) as client:
                times: dict[str, list[float]] = {"application/x-npy": [], "application/json": []}
                for accept in times:
                    warm = {"content-type": "application/x-npy", "accept": accept}
                    client.post(url + "/predict", content=buffer.getvalue(), headers=warm)
                for _ in range(repeats):
                    for accept, seen in times.items():
                        headers = {"content-type": "application/x-npy", "accept": accept}
                        began = time.perf_counter()
                        answer = client.post(url + "/predict", content=buffer.getvalue(), headers=headers)
                        seen.append(time.perf_counter() - began)
                        assert answer.status_code == 200, answer.text
        finally:
            proc.terminate()
            proc.wait(30)
    return statistics.median(times["application/x-npy"]) * 1e3, statistics.median(times["application/json"]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per row (default 100)")
    args = parser.parse_args()
    npy_ms, json_ms = request_p50(max(20, args.repeats // 2))
    checks_with, checks_without = interleaved(answer_checks, lambda: None, args.repeats * 100)
    decode_with, decode_without = decode_rows(args.repeats)
    pool_ms, thread_ms = pool_rows(args.repeats)
    rows = [
        ("answer budgets (frames, bytes)", checks_with, checks_without),
        ("decode budget (20-frame MP4 body)", decode_with, decode_without),
        ("codec pool hop vs asyncio.to_thread", pool_ms, thread_ms),
    ]
    print(f"/predict p50 (npy answer): {npy_ms:.2f} ms; (JSON answer): {json_ms:.2f} ms; load average {os.getloadavg()}")
    print(f"{'':38} {'with ms':>10} {'without ms':>11} {'added ms':>9} {'ratio':>7} {'share':>7}")
    for name, with_ms, without_ms in rows:
        added = with_ms - without_ms
        ratio = with_ms / without_ms if without_ms else float("inf")
        print(f"{name:38} {with_ms:10.4f} {without_ms:11.4f} {added:9.4f} {ratio:7.2f} {added / npy_ms:7.1%}")


if __name__ == "__main__":
    main()
