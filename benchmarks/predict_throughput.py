"""Throughput of ``stlight predict``: clips/s in local mode (ONNX Runtime in-process) and remote
mode (a ``stlight serve`` subprocess on loopback) at several concurrencies, on one large .npy and
on many one-clip files, against bare ``session.run`` on the same file and threads.

    python benchmarks/predict_throughput.py                    # the shipped model, or tiny exported
    python benchmarks/predict_throughput.py --model m.onnx --clips 512 --concurrency 1 4 8

Times cover reading inputs, checking them, predicting and writing the .npy outputs (no images).
Client and server share this machine's CPUs, so on a small box remote mode pays for both sides.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import common  # noqa: E402

from service.batch import discover, predict_files  # noqa: E402
from service.client import Client, LocalClient  # noqa: E402
from service.core.assets import DEFAULT_MODEL  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        help="ONNX file (default: the shipped model, else the tiny preset exported with seed 0; needs torch)",
    )
    parser.add_argument("--clips", type=int, default=256, help="clips per measurement (default 256)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="--batch-size of stlight predict and the server's max batch (default 8)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="remote requests in flight (default 1 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, the best is shown (default 3)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"), help="device of both modes (default cpu)")
    return parser.parse_args()


def model_path(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model:
        return args.model
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    from export import export_preset

    return export_preset("tiny", workdir / "tiny.onnx", seed=0)


def make_clips(n: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    """(n, T, C, H, W) uint8 Moving MNIST when the digits are at hand, else random pixels."""
    try:
        from model.data import load_mnist_digits, moving_mnist_clip

        digits = load_mnist_digits(REPO.parent / "shared" / "data" / "mnist", download=False)
        rng = np.random.default_rng(0)
        t, c, h, _ = shape
        return np.stack([moving_mnist_clip(rng, digits, t, h) for _ in range(n)])[:, :, None].repeat(c, axis=2)
    except Exception:
        return np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)


def start_server(model: Path, batch: int, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    return common.start_server(["--model", str(model), "--device", device, "--max-batch-size", str(batch)], log, timeout_s=120)


def bare_session(local: LocalClient, clips: np.ndarray, batch: int, repeats: int) -> float:
    """clips/s of Engine.run alone on ``batch``-clip chunks, inputs already float32 (best of ``repeats``)."""
    x = clips.astype(np.float32) / 255
    local.engine.run(x[:batch])
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        for start in range(0, len(x), batch):
            local.engine.run(x[start : start + batch])
        best = max(best, len(x) / (time.perf_counter() - began))
    return best


def measure(inputs: Path, predictor, batch: int, concurrency: int, workdir: Path, tag: str, repeats: int) -> float:
    """Best of ``repeats`` runs (the machine may be shared), outputs overwritten each time."""
    out = workdir / f"out-{tag}"
    sources, failures = discover([inputs], out)
    assert not failures, failures
    best = 0.0
    for _ in range(repeats):
        summary = predict_files(sources, predictor, overwrite=True, batch_size=batch, concurrency=concurrency, progress=False)
        assert not summary.failures, summary.failures
        best = max(best, summary.clips_per_s)
    return best


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = model_path(args, workdir)
        local = LocalClient(model, device=args.device, batch_size=args.batch_size)
        clips = make_clips(args.clips, local.spec.input_shape)
        big, small = workdir / "big", workdir / "small"
        big.mkdir()
        small.mkdir()
        np.save(big / "clips.npy", clips)
        for i, clip in enumerate(clips):
            np.save(small / f"clip_{i:05d}.npy", clip)

        rows: list[tuple[str, str, float]] = [
            ("session.run (no files)", "-", bare_session(local, clips, args.batch_size, args.repeat))
        ]
        for name, inputs in (("1 file", big), (f"{len(clips)} files", small)):
            rows.append(
                (
                    f"local --model ({local.provider})",
                    name,
                    measure(inputs, local, args.batch_size, 1, workdir, f"local-{name}", args.repeat),
                )
            )
        proc, url = start_server(model, args.batch_size, args.device, workdir / "serve.log")
        try:
            with Client(url) as probe:
                while not probe.ready():
                    time.sleep(0.1)
            for concurrency in args.concurrency:
                with Client(url, batch_size=args.batch_size, concurrency=concurrency) as remote:
                    for name, inputs in (("1 file", big), (f"{len(clips)} files", small)):
                        rows.append(
                            (
                                f"remote --url, concurrency {concurrency}",
                                name,
                                measure(
                                    inputs, remote, args.batch_size, concurrency, workdir, f"r{concurrency}-{name}", args.repeat
                                ),
                            )
                        )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    base = rows[0][2]
    print(
        f"\n{len(clips)} clips of {local.spec.input_shape}, batch {args.batch_size}, {model.name}, {os.cpu_count()} CPUs, "
        f"best of {args.repeat}"
    )
    print("| mode | inputs | clips/s | vs session.run |\n|---|---|---|---|")
    for mode, inputs_name, rate in rows:
        print(f"| {mode} | {inputs_name} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
