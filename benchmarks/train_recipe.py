"""Training samples/s with the GPU recipe's pieces on and off, side by side, in one run.

    python benchmarks/train_recipe.py                                      # CPU, the tiny preset
    python benchmarks/train_recipe.py --device cuda --preset mmnist-s --batch 128 --steps 30

Every row is the real ``stlight train`` loop (:func:`model.train.train`) on Moving MNIST for
``--warmup`` + ``--steps`` steps; samples/s counts the steps after the warm-up (torch.compile's
compilation, cuDNN's algorithm search), validation and checkpoints left out, and the warm-up
seconds are shown beside it. The pieces:

- clips: made on the device as tensors (``--clips-on-device``) or by loader workers (the default
  worker count of the device: 0 on CPU, min(8, cores) on CUDA);
- layout: channels_last (NHWC) or contiguous (NCHW);
- precision: bf16 autocast (CUDA only: CPU training is fp32, so its rows say n/a);
- batch: ``--batch`` clips per step against the paper's 16 (the learning rate follows the
  square-root rule, which does not change the speed);
- compile: ``torch.compile`` of the training step.

Rows: the paper's settings (every piece off), each piece alone, the recipe (every piece on) and
the recipe without each piece; ratios are against the paper's settings. Cells are the best of
``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.config import STLightConfig, preset
from model.data import DataSpec
from model.train import TABLE2, WARMUP_STEPS, RunSettings, Runtime, resolve_device, train

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
PIECES = ("clips", "layout", "bf16", "batch", "compile")
PAPER_BATCH = TABLE2["mmnist"]["batch_size"]


@dataclass(frozen=True)
class Recipe:
    """Which pieces are on."""

    clips: bool = False  # made on the device
    layout: bool = False  # channels_last
    bf16: bool = False  # autocast (CUDA)
    batch: bool = False  # the large batch
    compile: bool = False

    @classmethod
    def all_on(cls) -> Recipe:
        return cls(**dict.fromkeys(PIECES, True))

    def with_(self, piece: str, on: bool) -> Recipe:
        return dataclasses.replace(self, **{piece: on})


def measure(
    config: STLightConfig,
    recipe: Recipe,
    *,
    device: str,
    batch: int,
    steps: int,
    data_dir: Path,
    threads: int | None = None,
    preset_name: str = "custom",
) -> dict[str, float | None]:
    """``{"samples_per_s", "warmup_seconds"}`` of one real training loop with ``recipe``'s pieces."""
    size = batch if recipe.batch else PAPER_BATCH
    total = WARMUP_STEPS + steps
    clips = size * (total + 1)  # one epoch longer than the run: no validation inside the loop
    spec = DataSpec("mmnist", data_dir=str(data_dir), clips_per_epoch=clips, val_clips=min(size, 16))
    settings = RunSettings(
        dataset="mmnist",
        preset=preset_name,
        lr=1e-3,
        schedule="onecycle",
        final_div_factor=TABLE2["mmnist"]["final_div_factor"],
        batch_size=size,
        total_steps=total,
        steps_per_epoch=total + 1,
        seed=0,
        clips_per_epoch=clips,
        val_clips=spec.val_clips,
        val_fraction=0.1,
        clips_on_device=recipe.clips,
    )
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        runtime = Runtime(
            out=Path(out),
            device=device,
            threads=threads,
            amp=recipe.bf16,
            channels_last=recipe.layout,
            compile=recipe.compile,
            progress=False,
        )
        summary = train(settings, config, spec, runtime)
    torch._dynamo.reset()  # a fresh compilation per run: each row pays its own warm-up
    return {"samples_per_s": summary["steady_samples_per_s"], "warmup_seconds": summary["warmup_seconds"]}


def table_rows(pieces: Sequence[str]) -> list[tuple[str, Recipe]]:
    """The paper's settings, each piece alone, the recipe, the recipe without each piece."""
    paper, full = Recipe(), Recipe.all_on()
    for piece in PIECES:
        if piece not in pieces:
            full = full.with_(piece, False)
    rows = [("paper settings", paper)]
    rows += [(f"+ {piece} only", paper.with_(piece, True)) for piece in pieces]
    rows.append(("recipe (all on)", full))
    rows += [(f"recipe − {piece}", full.with_(piece, False)) for piece in pieces]
    return rows


def describe(recipe: Recipe, batch: int) -> list[str]:
    return [
        str(batch if recipe.batch else PAPER_BATCH),
        "device" if recipe.clips else "workers",
        "NHWC" if recipe.layout else "NCHW",
        "bf16" if recipe.bf16 else "fp32",
        "yes" if recipe.compile else "no",
    ]


def print_table(results: Iterable[tuple[str, Recipe, dict[str, float | None]]], batch: int) -> None:
    results = list(results)
    base = next((r["samples_per_s"] for _, recipe, r in results if recipe == Recipe()), None)
    print("| configuration | batch | clips made by | layout | precision | compile | samples/s | × paper settings | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, recipe, result in results:
        rate, warm = result["samples_per_s"], result["warmup_seconds"]
        ratio = f"{rate / base:.2f}" if rate and base else "—"
        cells = [
            label,
            *describe(recipe, batch),
            f"{rate:.1f}" if rate else "—",
            ratio,
            f"{warm:.1f}" if warm is not None else "—",
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="preset, optionally with overrides: tiny:dim=64,depth=2 (default tiny)")
    parser.add_argument("--batch", type=int, default=64, help="the recipe's large batch (default 64; the paper's is 16)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run, after the warm-up (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the best is reported (default 1)")
    parser.add_argument("--pieces", nargs="+", choices=PIECES, default=list(PIECES), help="pieces to switch (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="device (default cpu)")
    parser.add_argument("--data-dir", type=Path, default=MNIST_DIR, help=f"MNIST digits (default {MNIST_DIR})")
    args = parser.parse_args(argv)

    name, _, overrides = args.preset.partition(":")
    config = preset(name).replace(**{k: int(v) for k, v in (item.split("=") for item in overrides.split(",") if item)})
    device = resolve_device(args.device)
    pieces = [piece for piece in args.pieces if piece != "bf16" or device.type == "cuda"]  # CPU training is fp32
    results = []
    for label, recipe in table_rows(pieces):
        runs = [
            measure(
                config,
                recipe,
                device=device.type,
                batch=args.batch,
                steps=args.steps,
                data_dir=args.data_dir,
                threads=args.threads,
                preset_name=name,
            )
            for _ in range(args.repeats)
        ]
        best = max(runs, key=lambda r: r["samples_per_s"] or 0.0)
        results.append((label, recipe, best))
        print(f"{label}: {best['samples_per_s'] or 0:.1f} samples/s", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"\n{args.preset} on {where}{load}; {args.steps} timed steps after {WARMUP_STEPS} warm-up, best of {args.repeats}")
    if device.type != "cuda":
        print("(no bf16 rows: CPU training is fp32; bf16 autocast is a CUDA piece)")
    print_table(results, args.batch)


if __name__ == "__main__":
    main()
