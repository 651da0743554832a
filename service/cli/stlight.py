"""The ``stlight`` command. Subcommands register their flags here and import their work lazily,
so ``stlight serve`` runs where torch is not installed and a torch command says how to get it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from service.cli.commands import COMMANDS
from service.core.errors import TRAIN_EXTRA_MODULES, UserError, train_extra_hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stlight",
        description="STLight: train, export, serve and run spatio-temporal frame prediction models.",
    )
    from service import __version__

    parser.add_argument("--version", action="version", version=f"stlight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        getattr(importlib.import_module(command.module), command.adder)(sub)
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
        if exc.name and exc.name.split(".")[0] in TRAIN_EXTRA_MODULES:
            print(f"stlight {args.command}: error: {train_extra_hint(exc.name)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"stlight {args.command}: interrupted", file=sys.stderr)
        return 130
