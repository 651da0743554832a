"""Torch -> ONNX with the torch.export-based (dynamo) exporter.

timm's fixed sequence: eval mode -> one reference forward -> export with named input/output and a
dynamic batch axis -> one self-contained ``.onnx`` file carrying the model card in
``metadata_props``. Checking the file against torch is ``export.validate``.

Why dynamo: the legacy TorchScript exporter writes the dilated ``padding="same"`` convs as
``auto_pad=SAME_UPPER`` with dilations, which ONNX Runtime refuses; the dynamo exporter writes
explicit pads and ``DepthToSpace(mode=CRD)`` for ``PixelShuffle``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from model.config import STLightConfig, preset
from model.stlight import STLight
from service import __version__
from service.core.card import ModelCard

INPUT_NAME = "frames"
OUTPUT_NAME = "predicted"
MIN_OPSET = 18  # the dynamo exporter emits opset 18 and newer only
EXAMPLE_BATCH = 2  # batch of the example input; 1 would let torch.export specialise the axis


class HalfPrecision(nn.Module):
    """fp16 weights and compute, fp32 at the edges: ``frames`` and ``predicted`` stay float32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).half().eval()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.half()).float()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, torchvision notices and deprecation warnings."""
    noisy = logging.getLogger("torch.onnx")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        noisy.setLevel(level)


def to_onnx(
    net: nn.Module,
    config: STLightConfig,
    out_path: str | Path,
    *,
    opset: int | None = None,
    fp16: bool = False,
    card: ModelCard | None = None,
) -> Path:
    """Export ``net`` (switched to eval mode) to one self-contained ONNX file with its model card.

    Input ``frames`` (B, T, C, H, W) float32, output ``predicted`` (B, T', C, H, W) float32, B
    dynamic. ``fp16`` stores half-precision weights and computes in half, inputs and outputs stay
    float32. ``card`` defaults to one built from ``config`` (no preset, dataset or metrics).
    """
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old for the torch.export-based exporter; use --opset {MIN_OPSET} or newer (or leave it out)"
        )
    precision = "fp16" if fp16 else "fp32"
    if card is None:
        card = ModelCard.from_config(config.to_dict(), version=__version__, precision=precision)
    elif card.precision != precision:
        card = dataclasses.replace(card, precision=precision)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    net = net.cpu().eval()
    example = torch.rand(EXAMPLE_BATCH, *config.input_shape)  # (B, T, C, H, W) in [0, 1]
    with torch.no_grad():  # reference forward: fail here, with torch's message, not inside the exporter
        out = net(example)
    if tuple(out.shape[1:]) != config.output_shape:
        raise ValueError(
            f"model output {tuple(out.shape)} does not match the config's (B, {config.output_shape}); wrong config for this net?"
        )
    module: nn.Module = HalfPrecision(net) if fp16 else net

    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program (None is the legacy exporter's)
    proto = program.model_proto
    proto.producer_name = "stlight"
    proto.producer_version = __version__
    proto.doc_string = "STLight frame predictor: frames (B, T, C, H, W) float32 in [0, 1] -> predicted (B, T', C, H, W)"
    onnx.helper.set_model_props(proto, card.to_metadata())
    if proto.ByteSize() >= 2**31:
        raise ValueError(f"the ONNX model is {proto.ByteSize() / 2**30:.1f} GiB, above protobuf's 2 GiB limit for one file")
    onnx.save(proto, out_path, save_as_external_data=False)
    return out_path


# ---------------------------------------------------------------------------------------
# models from a preset or a checkpoint
# ---------------------------------------------------------------------------------------


def random_model(config: STLightConfig, seed: int = 0) -> STLight:
    """The paper's init under ``seed``, plus seeded non-trivial BatchNorm statistics and affine
    parameters, so a random-weight export exercises every parameter the way a trained one does."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = STLight(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                assert module.running_mean is not None and module.running_var is not None  # track_running_stats
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
    return net.eval()


def export_preset(name: str, out_path: str | Path, *, seed: int = 0, overrides: dict[str, int] | None = None, **kw: Any) -> Path:
    """Export preset ``name`` (with optional config ``overrides``) with seeded random weights.

    ``kw`` goes to ``to_onnx`` (``opset``, ``fp16``). The card names the preset only when the
    config is the preset unchanged.
    """
    base = preset(name)
    config = base.replace(**overrides) if overrides else base
    net = random_model(config, seed)
    fp16 = bool(kw.get("fp16", False))
    card = ModelCard.from_config(
        config.to_dict(),
        preset=name if config == base else "",
        version=__version__,
        precision="fp16" if fp16 else "fp32",
    )
    return to_onnx(net, config, out_path, card=card, **kw)


def _json_metrics(metrics: Any) -> dict[str, Any]:
    """Best-effort plain-JSON copy of a checkpoint's metrics (tensors -> floats, drops the rest)."""
    if not isinstance(metrics, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[str(key)] = value
        elif isinstance(value, (int, float)):
            out[str(key)] = value if math.isfinite(value) else str(value)
        elif isinstance(value, dict):
            out[str(key)] = _json_metrics(value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            out[str(key)] = [v if math.isfinite(v) else str(v) for v in value]  # e.g. per-frame MSE
    return out


def load_for_export(ckpt_path: str | Path, *, trust: bool = False) -> tuple[STLight, STLightConfig, ModelCard]:
    """Model (eval mode), config and card from a checkpoint (``trust``: unpickled fully, which
    runs any code it holds); ``ValueError`` on a bad file."""
    from model.checkpoint import build_model, read_checkpoint
    from service.core.hashing import file_sha256

    payload = read_checkpoint(ckpt_path, trust=trust)
    net, config = build_model(payload, ckpt_path)
    metrics = payload.get("best_metrics") or payload.get("metrics") or {}
    card = ModelCard.from_config(
        config.to_dict(),
        preset=str(payload.get("preset") or ""),
        dataset=str(payload.get("dataset") or ""),
        metrics=_json_metrics(metrics),
        checkpoint_sha256=file_sha256(ckpt_path),
        version=__version__,
    )
    return net, config, card


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path, **kw: Any) -> Path:
    """Export a training checkpoint; the card carries its preset, dataset, best metrics and sha256."""
    net, config, card = load_for_export(ckpt_path)
    return to_onnx(net, config, out_path, card=card, **kw)
