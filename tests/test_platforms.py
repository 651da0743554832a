"""Hosts whose ONNX Runtime has no CUDA provider (PyPI's plain ``onnxruntime`` on macOS arm64 and
Linux aarch64): ``--device auto`` serves on the CPU and says so, ``--device cuda`` refuses in
one line, and no other provider (CoreML) is picked up unasked."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.inference.engine import Engine, EngineError

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "service" / "assets" / "default.onnx"
# what onnxruntime 1.31's macOS arm64 wheel reports
MACOS_PROVIDERS = ["CoreMLExecutionProvider", "AzureExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def macos_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(MACOS_PROVIDERS))


def test_auto_runs_on_cpu_without_a_cuda_build(macos_onnxruntime: None) -> None:
    engine = Engine(DEFAULT_MODEL, device="auto")
    assert engine.provider == "CPUExecutionProvider"
    assert engine.session.get_providers() == ["CPUExecutionProvider"]  # CoreML is not validated: never used


def test_cuda_without_a_cuda_build_is_one_clear_error(macos_onnxruntime: None) -> None:
    with pytest.raises(EngineError, match=r"no CUDAExecutionProvider.*install onnxruntime-gpu or use --device cpu"):
        Engine(DEFAULT_MODEL, device="cuda")
