"""Package a Moving MNIST training run as the service's shipped default model.

    python -m export.default_model runs/default --data-dir ../shared/data/mnist

Exports ``RUN/best.pt`` to ``service/assets/default.onnx`` (validated against torch; refuses to
write a file that fails), evaluates it next to the two trivial baselines on the fixed validation
clips, and writes the model card ``service/assets/default.md`` with the learning curve from
``RUN/metrics.jsonl``, a picture (input, truth, prediction) and a few example clips for the
README's quick start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from export.onnx_export import export_checkpoint
from export.validation import validate
from model.checkpoint import build_model, read_checkpoint
from model.config import STLightConfig
from model.data import VAL_SEED, MovingMNIST, load_mnist_digits
from model.metrics import MetricAccumulator
from model.stlight import STLight, count_macs, count_params
from model.train import save_strip
from service.core.frames import to_uint8
from service.core.hashing import file_sha256

ASSETS = Path(__file__).resolve().parents[1] / "service" / "assets"
EXAMPLE_SEED = 7_000_000  # example clips: not the training stream and not the validation clips
MAX_ONNX_BYTES = 5 * 2**20


def _metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    acc = MetricAccumulator()
    for start in range(0, len(pred), 100):
        acc.update(pred[start : start + 100], truth[start : start + 100])
    return acc.result()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training run folder holding best.pt and metrics.jsonl")
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST digits (idx) used for validation clips")
    parser.add_argument("--val-clips", type=int, default=1000, help="fixed validation clips to score on (default 1000)")
    parser.add_argument("--wall-minutes", type=float, required=True, help="training wall time, from the run's log")
    parser.add_argument("--threads", default="1", help="CPU threads the training used, as text for the card (e.g. '1, then 2')")
    parser.add_argument("--command", default="", help="the stlight train command line(s) that made the run")
    parser.add_argument("--out", type=Path, default=ASSETS, help="assets folder (default: service/assets)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ckpt = args.run / "best.pt"
    payload = read_checkpoint(ckpt)
    net, config = build_model(payload, ckpt)
    onnx_path = export_checkpoint(ckpt, args.out / "default.onnx")
    report = validate(onnx_path, net, config)
    print(report.table())
    if not report.passed:
        onnx_path.unlink()
        print("validation failed: nothing shipped", file=sys.stderr)
        return 1
    size = onnx_path.stat().st_size
    if size > MAX_ONNX_BYTES:
        print(f"{onnx_path} is {size / 2**20:.1f} MiB, over the 5 MiB budget", file=sys.stderr)
        return 1
    digits = load_mnist_digits(args.data_dir, download=False)
    inputs, truth, pred, scores = _score(net, config, digits, args.val_clips)
    examples = _write_examples(args.out, digits, config, (inputs[0], truth[0], pred[0]))
    lines = _card(args, payload, net, config, onnx_path, scores)
    (args.out / "default.md").write_text("\n".join(line for line in lines if line is not None) + "\n")
    print(json.dumps({name: {k: v for k, v in m.items() if k != "per_frame_mse"} for name, m in scores.items()}, indent=2))
    print(f"wrote {onnx_path} ({size / 2**20:.2f} MiB), {args.out / 'default.md'}, examples in {examples}")
    return 0


def _score(
    net: STLight, config: STLightConfig, digits: np.ndarray, val_clips: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, dict]]:
    """Scores on the fixed validation clips: the model and the two trivial baselines."""
    val = MovingMNIST(digits, val_clips, config.in_frames, config.out_frames, config.height, seed=VAL_SEED)
    inputs = np.stack([val[i][0].numpy() for i in range(len(val))])
    truth = np.stack([val[i][1].numpy() for i in range(len(val))])
    with torch.no_grad():
        pred = np.concatenate([net(torch.from_numpy(inputs[s : s + 100])).numpy() for s in range(0, len(inputs), 100)])
    scores = {
        "STLight (this model)": _metrics(pred, truth),
        "all zeros": _metrics(np.zeros_like(truth), truth),
        "repeat last input frame": _metrics(np.repeat(inputs[:, -1:], config.out_frames, axis=1), truth),
    }
    return inputs, truth, pred, scores


def _write_examples(
    out: Path, digits: np.ndarray, config: STLightConfig, first: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> Path:
    """The picture (input, truth, prediction of the first clip) and example clips (uint8, as a
    camera or a PNG would give them)."""
    save_strip(out / "default-example.png", *first, scale=2)
    examples = out / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    ex = MovingMNIST(digits, 4, config.in_frames, config.out_frames, config.height, seed=EXAMPLE_SEED)
    clips = [np.concatenate([ex[i][0].numpy(), ex[i][1].numpy()]) for i in range(len(ex))]
    for i, clip in enumerate(clips[:3]):
        np.save(examples / f"clip{i}.npy", to_uint8(clip[: config.in_frames]))  # (T, C, H, W): input only
    with_targets = out / "examples-with-targets"  # apart: `stlight predict --has-targets` wants T+T' frames
    with_targets.mkdir(parents=True, exist_ok=True)
    np.save(with_targets / "moving-mnist.npy", to_uint8(np.stack(clips)))  # (N, T+T', C, H, W)
    return examples


def _card(
    args: argparse.Namespace,
    payload: dict,
    net: STLight,
    config: STLightConfig,
    onnx_path: Path,
    scores: dict[str, dict],
) -> list[str]:
    """The model card's lines (markdown)."""
    size, ckpt = onnx_path.stat().st_size, args.run / "best.pt"
    curve = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = int(payload.get("step", 0))
    settings = payload.get("run", {})
    return [
        "# The default model",
        "",
        "`default.onnx` is what `stlight serve` and the Docker image serve when no model is given: "
        "STLight trained on Moving MNIST (10 → 10 frames, 1×64×64, values in [0, 1]) on a 2-core CPU.",
        "",
        "| | |",
        "|---|---|",
        f"| config | `{json.dumps(config.to_dict())}` |",
        f"| parameters | {count_params(net):,} |",
        f"| MACs per clip | {count_macs(config):,} |",
        f"| ONNX file | {size / 2**20:.2f} MiB, sha256 `{file_sha256(onnx_path)[:16]}…` |",
        f"| checkpoint | best validation MSE at step {steps:,}; sha256 `{file_sha256(ckpt)[:16]}…` |",
        f"| training | {steps:,} optimizer steps of {settings.get('batch_size', '?')} clips "
        f"({steps * int(settings.get('batch_size', 0) or 0):,} clips), "
        f"Adam, {settings.get('schedule', '?')} (max lr {settings.get('lr', '?')}), MSE loss, clips made on the fly from "
        "8,000 MNIST test-set digits |",
        f"| wall time | {args.wall_minutes:.0f} min on {args.threads} torch thread(s) of a 2-core {_cpu_name()} shared with "
        "development work |",
        f"| command | `{args.command}` |" if args.command else "",
        "",
        f"## Validation ({args.val_clips} fixed Moving MNIST clips, OpenSTL metrics)",
        "",
        "| predictor | MSE | MAE | SSIM | PSNR |",
        "|---|---|---|---|---|",
        *[f"| {name} | {m['mse']:.1f} | {m['mae']:.1f} | {m['ssim']:.4f} | {m['psnr']:.2f} |" for name, m in scores.items()],
        "",
        "Per-frame MSE of the model (frames 1 … 10 ahead): "
        + ", ".join(f"{v:.0f}" for v in scores["STLight (this model)"]["per_frame_mse"]),
        "",
        "For scale: the paper's STLight-L (32.9 M parameters, 200 epochs on a GPU) reaches 21.8.",
        "",
        f"## Learning curve (the run's own validation: the first {settings.get('val_clips', '?')} of the same fixed clips)",
        "",
        "| step | train loss | val MSE | val SSIM |",
        "|---|---|---|---|",
        *[f"| {r['step']:,} | {r.get('train_loss') or float('nan'):.4f} | {r['mse']:.1f} | {r['ssim']:.4f} |" for r in curve],
        "",
        "![input, truth, prediction](default-example.png)",
        "",
        "Rows: the 10 input frames, the 10 true next frames, the 10 predicted frames.",
        "",
    ]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
