"""The user-facing error of every ``stlight`` command: a mistake the user can fix.

Torch-free and tiny, so that ``model``, ``export`` and ``service`` all raise the same type and
``service.cli.main`` prints it as one line (no traceback) with exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback, exit status 2."""


# what a torch command says where torch (or another `train` extra package) is missing
TRAIN_EXTRA_HINT = "this command needs PyTorch: pip install 'stlight[train]'"
TRAIN_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "skimage"})
