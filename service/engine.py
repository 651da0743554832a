"""One ONNX Runtime session behind a small interface: load, warm up, run a batch of clips.

Knows nothing of HTTP. The provider that ONNX Runtime really uses is read back from the session
after it is created, so a CUDA provider that failed to load is reported as the CPU fallback it is.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.card import ModelCard
from service.hashing import file_sha256

log = logging.getLogger("stlight.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# cuDNN's exhaustive algorithm search costs seconds per new input shape; dynamic batch sizes
# would pay it again and again, so take its heuristic choice (the issue asks for HEURISTIC).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class EngineError(Exception):
    """The model cannot be served as asked (missing file, no model card, CUDA not loading...)."""


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels of the ``cuda`` extra (what the Docker image
    installs), which the CUDA provider does not find on its own (they are not on the library
    path). Quiet where they are absent: the provider then searches the system as usual."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # it print()s each library it cannot load
            preload()
    except Exception as exc:  # never let this stop the CPU fallback
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


class Engine:
    """An ONNX Runtime session for one STLight model. ``run`` is thread-safe (ORT allows
    concurrent ``run`` calls) but the service calls it from a single worker thread."""

    def __init__(
        self,
        path: str | Path,
        device: Literal["auto", "cuda", "cpu"] = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"model file not found: {self.path}")
        if device not in ("auto", "cuda", "cpu"):
            raise EngineError(f"device must be auto, cuda or cpu, got {device!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle ORT threads would otherwise spin on the CPU the event loop needs between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only; we report the provider in use ourselves
        self.intra_op_threads, self.inter_op_threads = intra_op_threads, inter_op_threads

        providers: list[Any] = [CPU]
        if device in ("auto", "cuda"):
            if CUDA in ort.get_available_providers():
                preload_cuda_libraries()
                providers = [(CUDA, CUDA_OPTIONS), CPU]
            elif device == "cuda":
                raise EngineError(
                    "--device cuda: this onnxruntime build has no CUDAExecutionProvider "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
                )
        # With "auto", a CUDA provider that fails to load is expected on CPU hosts: silence ONNX
        # Runtime's multi-line error and let the caller report the fallback in one line.
        # "cuda" keeps it, since there it says why the start fails.
        if device == "auto":
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EngineError(f"cannot load {self.path} with ONNX Runtime: {exc}") from None
        finally:
            ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings
        self.provider: str = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise EngineError(
                f"--device cuda: CUDAExecutionProvider did not load (ONNX Runtime fell back to {self.provider}); "
                "check the NVIDIA driver, CUDA and cuDNN libraries (pip install 'stlight[cuda]'), or use --device auto/cpu"
            )

        try:
            self.card = ModelCard.from_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        except ValueError as exc:
            raise EngineError(f"{self.path}: {exc}") from None
        self.spec = self.card.clip_spec
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_dtype = _NP_DTYPES.get(inputs[0].type)
        if self.input_dtype is None:
            raise EngineError(f"{self.path}: input {self.input_name!r} has type {inputs[0].type}; expected a float tensor")
        shape = inputs[0].shape  # [B, T, C, H, W]; B is a name when the batch axis is dynamic
        if len(shape) != 5 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], self.spec.input_shape)):
            raise EngineError(
                f"{self.path}: input shape {shape} does not match the model card's (B, {', '.join(map(str, self.spec.input_shape))})"
            )
        # a fixed batch axis (export without a dynamic batch) is served by padding to it
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) else None
        self.sha256 = file_sha256(self.path)
        self.name = self.card.preset or self.path.stem
        self._warm = threading.Event()

    def run(self, clips: np.ndarray) -> np.ndarray:
        """(B, T, C, H, W) float32 in [0, 1] -> (B, T', C, H, W) float32."""
        if clips.ndim != 5 or clips.shape[1:] != self.spec.input_shape:
            raise ValueError(f"expected clips of shape (B, {', '.join(map(str, self.spec.input_shape))}), got {clips.shape}")
        n = clips.shape[0]
        if self.fixed_batch is None:
            return self._run(clips)
        parts = []
        for start in range(0, n, self.fixed_batch):
            chunk = clips[start : start + self.fixed_batch]
            pad = self.fixed_batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk)[: self.fixed_batch - pad])
        return np.concatenate(parts)

    def _run(self, clips: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(clips, dtype=self.input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: feed})
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(clips), *self.spec.output_shape):
            raise RuntimeError(f"model returned shape {out.shape}, expected {(len(clips), *self.spec.output_shape)}")
        return out

    def warm_up(self, max_batch_size: int, runs: int = 2) -> None:
        """Run full-size and single-clip batches so the first requests do not pay for
        allocator growth and (on CUDA) kernel selection."""
        rng = np.random.default_rng(0)
        for _ in range(runs):
            for size in sorted({max_batch_size, 1}, reverse=True):
                self.run(rng.random((size, *self.spec.input_shape), dtype=np.float32))
        self._warm.set()

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_frames": self.spec.in_frames,
            "out_frames": self.spec.out_frames,
            "channels": self.spec.channels,
            "height": self.spec.height,
            "width": self.spec.width,
            "provider": self.provider,
            "sha256": self.sha256,
            "path": str(self.path),
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
        }
