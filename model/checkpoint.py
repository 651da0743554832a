"""Checkpoints that carry their config, so anything can rebuild the exact model from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.stlight import STLight, STLightConfig

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, net: STLight, config: STLightConfig, **state: Any) -> Path:
    """Write ``{"config", "model", "format_version", **state}`` atomically (tmp file + rename).

    ``state`` holds whatever else a run needs to continue: optimizer, scheduler, step, epoch,
    RNG states, metrics, preset name, dataset name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "model": net.state_dict(), **state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict; raises ``ValueError`` with a readable message on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable STLight checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{path} is not an STLight checkpoint: expected a dict with 'config' and 'model'")
    return payload


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[STLight, STLightConfig]:
    """Rebuild the model from a checkpoint file alone; returned in eval mode."""
    return build_model(read_checkpoint(path, map_location), path)
