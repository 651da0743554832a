"""Flags and handlers of ``stlight summary``, ``train`` and ``eval``.

Imported to build the parser, so it imports torch only inside handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from model.config import DATASETS, PRESETS, STLightConfig, configure
from service.core.errors import UserError

if TYPE_CHECKING:  # the parser is built without torch; handlers import what they use
    from pathlib import Path

    from model.distributed import Ranks
    from model.plan import TrainRequest

N = TypeVar("N", int, float)

CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(STLightConfig))

_FIELD_HELP = {
    "in_frames": "input frames T",
    "out_frames": "predicted frames T'",
    "channels": "channels C per frame",
    "height": "frame height H (divisible by the patch size)",
    "width": "frame width W (divisible by the patch size)",
    "dim": "mixer width d (divisible by patch_size**2)",
    "depth": "number of STLMixer blocks",
    "patch_size": "patch size p (encoder stride)",
    "overlap": "patch overlap O (0, 1, or with (O-1)*p even)",
    "kernel_1": "first depthwise kernel k1 (odd)",
    "kernel_2": "second, dilated depthwise kernel k2 (odd)",
}


def add_config_args(
    parser: argparse.ArgumentParser, *, default_preset: str | None = "tiny", preset_help: str | None = None
) -> None:
    """``--preset`` plus one override flag per ``STLightConfig`` field."""
    group = parser.add_argument_group("model config (a preset, then per-field overrides)")
    group.add_argument(
        "--preset",
        default=default_preset,
        choices=list(PRESETS),
        help=preset_help or f"named configuration (default: {default_preset})",
    )
    for name in CONFIG_FIELDS:
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, type=int, default=None, metavar="N", help=f"override {_FIELD_HELP[name]}")


def config_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The ``STLightConfig`` fields set on the command line."""
    return {name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Any:
    """The preset with the user's overrides; invalid combinations become a UserError."""
    try:
        return configure(args.preset, **config_overrides(args))
    except ValueError as exc:
        raise UserError(str(exc)) from None


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------


def add_summary(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "summary",
        help="parameters, MACs and shapes of a configuration",
        description=(
            "Print parameters, multiply-accumulates per clip and input/output shapes of a preset with optional overrides."
        ),
    )
    add_config_args(parser)
    parser.add_argument("--json", action="store_true", help='print {"params", "macs", "config", ...} as JSON')
    parser.set_defaults(handler=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from model.stlight import STLight, count_macs, count_params

    net = STLight(config)
    report = {
        "params": count_params(net),
        "macs": count_macs(config),
        "config": config.to_dict(),
        "preset": args.preset,
        "input_shape": ["B", *config.input_shape],
        "output_shape": ["B", *config.output_shape],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"preset        {args.preset}")
    print(f"parameters    {report['params']:,} ({report['params'] / 1e6:.2f} M)")
    print(f"MACs / clip   {report['macs']:,} ({report['macs'] / 1e9:.3f} G)")
    print(f"input         (B, {', '.join(map(str, config.input_shape))})  [B, T, C, H, W]")
    print(f"output        (B, {', '.join(map(str, config.output_shape))})  [B, T', C, H, W]")
    print("config        " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()))
    return 0


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------

# flags that go to model.plan.TrainRequest under their own names
_REQUEST_FLAGS = (
    "dataset",
    "preset",
    "data_dir",
    "data_path",
    "val_path",
    "val_fraction",
    "val_clips",
    "clips_per_epoch",
    "seed",
    "lr",
    "schedule",
    "final_div_factor",
    "batch_size",
    "epochs",
    "max_steps",
    "stride",
    "resize",
    "held_out_digits",
    "clips_on_device",
)


def _checked(convert: Callable[[str], N], what: str, ok: Callable[[N], bool]) -> Callable[[str], N]:
    """An argparse ``type`` that converts, then checks; both failures name what was expected."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


_positive_int = _checked(int, "a positive integer", lambda v: v > 0)
_non_negative_int = _checked(int, "an integer >= 0", lambda v: v >= 0)
_positive_float = _checked(float, "a positive number", lambda v: v > 0 and math.isfinite(v))


def trust_warning(path: object) -> str:
    """What ``--trust-checkpoint`` prints before it unpickles ``path``."""
    return (
        f"warning: --trust-checkpoint: unpickling {path}, which runs any code the file holds; "
        "use it only for files you made or whose author you trust"
    )


def add_trust_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "the checkpoint") -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=f"unpickle {what} fully (torch.load with weights_only=False), which runs any code the file holds: only "
        "for files you made or whose author you trust. Without it a checkpoint that holds anything but weights and "
        "training state is refused, naming what it held",
    )


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="mmnist: Moving MNIST made on the fly; npz: your clips (N, T+T', C, H, W) in a .npz/.npy; "
        "taxibj: OpenSTL's dataset.npz; frames: a folder of clip folders of images; videos: a folder of video files "
        "(.mp4, .webm, .avi, .mkv, .gif, ...) cut into windows of T+T' frames, split by file (default: from --data-path "
        "when given - npz for a .npz/.npy of clips, taxibj for a .npz with X_train..Y_test -, else mmnist)",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="mmnist: folder with *-images-idx3-ubyte(.gz) (downloaded there if absent; default data/mnist) "
        "and optionally mnist_test_seq.npy; frames: the folder of clip folders; taxibj: folder with dataset.npz; "
        "videos: the folder of video files (walked)",
    )
    group.add_argument(
        "--data-path",
        default=None,
        metavar="FILE",
        help="npz: the .npz (array 'clips') or .npy file; taxibj: dataset.npz; mmnist eval: mnist_test_seq.npy",
    )
    group.add_argument(
        "--val-path",
        default=None,
        metavar="PATH",
        help="npz/frames: a separate validation file or folder instead of a seeded split of the training data",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="npz/frames: fraction of clips held out for validation, split with --seed (default 0.1)",
    )
    group.add_argument(
        "--val-clips",
        type=_positive_int,
        default=None,
        metavar="N",
        help="mmnist: validation clips, generated from a fixed seed so they are the same every run (default 1000)",
    )
    _add_video_args(group)
    group.add_argument(
        "--clips-per-epoch",
        type=_positive_int,
        default=None,
        metavar="N",
        help="mmnist: clips generated per epoch (default 10000, OpenSTL's epoch)",
    )
    _add_held_out_arg(group, "(default 0)")


def _add_held_out_arg(group: argparse._ArgumentGroup, default: str) -> None:
    group.add_argument(
        "--held-out-digits",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="mmnist: the last N digits of the MNIST file never enter training or validation clips; eval makes its "
        f"test clips from them (a fixed seed), so the score is on digits the model never saw {default}",
    )


def _add_speed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speed (the GPU recipe: docs/training.md)")
    group.add_argument(
        "--clips-on-device",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mmnist: make each batch of clips on the training device as tensors instead of in loader workers (default: "
        "on with CUDA); the clips differ from the workers' (another random stream, the same rules), so it is part of the run",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep activations and weights in NHWC layout (default: on with CUDA, where tensor-core convolutions want it)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step: faster steps after a compile of a minute or so (measure with "
        "benchmarks/train_recipe.py; worth it for long runs)",
    )
    group.add_argument(
        "--time-limit",
        type=_positive_float,
        default=None,
        metavar="MINUTES",
        help="leave after MINUTES of training in this invocation (checked every 20 steps), saving last.pt; continue "
        "with --resume",
    )


def _add_video_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--stride",
        type=_positive_int,
        default=None,
        metavar="N",
        help="videos: frames between the starts of consecutive windows of T+T' frames (default T+T': no overlap)",
    )
    group.add_argument(
        "--resize",
        choices=("none", "fit", "crop"),
        default=None,
        help="videos: frames not of the config's H x W are refused (none, the default), scaled whole (fit) or scaled "
        "and centre-cropped (crop)",
    )


def add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model (Moving MNIST, your own clips, TaxiBJ, image folders)",
        description="Train STLight with Adam on the MSE loss. Defaults per dataset follow the paper's Table 2 "
        "(Moving MNIST: lr 3e-3, OneCycle with final_div_factor 1e4, batch 16, 200 epochs). "
        "Writes last.pt, best.pt, metrics.jsonl and a PNG strip per validation under --out. "
        "Several GPUs or machines: torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] --no-python "
        "stlight train ... trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU); rank 0 writes the run folder.",
    )
    _add_data_args(parser)
    add_config_args(
        parser,
        default_preset=None,
        preset_help="named configuration (default per dataset: mmnist-xs, npz tiny, taxibj-s, frames kth-xs)",
    )
    _add_optimisation_args(parser)
    _add_run_args(parser)
    _add_speed_args(parser)
    parser.set_defaults(handler=run_train)


def _add_optimisation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimisation (defaults: the paper's Table 2 for the dataset)")
    group.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (OneCycle max_lr, cosine start)")
    group.add_argument(
        "--schedule", choices=("onecycle", "cosine"), default=None, help="learning-rate schedule, stepped per optimizer step"
    )
    group.add_argument(
        "--final-div-factor",
        type=_positive_float,
        default=None,
        metavar="F",
        help="OneCycle: final lr = lr / 25 / F (default 1e4)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="clips per optimizer step and process: under torchrun a step trains on N × processes clips",
    )
    group.add_argument(
        "--epochs", type=_positive_int, default=None, metavar="N", help="epochs to train (ignored when --max-steps is given)"
    )
    group.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="optimizer steps to train; the schedule spans exactly these",
    )
    group.add_argument(
        "--seed", type=int, default=None, help="seed of weights, data order, generated clips and the split (default 0)"
    )


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--out", required=True, metavar="DIR", help="run folder: last.pt, best.pt, metrics.jsonl, val_step*.png")
    group.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last.pt (settings come from the checkpoint)"
    )
    add_trust_arg(group, "last.pt when resuming")
    group.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train (auto: CUDA when available)"
    )
    group.add_argument(
        "--no-amp",
        action="store_true",
        help="on CUDA, train in strict fp32 (TF32 off too) instead of mixed precision: by default bf16 on GPUs with "
        "native bf16 (compute capability >= 8.0: A100, H100, L4, RTX 30xx/40xx), fp16 with loss scaling on older ones "
        "(T4, V100, RTX 20xx); CPU always trains in fp32. Validation is fp32 either way",
    )
    group.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="data-loader worker processes (default: 0 on CPU, min(8, cores) on CUDA)",
    )
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch CPU threads (default: all cores)")
    group.add_argument(
        "--val-every",
        type=_non_negative_int,
        default=0,
        metavar="STEPS",
        help="validate (and save last.pt) every STEPS steps; 0: once per epoch (default)",
    )
    group.add_argument(
        "--stop-after",
        type=_positive_int,
        default=None,
        metavar="STEPS",
        help="leave after STEPS steps of this invocation, saving last.pt, to continue later with --resume",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar (validation lines are still printed)")
    group.add_argument("--json", action="store_true", help="print the final summary as JSON")


def run_train(args: argparse.Namespace) -> int:
    summary = train_from_args(args)
    if summary is None:  # not rank 0: rank 0 reports for the run
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    why = " by --time-limit" if summary["stopped_by_time"] else ""
    state = (
        "finished"
        if summary["finished"]
        else f"stopped{why} at step {summary['step']}/{summary['total_steps']} (continue with --resume)"
    )
    print(f"{state}: best val mse {summary['best_mse']:.3f}, {summary['samples_per_s']:.1f} samples/s; checkpoints in {args.out}")
    return 0


def _train_request(args: argparse.Namespace, out: Path, ranks: Ranks, device: str) -> TrainRequest:
    """The :class:`model.plan.TrainRequest` of ``stlight train``'s flags (the dataset inferred from
    ``--data-path`` when not given); warns on rank 0 about ``--trust-checkpoint``."""
    from model.data import DataError, infer_dataset
    from model.plan import TrainRequest

    if args.trust_checkpoint:
        if not args.resume:
            raise UserError("--trust-checkpoint applies to --resume (the checkpoint it reads); add --resume or drop it")
        if ranks.main:
            print(trust_warning(out / "last.pt"), file=sys.stderr)
    flags = {name: getattr(args, name) for name in _REQUEST_FLAGS}
    if flags["dataset"] is None and args.data_path is not None and not args.resume:  # a resumed run keeps its own
        try:
            flags["dataset"] = infer_dataset(args.data_path)
        except DataError as exc:
            raise UserError(str(exc)) from None
        if ranks.main:
            print(f"dataset {flags['dataset']} (from --data-path {args.data_path}; --dataset sets another)")
    return TrainRequest(
        out=out,
        resume=args.resume,
        trust_checkpoint=args.trust_checkpoint,
        overrides=config_overrides(args),
        processes=ranks.world,
        device=device,
        **flags,
    )


def train_from_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """Run ``stlight train``'s parsed flags; the summary on rank 0, None on the other ranks.
    Scripts that need the summary (benchmarks/gpu/train_host.py) call this with ``add_train``'s parser."""
    from pathlib import Path

    from model.data import DataError
    from model.distributed import ranks_from_env
    from model.plan import plan_run
    from model.train import Runtime, SetupError, resolve_device, train

    try:
        ranks = ranks_from_env()  # torchrun's; one process alone without it
        device = resolve_device(args.device).type
    except (ValueError, SetupError) as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    request = _train_request(args, out, ranks, device)
    runtime = Runtime(
        out=out,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        amp=not args.no_amp,
        val_every=args.val_every,
        stop_after=args.stop_after,
        time_limit=args.time_limit * 60 if args.time_limit else None,
        channels_last=args.channels_last,
        compile=args.compile,
        progress=not args.no_progress,
    )
    try:
        plan = plan_run(request)
        for note in (plan.fitted, plan.lr_rule):
            if note and ranks.main:
                print(note)
        for dataset in plan.datasets:  # videos: files too short for one window are left out, not an error
            for path, frames in getattr(dataset, "skipped", ()):
                print(f"skipped {path}: {frames} frame(s), fewer than in_frames + out_frames")
        summary = train(plan.settings, plan.config, plan.spec, runtime, resume=plan.resume, datasets=plan.datasets)
    except (DataError, SetupError, FloatingPointError) as exc:
        raise UserError(str(exc)) from None
    return summary if ranks.main else None


