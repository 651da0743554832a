"""Torch -> ONNX export of STLight checkpoints, validated against torch.

Names are imported lazily (PEP 562): ``import export.cli``, which the ``stlight`` command does to
build its parser, must neither need torch nor pay seconds for importing it (see ``model/__init__.py``).
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

if TYPE_CHECKING:  # the same names, eagerly, for type checkers (``X as X`` marks a re-export)
    from export.onnx_export import (
        export_checkpoint as export_checkpoint,
    )
    from export.onnx_export import (
        export_preset as export_preset,
    )
    from export.onnx_export import (
        load_for_export as load_for_export,
    )
    from export.onnx_export import (
        random_model as random_model,
    )
    from export.onnx_export import (
        to_onnx as to_onnx,
    )
    from export.validation import (
        Check as Check,
    )
    from export.validation import (
        ValidationReport as ValidationReport,
    )
    from export.validation import (
        moving_blobs as moving_blobs,
    )
    from export.validation import (
        validate as validate,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
