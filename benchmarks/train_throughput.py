"""Samples/s of the ``stlight train`` loop against a bare loop over the same model on random
tensors: what the data pipeline (Moving MNIST made on the fly) and the bookkeeping cost.

    python benchmarks/train_throughput.py                     # tiny and a smaller tiny, batch 16, CPU
    python benchmarks/train_throughput.py --presets mmnist-xs --batch 4 --steps 6 --device cuda

Both loops run the same steps with Adam + MSE on the same config, thread count and device, timed
from the first step to the last (the train loop's final validation and checkpoint are not in it);
each cell is the best of ``--repeats`` interleaved runs, so a busy machine biases both alike.
Ratio = train / bare (1.0: no overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.config import STLightConfig, preset
from model.data import DataSpec
from model.stlight import STLight
from model.train import LOSS_READ_EVERY, TABLE2, RunSettings, Runtime, autocast_for, resolve_device, train

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def bare_loop(config: STLightConfig, batch: int, steps: int, device: torch.device, amp: bool) -> float:
    """Seconds for ``steps`` Adam steps on pre-made random tensors."""
    torch.manual_seed(0)
    net = STLight(config).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    autocast, _ = autocast_for(device, amp)
    inputs = torch.rand(batch, *config.input_shape, device=device)
    targets = torch.rand(batch, *config.output_shape, device=device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for step in range(1, steps + 1):
        with autocast:
            loss = F.mse_loss(net(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        if step % LOSS_READ_EVERY == 0:
            total.item()  # the train loop reads its device-side loss sum this often too
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_loop(
    name: str, config: STLightConfig, batch: int, steps: int, device: str, workers: int, threads: int, amp: bool, data_dir: Path
) -> float:
    """Seconds of ``model.train.train``'s loop for ``steps`` steps on Moving MNIST."""
    spec = DataSpec("mmnist", data_dir=str(data_dir), clips_per_epoch=batch * (steps + 1), val_clips=batch)
    settings = RunSettings(
        dataset="mmnist",
        preset=name,
        lr=1e-3,
        schedule="onecycle",
        final_div_factor=TABLE2["mmnist"]["final_div_factor"],
        batch_size=batch,
        total_steps=steps,
        steps_per_epoch=steps + 1,
        seed=0,
        clips_per_epoch=spec.clips_per_epoch,
        val_clips=batch,
        val_fraction=0.1,
    )
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        runtime = Runtime(out=Path(out), device=device, workers=workers, threads=threads, amp=amp, progress=False)
        return train(settings, config, spec, runtime)["loop_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["tiny", "tiny:dim=32,depth=2"],
        help="presets, optionally with overrides after a colon (default: tiny tiny:dim=32,depth=2)",
    )
    parser.add_argument("--batch", type=int, default=16, help="clips per step (default 16, the paper's Moving MNIST batch)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per cell; the best is reported (default 3)")
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[0, 1], help="data-loader workers of the train loop (default: 0 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device for both loops (default cpu)")
    parser.add_argument("--no-amp", action="store_true", help="on CUDA, fp32 instead of mixed precision in both loops")
    parser.add_argument("--data-dir", type=Path, default=MNIST_DIR, help=f"MNIST digits (default {MNIST_DIR})")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cells = []
    for spec in args.presets:
        name, _, overrides = spec.partition(":")
        changes = {k: int(v) for k, v in (item.split("=") for item in overrides.split(",") if item)}
        cells.append((spec, name, preset(name).replace(**changes)))
    rows = []
    bar = tqdm(total=len(cells) * len(args.workers) * args.repeats, desc="benchmark", unit="run")
    for label, name, config in cells:
        for workers in args.workers:
            bare, loop = [], []
            for _ in range(args.repeats):
                bare.append(bare_loop(config, args.batch, args.steps, device, not args.no_amp))
                loop.append(
                    train_loop(
                        name, config, args.batch, args.steps, args.device, workers, args.threads, not args.no_amp, args.data_dir
                    )
                )
                bar.update(1)
            samples = args.batch * args.steps
            rows.append((label, workers, samples / min(bare), samples / min(loop)))
    bar.close()

    print(
        f"\ndevice {device} ({torch.get_num_threads()} threads), batch {args.batch}, {args.steps} steps, best of {args.repeats}"
    )
    print("| config | workers | bare loop (samples/s) | stlight train (samples/s) | ratio train/bare |")
    print("|---|---|---|---|---|")
    for label, workers, bare_rate, loop_rate in rows:
        print(f"| {label} | {workers} | {bare_rate:.1f} | {loop_rate:.1f} | {loop_rate / bare_rate:.2f} |")


if __name__ == "__main__":
    main()