# ---------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------


def add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="OpenSTL metrics (MSE, MAE, SSIM, PSNR, per-frame MSE) of a checkpoint on a test split",
        description="Evaluate a checkpoint on the dataset's test split: every clip of an npz/npy file, Moving MNIST's "
        "fixed validation clips (or mnist_test_seq.npy), TaxiBJ's X_test/Y_test, every clip folder of a frames dataset, "
        "every window of every file of a videos folder. "
        "Computed in fp32 (no mixed precision, no TF32 on GPUs), as training's validation is.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="a .pt file written by stlight train (last.pt, best.pt)")
    add_trust_arg(parser)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", choices=DATASETS, default=None, help="dataset kind (default: the one the checkpoint was trained on)"
    )
    group.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=(
            "mmnist: folder with MNIST digits and optionally mnist_test_seq.npy; frames: folder of clip folders; taxibj: "
            "folder with dataset.npz; videos: folder of video files"
        ),
    )
    group.add_argument(
        "--data-path", default=None, metavar="FILE", help="npz: the clips file; taxibj: dataset.npz; mmnist: mnist_test_seq.npy"
    )
    _add_video_args(group)
    group.add_argument(
        "--val-clips",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="mmnist without mnist_test_seq.npy: fixed-seed clips to generate (default 1000)",
    )
    _add_held_out_arg(group, "(default: the checkpoint's run's)")
    group = parser.add_argument_group("run")
    group.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="clips per forward pass (default 32)")
    group.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run (auto: CUDA when available)"
    )
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch CPU threads (default: all cores)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar (the metrics are still printed)")
    group.add_argument(
        "--json", action="store_true", help='print {"mse", "mae", "ssim", "psnr", "per_frame_mse": [...]} (no progress bar)'
    )
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import os

    import torch

    from model.checkpoint import CheckpointError, build_model, read_checkpoint
    from model.data import DataError, DataSpec, build_test_dataset, clip_count, infer_dataset
    from model.train import evaluate, resolve_device

    if args.trust_checkpoint:
        print(trust_warning(args.checkpoint), file=sys.stderr)
    try:
        payload = read_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
        net, config = build_model(payload, args.checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(f"cannot load {args.checkpoint}: {exc}") from None
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    try:
        # a file given without --dataset says what it is; else the data the checkpoint trained on
        inferred = infer_dataset(args.data_path) if args.dataset is None and args.data_path is not None else None
        name = args.dataset or inferred or payload.get("dataset") or "mmnist"
        device = resolve_device(args.device)
        trained = payload.get("data") or {}  # videos: the run's stride and resize unless given
        spec = DataSpec(
            name=name,
            data_dir=args.data_dir,
            data_path=args.data_path,
            val_clips=args.val_clips,
            stride=args.stride or trained.get("stride"),
            resize=args.resize or trained.get("resize") or "none",
            held_out_digits=trained.get("held_out_digits", 0) if args.held_out_digits is None else args.held_out_digits,
        )
        dataset = build_test_dataset(spec, config)
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    metrics, _ = evaluate(
        net.to(device),
        dataset,
        device,
        batch_size=args.batch_size,
        progress=not (args.json or args.no_progress),
    )
    report = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.checkpoint} on {name} ({clip_count(dataset)} clips)")
    print(f"mse   {metrics['mse']:.3f}   (sum over C·H·W, mean over clips and frames)")
    print(f"mae   {metrics['mae']:.3f}")
    print(f"ssim  {metrics['ssim']:.4f}")
    print(f"psnr  {metrics['psnr']:.3f} dB")
    print("per-frame mse  " + " ".join(f"{v:.1f}" for v in metrics["per_frame_mse"]))
    return 0
