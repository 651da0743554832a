"""Torch -> ONNX export of STLight checkpoints, validated against torch.

Names are imported lazily (PEP 562): ``import export.cli``, which the ``stlight`` command does to
build its parser, must not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "to_onnx": "export.onnx_export",
    "export_preset": "export.onnx_export",
    "export_checkpoint": "export.onnx_export",
    "load_for_export": "export.onnx_export",
    "random_model": "export.onnx_export",
    "validate": "export.validation",
    "ValidationReport": "export.validation",
    "Check": "export.validation",
    "moving_blobs": "export.validation",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from export.onnx_export import export_checkpoint, export_preset, load_for_export, random_model, to_onnx
    from export.validation import Check, ValidationReport, moving_blobs, validate


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
