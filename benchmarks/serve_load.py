"""Load test of ``stlight serve``: latency p50/p99 and clips/s at several concurrency levels,
dynamic batching on (max batch 8) and off (max batch 1), against in-process ONNX Runtime on the
same file and the same threads.

    python benchmarks/serve_load.py                      # exports the tiny preset (needs torch)
    python benchmarks/serve_load.py --model model.onnx --requests 400 --concurrency 1 8 32

Each client sends one clip (uint8 npy, as a camera would) and waits for the float32 npy answer;
clients and servers share this machine's CPUs, so on a small CPU box the client's own work is
part of the service numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import common
import httpx
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
NPY = "application/x-npy"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, help="ONNX file to serve (default: export the tiny preset with seed 0; needs torch)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests measured per configuration (default 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients (default 1 8 32)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="max batch with batching on (default 8)")
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        help="the optional extra wait of the third row, to compare with the default 0 (default 5)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="service device (default auto)")
    return parser.parse_args()


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.array(latencies) * 1000, q))


# ---------------------------------------------------------------------------------------
# in-process ONNX Runtime
# ---------------------------------------------------------------------------------------


def in_process(model: Path, clip: np.ndarray, batch: int, runs: int, device: str) -> dict[str, float | str]:
    """Sequential session.run of ``batch`` clips, the engine's session options."""
    from service.inference.engine import Engine

    engine = Engine(model, device, len(os.sched_getaffinity(0)), 1)
    clips = np.repeat(clip[None].astype(np.float32) / 255, batch, axis=0)  # (batch, T, C, H, W)
    for _ in range(3):
        engine.run(clips)
    latencies = []
    began = time.perf_counter()
    for _ in range(max(1, runs // batch)):
        start = time.perf_counter()
        engine.run(clips)
        latencies.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    return {
        "provider": engine.provider,
        "p50": percentile_ms(latencies, 50),
        "p99": percentile_ms(latencies, 99),
        "clips_s": batch * len(latencies) / elapsed,
    }


# ---------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------


def start_server(model: Path, max_batch: int, delay_ms: float, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    args = ["--model", str(model), "--device", device, "--max-batch-size", str(max_batch), "--max-delay-ms", str(delay_ms)]
    env = {"STLIGHT_QUEUE_SIZE": "4096", "STLIGHT_REQUEST_TIMEOUT_S": "600"}
    return common.start_server([*args, "--log-level", "info"], log, env, timeout_s=120)


async def load(url: str, body: bytes, concurrency: int, total: int) -> tuple[list[float], float]:
    """``concurrency`` clients sending requests back to back until ``total`` are answered."""
    latencies: list[float] = []
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                response = await http.post("/predict", content=body, headers={"Content-Type": NPY, "Accept": NPY})
                if response.status_code != 200:
                    raise SystemExit(f"{response.status_code}: {response.text}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(client() for _ in range(concurrency)))  # warm the connections
        latencies.clear()
        remaining = total
        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began


def main() -> None:
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="stlight-bench-"))
    model = args.model
    if model is None:
        from export import export_preset

        model = export_preset("tiny", workdir / "tiny.onnx", seed=0)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape[1:]  # (T, C, H, W)
    del session
    clip = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, clip)
    body = buffer.getvalue()

    rows: list[tuple[str, str, dict[str, float | str]]] = []
    single = in_process(model, clip, 1, args.requests, args.device)
    rows.append(("in-process ORT, batch 1", "1", single))
    rows.append(
        (
            f"in-process ORT, batch {args.max_batch_size}",
            "-",
            in_process(model, clip, args.max_batch_size, args.requests * 2, args.device),
        )
    )
    configs = [
        ("service, batching off (max batch 1)", 1, 0.0),
        # the default: no wait; requests arriving during a run form the next batch
        (f"service, batching on (max batch {args.max_batch_size}, no extra wait: the default)", args.max_batch_size, 0.0),
        (
            f"service, batching on (max batch {args.max_batch_size}, +{args.max_delay_ms:g} ms wait)",
            args.max_batch_size,
            args.max_delay_ms,
        ),
    ]
    progress = tqdm(total=len(configs) * len(args.concurrency), desc="load", unit="run")
    for label, max_batch, delay_ms in configs:
        proc, url = start_server(model, max_batch, delay_ms, args.device, workdir / f"serve-{max_batch}-{delay_ms:g}.log")
        try:
            provider = httpx.get(url + "/readyz").json()["provider"]
            for concurrency in args.concurrency:
                latencies, elapsed = asyncio.run(load(url, body, concurrency, args.requests))
                rows.append(
                    (
                        label,
                        str(concurrency),
                        {
                            "provider": provider,
                            "p50": percentile_ms(latencies, 50),
                            "p99": percentile_ms(latencies, 99),
                            "clips_s": len(latencies) / elapsed,
                        },
                    )
                )
                progress.update()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    progress.close()

    base = float(single["clips_s"])
    cpus = len(os.sched_getaffinity(0))
    print(
        f"\nmodel {model.name} ({os.path.getsize(model) / 1e6:.1f} MB), clip {tuple(shape)}, {args.requests} requests per "
        f"row, {cpus} CPUs"
    )
    print("| mode | clients | provider | p50 ms | p99 ms | clips/s | clips/s vs in-process batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for label, concurrency, r in rows:
        print(
            f"| {label} | {concurrency} | {r['provider']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['clips_s']:.0f} | "
            f"{float(r['clips_s']) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
