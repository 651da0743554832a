"""The model card embedded in an exported ONNX file's ``metadata_props``.

The one place that defines its keys: ``export`` writes a card, the service reads it back with
``ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)``. Pure Python, no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# the clip shape: frames in (T) and out (T'), channels, height, width
SHAPE_FIELDS = ("in_frames", "out_frames", "channels", "height", "width")
PREFIX = "stlight."
KEYS = (
    "config",  # STLightConfig as JSON
    *SHAPE_FIELDS,
    "value_range",  # "[0, 1]": inputs and outputs are float32 in this range
    "preset",  # preset name the config came from, "" when unknown
    "dataset",  # training dataset, "" for untrained (random-weight) exports
    "metrics",  # best validation metrics as JSON ({} when unknown)
    "checkpoint_sha256",  # sha256 of the checkpoint file ("" for a preset export)
    "version",  # stlight package version that exported the file
    "precision",  # "fp32" or "fp16" weights
)


@dataclass(frozen=True)
class ClipSpec:
    """Shape of one input clip and its prediction: the one definition of these five fields,
    which the model config (``model.config.STLightConfig``) and the model card extend."""

    in_frames: int
    out_frames: int
    channels: int
    height: int
    width: int

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.in_frames, self.channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.out_frames, self.channels, self.height, self.width)

    @property
    def clip_spec(self) -> ClipSpec:
        """Just the shape, as a plain (hashable, comparable) ``ClipSpec``."""
        return ClipSpec(*(getattr(self, name) for name in SHAPE_FIELDS))

    @classmethod
    def shape_of(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The five shape fields of a mapping (a config dict, a ``/v1/model`` answer)."""
        return {name: int(data[name]) for name in SHAPE_FIELDS}


@dataclass(frozen=True)
class ModelCard(ClipSpec):
    """The clip shape, plus what an exported file says about where it came from."""

    config: dict[str, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    preset: str = ""
    dataset: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    version: str = ""
    precision: str = "fp32"

    @classmethod
    def from_config(cls, config: dict[str, int], **rest: Any) -> ModelCard:
        return cls(config=dict(config), **ClipSpec.shape_of(config), **rest)

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props``."""
        values = asdict(self)
        out: dict[str, str] = {}
        for key in KEYS:
            value = values[key]
            if key in ("config", "metrics"):
                text = json.dumps(value, sort_keys=True)
            elif key == "value_range":
                text = json.dumps(list(value))
            else:
                text = str(value)
            out[PREFIX + key] = text
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ModelCard:
        """Parse a card; raises ``ValueError`` naming the missing or malformed key."""
        missing = [PREFIX + k for k in ("config", *SHAPE_FIELDS) if PREFIX + k not in metadata]
        if missing:
            raise ValueError(
                f"ONNX file has no STLight model card: missing metadata {', '.join(missing)} (export it with `stlight export`)"
            )

        def get(key: str, default: str = "") -> str:
            return metadata.get(PREFIX + key, default)

        try:
            return cls(
                config=json.loads(get("config")),
                **ClipSpec.shape_of({name: get(name) for name in SHAPE_FIELDS}),
                value_range=tuple(json.loads(get("value_range", "[0, 1]"))),
                preset=get("preset"),
                dataset=get("dataset"),
                metrics=json.loads(get("metrics", "{}") or "{}"),
                checkpoint_sha256=get("checkpoint_sha256"),
                version=get("version"),
                precision=get("precision", "fp32") or "fp32",
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed STLight model card in ONNX metadata: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["value_range"] = list(self.value_range)
        return data
