"""The ``stlight`` command. Subcommands register their flags here and import their work lazily,
so ``stlight serve`` runs where torch is not installed and a torch command says how to get it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

TRAIN_EXTRA_HINT = "this command needs PyTorch: pip install 'stlight[train]'"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback, exit status 2."""


# (module, function) pairs that add one subcommand each; imported only to build the parser,
# so these modules must not import torch at module level.
_COMMANDS: list[tuple[str, str]] = [
    ("model.cli", "add_summary"),
    ("service.serve_cli", "add_serve"),
    ("model.cli", "add_train"),
    ("model.cli", "add_eval"),
    ("export.cli", "add_export"),
    ("service.predict_cli", "add_predict"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stlight",
        description="STLight: train, export, serve and run spatio-temporal frame prediction models.",
    )
    from service import __version__

    parser.add_argument("--version", action="version", version=f"stlight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, function in _COMMANDS:
        getattr(importlib.import_module(module_name), function)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"stlight {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "onnx", "onnxscript", "skimage"}:
            print(f"stlight {args.command}: error: {TRAIN_EXTRA_HINT} (missing module {exc.name!r})", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"stlight {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # re-import so that UserError is the class the subcommand modules import, not __main__'s
    from service.cli import main as _main

    sys.exit(_main())
