"""Flags and handler of ``stlight export``. Imported to build the parser: no torch at module level."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from model.cli import CONFIG_FIELDS, add_config_args, add_trust_arg, config_from_args, trust_warning
from service.core.errors import UserError


def add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint or preset to a validated ONNX file",
        description=(
            "Export an STLight checkpoint (or a preset with seeded random weights) to one self-contained ONNX file "
            "with the torch.export-based exporter: input 'frames' (B, T, C, H, W) float32, output 'predicted', "
            "dynamic batch, model card in metadata_props. Then validate it against torch (onnx.checker, ONNX Runtime "
            "vs torch on random and moving-blob clips, every DepthToSpace and dilated depthwise Conv on its own) "
            "and exit 1 when a check fails."
        ),
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, help="training checkpoint (.pt) to export; or use --preset")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH", help="ONNX file to write (e.g. model.onnx)")
    add_trust_arg(parser)
    add_config_args(
        parser, default_preset=None, preset_help="export this configuration with seeded random weights instead of a checkpoint"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights with --preset (default: 0)")
    parser.add_argument(
        "--fp16", action="store_true", help="store half-precision weights and compute in half; inputs and outputs stay float32"
    )
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: the exporter's, 18 or newer)")
    parser.add_argument(
        "--device",
        "--provider",
        dest="provider",
        choices=["cpu", "cuda"],
        default="cpu",
        help="ONNX Runtime provider to validate on (default: cpu). cuda loads the cuda extra's libraries as stlight serve "
        "does and stops with ONNX Runtime's reason (exit 2) when CUDA cannot be used, before exporting",
    )
    parser.add_argument(
        "--validate-only",
        action="store_true",
        help="do not export: validate the existing --out file against the checkpoint or preset",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar while validating (the table is still printed)"
    )
    parser.add_argument(
        "--json", action="store_true", help='print the report as JSON with "passed": true|false (no progress bar)'
    )
    parser.set_defaults(handler=run_export)


def _source(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(net, config, card) from the checkpoint or the preset; user mistakes become UserError."""
    overrides = [name for name in CONFIG_FIELDS if getattr(args, name, None) is not None]
    if args.trust_checkpoint and args.checkpoint is None:
        raise UserError("--trust-checkpoint applies to a checkpoint file; --preset reads none")
    if args.checkpoint is not None and args.preset is not None:
        raise UserError(f"give a checkpoint or --preset, not both (got {args.checkpoint} and --preset {args.preset})")
    if args.checkpoint is None and args.preset is None:
        raise UserError(
            "nothing to export: give a checkpoint file (stlight export run/best.pt --out model.onnx) or --preset NAME"
        )
    if args.checkpoint is not None:
        if overrides:
            raise UserError(f"--{overrides[0].replace('_', '-')} only applies to --preset; a checkpoint carries its own config")
        if not args.checkpoint.is_file():
            raise UserError(f"checkpoint {args.checkpoint} does not exist")
        from export.onnx_export import load_for_export

        if args.trust_checkpoint:
            print(trust_warning(args.checkpoint), file=sys.stderr)
        try:
            return load_for_export(args.checkpoint, trust=args.trust_checkpoint)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    config = config_from_args(args)
    from export.onnx_export import random_model
    from model.config import preset
    from service import __version__
    from service.core.card import ModelCard

    card = ModelCard.from_config(
        config.to_dict(), preset=args.preset if config == preset(args.preset) else "", version=__version__
    )
    return random_model(config, args.seed), config, card


def run_export(args: argparse.Namespace) -> int:
    if args.opset is not None and args.opset < 18:
        raise UserError(f"--opset {args.opset} is too old for the torch.export-based exporter; use 18 or newer, or leave it out")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a directory; give a file name such as {args.out / 'model.onnx'}")
    if args.validate_only and not args.out.is_file():
        raise UserError(f"--validate-only: {args.out} does not exist; export it first (leave out --validate-only)")
    net, config, card = _source(args)
    card = dataclasses.replace(card, precision="fp16" if args.fp16 else "fp32")

    from export.onnx_export import to_onnx
    from export.validation import ProviderUnavailable, check_provider, validate

    try:  # before exporting: a host that cannot validate learns it at once, and no verdict is given
        check_provider(args.provider)
    except ProviderUnavailable as exc:
        raise UserError(str(exc)) from None

    log = (lambda *_: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    export_s = 0.0
    if not args.validate_only:
        log(f"exporting {args.checkpoint or 'preset ' + args.preset} -> {args.out} ({'fp16' if args.fp16 else 'fp32'}) ...")
        start = time.perf_counter()
        try:
            to_onnx(net, config, args.out, opset=args.opset, fp16=args.fp16, card=card)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        export_s = time.perf_counter() - start
        log(f"exported in {export_s:.1f} s, {args.out.stat().st_size / 2**20:.2f} MiB")
    report = validate(args.out, net, config, provider=args.provider, progress=not (args.json or args.no_progress))

    if args.json:
        print(
            json.dumps(
                {
                    **report.to_dict(),
                    "size_bytes": args.out.stat().st_size,
                    "export_s": round(export_s, 2),
                    "card": card.to_dict(),
                },
                indent=2,
            )
        )
    else:
        print(report.table())
        if not report.passed:
            written = "" if args.validate_only else " was written but"
            print(f"\n{args.out}{written} does NOT match the torch model; do not serve it.", file=sys.stderr)
    return 0 if report.passed else 1
