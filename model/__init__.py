"""STLight in PyTorch: architecture, presets, data, metrics, training and checkpoints.

Names are imported lazily (PEP 562) so that ``import model.cli`` — which the ``stlight``
command does to build its parser — works where torch is not installed, and costs no torch
import: building the whole parser takes 70-135 ms, importing what these names need 3.2-3.5 s
(``python -X importtime``, the 2-core development machine).
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

if TYPE_CHECKING:  # the same names, eagerly, for type checkers (``X as X`` marks a re-export)
    from model.checkpoint import (
        load_checkpoint as load_checkpoint,
    )
    from model.checkpoint import (
        read_checkpoint as read_checkpoint,
    )
    from model.checkpoint import (
        save_checkpoint as save_checkpoint,
    )
    from model.config import PRESETS as PRESETS
    from model.config import STLightConfig as STLightConfig
    from model.config import preset as preset
    from model.stlight import STLight as STLight
    from model.stlight import count_macs as count_macs
    from model.stlight import count_params as count_params


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
