"""ONNX Runtime (CPU) against torch eager on the same weights: latency per batch, side by side.

    python benchmarks/export_speed.py                       # tiny and mmnist-xs, batch 1 and 8
    python benchmarks/export_speed.py --presets tiny --batches 1 4 16 --repeats 10

Each preset is exported fp32 with ``export.export_preset`` (seeded random weights) to a temp dir;
both runtimes get the same thread count and the same clips; the median of ``--repeats`` timed
runs after two warm-ups is reported. The ratio column is torch / ORT (> 1: ORT is faster).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import median_ms
from tqdm import tqdm

from export import export_preset, random_model
from model import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "mmnist-xs"], help="presets to compare (default: tiny mmnist-xs)"
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported; default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for both runtimes (default: 1; on a shared box more threads measure contention)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cells = [(name, b) for name in args.presets for b in args.batches]
        bar = tqdm(total=len(cells), desc="benchmark", unit="cell")
        for name in args.presets:
            config = preset(name)
            start = time.perf_counter()
            path = export_preset(name, Path(tmp) / f"{name}.onnx", seed=0)
            export_s = time.perf_counter() - start
            net = random_model(config, 0)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for batch in args.batches:
                bar.set_postfix_str(f"{name} b{batch}")
                clips = np.random.default_rng(batch).random((batch, *config.input_shape), dtype=np.float32)
                tensor = torch.from_numpy(clips)
                with torch.inference_mode():
                    torch_ms = median_ms(functools.partial(net, tensor), args.repeats, warmup=2)
                ort_ms = median_ms(functools.partial(session.run, None, {"frames": clips}), args.repeats, warmup=2)
                rows.append((name, batch, torch_ms, ort_ms, path.stat().st_size / 2**20, export_s))
                bar.update()
        bar.close()

    print(f"\nCPU, {args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}, median of {args.repeats}")
    print("| preset | batch | torch eager ms | ORT CPU ms | torch / ORT | ORT clips/s | .onnx MiB | export s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, torch_ms, ort_ms, mib, export_s in rows:
        print(
            f"| {name} | {batch} | {torch_ms:.1f} | {ort_ms:.1f} | {torch_ms / ort_ms:.2f} | {1e3 * batch / ort_ms:.1f} | "
            f"{mib:.1f} | {export_s:.1f} |"
        )


if __name__ == "__main__":
    main()
