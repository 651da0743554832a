"""What keeping answers for online accuracy costs a ``POST /predict``: the same model served twice,
answers kept (``STLIGHT_ONLINE_BUDGET_MB`` 256, the default) and not (``0``), side by side.

    python benchmarks/online_keep.py                          # shipped model, 3 rounds of 3 s
    python benchmarks/online_keep.py --model m.onnx --rounds 5 --seconds 5 --batch 8

Per server: the median latency of one request at a time (``--latency-requests``), and clips/s
with ``--concurrency`` clients sending requests back to back for ``--seconds``. Rounds are
interleaved (kept, off, off, kept, ...), so a noisy neighbour hits both alike; the table shows
medians over rounds and the ratio kept / off. A third row, ``kept+feedback``, runs on the kept
server with every answer's truth posted right after it (``/v1/feedback``: the cost of grading,
SSIM included, on the same event loop and cores). Below it: the in-process cost of
``AnswerStore.keep`` and ``grade`` per request, without HTTP.

Take ``flock /work/bench.lock`` on a shared machine and write ``uptime`` beside the numbers.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import REPO, median_ms, start_server

from service.inference.online import AnswerStore

NPY = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def one(http: httpx.Client, body: bytes, truth: bytes | None) -> None:
    answer = http.post("/predict", content=body, headers=NPY)
    answer.raise_for_status()
    if truth is not None:
        http.post(f"/v1/feedback/{answer.headers['x-request-id']}", content=truth, headers=NPY).raise_for_status()


def throughput(url: str, body: bytes, truth: bytes | None, clips: int, concurrency: int, seconds: float) -> float:
    """Clips/s with ``concurrency`` clients sending back to back for ``seconds``."""
    done = [0] * concurrency
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:  # at least one request each, however late the thread starts
                one(http, body, truth)
                done[index] += clips
                if time.perf_counter() >= stop:
                    break

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - began)


def in_process(shape: tuple[int, ...], repeats: int) -> tuple[float, float]:
    """Median ms of ``AnswerStore.keep`` and of ``grade`` for one answer of ``shape``."""
    rng = np.random.default_rng(0)
    pred, truth = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
    store = AnswerStore(256 << 20, 600)
    count = iter(range(10**9))
    keep_ms = median_ms(lambda: store.keep(f"r{next(count)}", "m", "1", pred), repeats)

    def keep_and_grade() -> None:
        rid = f"g{next(count)}"
        store.keep(rid, "m", "1", pred)
        store.grade(rid, truth)

    return keep_ms, median_ms(keep_and_grade, repeats) - keep_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "service" / "assets" / "default.onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="clips per request")
    parser.add_argument("--latency-requests", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (args.batch, 10, 1, 64, 64), dtype=np.uint8)
    body, truth = npy(clips), npy(rng.random((args.batch, 10, 1, 64, 64), dtype=np.float32))
    rows = {"off": (None, "0"), "kept": (None, "256"), "kept+feedback": (truth, "256")}
    results: dict[str, dict[str, list[float]]] = {name: {"ms": [], "clips/s": []} for name in rows}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            budget: start_server(["--model", str(args.model), "--device", "cpu"], Path(tmp) / f"{budget}.log",
                                 env={"STLIGHT_ONLINE_BUDGET_MB": budget, "STLIGHT_ACCESS_LOG": "false"})
            for budget in ("0", "256")
        }  # fmt: skip
        try:
            for round_index in range(args.rounds):
                order = list(rows) if round_index % 2 == 0 else list(reversed(rows))
                for name in order:
                    sent, budget = rows[name]
                    url = servers[budget][1]
                    with httpx.Client(base_url=url, timeout=60) as http:
                        ms = median_ms(lambda http=http, sent=sent: one(http, body, sent), args.latency_requests, warmup=5)
                    results[name]["ms"].append(ms)
                    results[name]["clips/s"].append(throughput(url, body, sent, args.batch, args.concurrency, args.seconds))
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)

    off = {key: statistics.median(values) for key, values in results["off"].items()}
    print(f"POST /predict, {args.batch} clip(s) of 10x1x64x64 uint8 per request, {args.rounds} rounds, medians")
    print(f"{'server':<15} {'ms (1 at a time)':>17} {'ratio':>6} {f'clips/s ({args.concurrency} clients)':>22} {'ratio':>6}")
    for name, values in results.items():
        ms, rate = statistics.median(values["ms"]), statistics.median(values["clips/s"])
        print(f"{name:<15} {ms:>17.2f} {ms / off['ms']:>6.2f} {rate:>22.1f} {rate / off['clips/s']:>6.2f}")
    keep_ms, grade_ms = in_process((args.batch, 10, 1, 64, 64), 50)
    print(f"in process, per request: AnswerStore.keep {keep_ms:.3f} ms, grade (MSE/MAE/PSNR/SSIM) {grade_ms:.2f} ms")


if __name__ == "__main__":
    main()
