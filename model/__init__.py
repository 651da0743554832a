"""STLight in PyTorch: architecture, presets, data, metrics, training and checkpoints.

Names are imported lazily (PEP 562) so that ``import model.cli`` — which the ``stlight``
command does to build its parser — works where torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "STLight": "model.stlight",
    "STLightConfig": "model.config",
    "PRESETS": "model.config",
    "preset": "model.config",
    "count_params": "model.stlight",
    "count_macs": "model.stlight",
    "save_checkpoint": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "read_checkpoint": "model.checkpoint",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from model.config import PRESETS, STLightConfig, preset
    from model.stlight import STLight, count_macs, count_params


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
