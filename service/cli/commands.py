"""The ``stlight`` command table: which module adds each subcommand.

Modules are named as strings and imported only when the parser is built, so the serving
package never imports ``model`` or ``export`` at import time, and ``stlight serve`` runs where
torch is not installed. The named modules must not import torch at module level either."""

from __future__ import annotations

from typing import NamedTuple


class Command(NamedTuple):
    name: str
    module: str  # imported to build the parser
    adder: str  # function(subparsers) in ``module`` that adds the subcommand and its handler


COMMANDS: tuple[Command, ...] = (
    Command("summary", "model.cli", "add_summary"),
    Command("serve", "service.cli.serve", "add_serve"),
    Command("train", "model.cli", "add_train"),
    Command("eval", "model.cli", "add_eval"),
    Command("export", "export.cli", "add_export"),
    Command("predict", "service.cli.predict", "add_predict"),
)
