"""Flags and handlers of ``stlight summary``, ``train`` and ``eval``.

Imported to build the parser, so it imports torch only inside handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from service.cli import UserError

CONFIG_FIELDS = ("in_frames", "out_frames", "channels", "height", "width", "dim", "depth", "patch_size", "overlap", "kernel_1", "kernel_2")

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


def add_config_args(parser: argparse.ArgumentParser, *, default_preset: str | None = "tiny") -> None:
    """``--preset`` plus one override flag per ``STLightConfig`` field."""
    from model.config import PRESETS

    group = parser.add_argument_group("model config (a preset, then per-field overrides)")
    group.add_argument("--preset", default=default_preset, choices=list(PRESETS), help=f"named configuration (default: {default_preset})")
    for name in CONFIG_FIELDS:
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=name, type=int, default=None, metavar="N", help=f"override {_FIELD_HELP[name]}")


def config_from_args(args: argparse.Namespace) -> Any:
    """The preset with the user's overrides; invalid combinations become a UserError."""
    from model.config import preset

    overrides = {name: getattr(args, name) for name in CONFIG_FIELDS if getattr(args, name, None) is not None}
    try:
        return dataclasses.replace(preset(args.preset), **overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# ---------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------


def add_summary(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "summary",
        help="parameters, MACs and shapes of a configuration",
        description="Print parameters, multiply-accumulates per clip and input/output shapes of a preset with optional overrides.",
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
