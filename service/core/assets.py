"""Files shipped inside the package (``service/assets/``): the default model and what the web
page shows. Paths only; nothing is read at import."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "default.onnx"  # served when no --model or --model-repository is given
