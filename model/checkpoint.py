"""Checkpoints that carry their config, so anything can rebuild the exact model from a file.

Checkpoints are files people download from others, so they are read with
``torch.load(weights_only=True)``: tensors, numbers, strings and containers of them (and numpy
arrays, for checkpoints of 0.2.0), never pickled code. Everything training saves is of those
types (numpy's RNG state too, as tensors: see ``model/train.py``). A file that holds anything
else is refused naming what it held; ``trust=True`` (the CLIs' ``--trust-checkpoint``) unpickles
it fully, which runs whatever code it holds.
"""

from __future__ import annotations

import collections
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.stlight import STLight, STLightConfig

# 2: RNG states as tensors and numbers (1, up to 0.2.0: numpy's RNG state as a numpy array)
FORMAT_VERSION = 2
# what a checkpoint holds: these exact types (a numpy float is a float subclass that pickles as
# numpy's), tensors, and containers of them; all in torch's weights-only allow-list
_SCALARS = (str, int, float, bool, type(None))
_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A file that is not an STLight checkpoint this code loads; the message says why."""


def _array_globals() -> list[Any]:
    """What a numpy array unpickles through: data, no code. Format-1 checkpoints (0.2.0 and
    before) hold numpy's RNG state as one, so they still load without trust. Old numpy wrote
    ``numpy.core``, numpy 2 writes ``numpy._core``: both names are allowed."""
    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    reconstruct = multiarray._reconstruct
    return [
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def _check_plain(value: Any, where: str = "checkpoint") -> None:
    """Refuse, before writing, anything ``weights_only`` would refuse when reading."""
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif type(value) not in _SCALARS and not isinstance(value, _TORCH):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds plain values")


def save_checkpoint(path: str | Path, net: STLight, config: STLightConfig, **state: Any) -> Path:
    """Write ``{"config", "model", "format_version", **state}`` atomically (tmp file + rename).

    ``state`` holds whatever else a run needs to continue: optimizer, scheduler, step, epoch,
    RNG states, metrics, preset name, dataset name; all of it plain values, tensors and
    containers of them (``TypeError`` otherwise), so that the file loads without unpickling code.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "model": net.state_dict(), **state}
    _check_plain(payload)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, trust: bool = False) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without unpickling code unless ``trust``.

    Raises :class:`CheckpointError` (a ``ValueError``) with a one-line message on a bad file,
    naming what a refused file held."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if trust:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(_array_globals()):
                payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            raise CheckpointError(_refusal(path, exc)) from None
        raise CheckpointError(f"{path} is not a readable STLight checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not an STLight checkpoint: expected a dict with 'config' and 'model'")
    return payload


def _refusal(path: Path, exc: Exception) -> str:
    """One line from torch's refusal: the global the file wanted (torch's words vary), and what to do."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"got <class '([^']+)'>", text)
    if not found:  # not a pickle torch can parse safely at all (random bytes, an odd opcode)
        reason = text.rsplit("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0].strip()
        return (
            f"{path} is not a readable STLight checkpoint ({reason or 'refused by the weights-only loader'}); "
            "only a file whose author you trust may be read with --trust-checkpoint"
        )
    return (
        f"{path} holds {found.group(1)}, which is code or a class, not weights or training state: refused, since "
        "loading it would run it. If you made the file or trust whoever did, pass --trust-checkpoint"
    )


def build_model(payload: dict[str, Any], source: str | Path = "checkpoint") -> tuple[STLight, STLightConfig]:
    """The exact model a checkpoint's payload describes, in eval mode: the one place a
    checkpoint becomes a model (eval, export and the default-model packaging all use it).
    ``ValueError`` naming ``source`` when its config and weights do not fit together."""
    try:
        config = STLightConfig.from_dict(payload["config"])
        net = STLight(config)
        net.load_state_dict(payload["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{source}: config and weights do not build an STLight model ({exc})") from None
    return net.eval(), config


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, trust: bool = False
) -> tuple[STLight, STLightConfig]:
    """Rebuild the model from a checkpoint file alone; returned in eval mode."""
    return build_model(read_checkpoint(path, map_location, trust=trust), path)
