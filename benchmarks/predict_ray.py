"""Throughput of ``stlight predict`` on Ray against the local run: clips/s over the same inputs
locally (one ONNX Runtime session using every CPU) and on a Ray cluster of this machine with 1
and 2 actors, in one run so the ratios are side by side.

    python benchmarks/predict_ray.py                      # tiny exported model, 512 one-clip files
    python benchmarks/predict_ray.py --clips 1024 --actors 1 2 4 --batch-size 16

The cluster is started here (``ray.cluster_utils.Cluster``: one node per actor count asked at
most, one CPU per node, no dashboard) and shut down at the end. Times cover reading, checking,
predicting and writing the .npy outputs; a Ray run's also cover starting its actors and loading
the model in each, a fixed cost shown apart as the seconds of a run over one batch of clips.
Needs the ray extra: pip install -e '.[ray]' -c constraints.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from predict_throughput import make_clips, model_path  # noqa: E402

from service.batch import discover, predict_files  # noqa: E402
from service.batch.ray_run import RayOptions, predict_on_ray  # noqa: E402
from service.client import LocalClient  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX file (default: the shipped model, else the tiny preset exported)")
    parser.add_argument("--clips", type=int, default=512, help="one-clip .npy files to predict (default 512)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per session run (default 8)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray pool sizes to measure (default 1 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, the best is shown (default 2)")
    return parser.parse_args()


def local_rate(inputs: Path, model: Path, batch: int, out: Path, repeats: int) -> float:
    local = LocalClient(model, device="cpu", batch_size=batch)
    sources, _ = discover([inputs], out)
    best = 0.0
    for _ in range(repeats):
        summary = predict_files(sources, local, overwrite=True, batch_size=batch, progress=False)
        assert not summary.failures, summary.failures
        best = max(best, summary.clips_per_s)
    return best


def ray_rate(inputs: Path, model: Path, batch: int, out: Path, actors: int, address: str, repeats: int) -> tuple[float, float]:
    """Best clips/s over every input, and the fewest seconds for one batch of them (the fixed cost)."""
    sources, _ = discover([inputs], out)
    options = RayOptions(address=address, actors=actors, threads_per_actor=1)
    best, fixed = 0.0, float("inf")
    for _ in range(repeats):
        summary = predict_on_ray(
            sources, model, ray_options=options, device="cpu", overwrite=True, batch_size=batch, progress=False
        )
        assert not summary.failures, summary.failures
        best = max(best, summary.clips_per_s)
        one = predict_on_ray(
            sources[:batch], model, ray_options=options, device="cpu", overwrite=True, batch_size=batch, progress=False
        )
        fixed = min(fixed, one.seconds)
    return best, fixed


def main() -> None:
    args = parse_args()
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = model_path(args, workdir)
        spec = LocalClient(model, device="cpu").spec
        inputs = workdir / "clips"
        inputs.mkdir()
        for i, clip in enumerate(make_clips(args.clips, spec.input_shape)):
            np.save(inputs / f"clip_{i:05d}.npy", clip)
        local = local_rate(inputs, model, args.batch_size, workdir / "local", args.repeat)
        rows: list[tuple[str, float, float | None]] = [("local (1 session, every CPU)", local, None)]
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            for _ in range(max(args.actors) - 1):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            for actors in args.actors:
                rate, fixed = ray_rate(
                    inputs, model, args.batch_size, workdir / f"ray{actors}", actors, cluster.address, args.repeat
                )
                rows.append((f"ray, {actors} actor(s) x 1 thread", rate, fixed))
        finally:
            cluster.shutdown()

    base = rows[0][1]
    setup = f"batch {args.batch_size}, {model.name}, {os.cpu_count()} CPUs, best of {args.repeat}"
    print(f"\n{args.clips} one-clip files of {spec.input_shape}, {setup}")
    print("| mode | clips/s | vs local | seconds for one batch (fixed cost) |\n|---|---|---|---|")
    for mode, rate, fixed in rows:
        print(f"| {mode} | {rate:.0f} | {rate / base:.2f} | {'-' if fixed is None else f'{fixed:.2f}'} |")


if __name__ == "__main__":
    main()
