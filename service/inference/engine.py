"""One ONNX Runtime session behind a small interface: load, warm up, run a batch of clips.

Knows nothing of HTTP. The provider that ONNX Runtime really uses is read back from the session
after it is created, so a CUDA provider that failed to load is reported as the CPU fallback it is.

On CUDA a batch is padded to one of a few bucket sizes (1, 2, 4, ... ``max_batch_size``) and run
through IO binding with input and output buffers bound once per bucket, so cuDNN, the memory
arena and (with ``cuda_graphs``) the captured graphs see a handful of shapes and addresses
instead of one per batch size. ONNX Runtime's errors are sorted for the batcher
(:func:`service.core.runtime.classify_run_error`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.card import ModelCard
from service.core.errors import extra_hint
from service.core.hashing import file_sha256
from service.core.runtime import CPU, CUDA, classify_run_error, cuda_provider_options, preload_cuda_libraries
from service.inference.external_data import ExternalDataError, NotOnnxError, check_external_data
from service.inference.options import Device, Spinning

__all__ = ["CPU", "CUDA", "Engine", "EngineError", "bucket_sizes", "file_sha256", "preload_cuda_libraries"]

log = logging.getLogger("stlight.engine")


_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def bucket_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


class EngineError(Exception):
    """The model cannot be served as asked (missing file, no model card, CUDA not loading...)."""


def _check_arguments(path: Path, device: str, spinning: str, max_batch_size: int) -> None:
    """Refuse bad arguments, and external data pointing outside the model's folder, before ONNX
    Runtime reads anything."""
    if not path.is_file():
        raise EngineError(f"model file not found: {path}")
    if device not in ("auto", "cuda", "cpu"):
        raise EngineError(f"device must be auto, cuda or cpu, got {device!r}")
    if spinning not in ("off", "run", "on"):
        raise EngineError(f"spinning must be off, run or on, got {spinning!r}")
    if max_batch_size < 1:
        raise EngineError(f"max_batch_size must be >= 1, got {max_batch_size}")
    try:  # before ONNX Runtime: 1.20 reads external data wherever it points (1.31 checks it too)
        check_external_data(path)
    except (NotOnnxError, OSError) as exc:
        raise EngineError(f"cannot load {path}: not an ONNX model file ({exc})") from None
    except ExternalDataError as exc:
        raise EngineError(str(exc)) from None


def _session_options(intra_op_threads: int, inter_op_threads: int, spinning: str) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning (benchmarks/ort_spinning.py, docs/serving-performance.md): "run" by default —
    # pool threads spin between the operators of a run, where a futex wake-up per operator
    # costs more than the spin, and stop when the run returns (force_spinning_stop), so an
    # idle server burns no core and the event loop gets the cores back between runs. On a
    # quiet 2-core box it took batch-1 runs from 0.76 to 0.51 ms at less CPU per run. "on"
    # (ORT's default) also spins after a run; "off" never spins, for hosts whose cores other
    # work needs more.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spinning == "off" else "1")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0" if spinning == "off" else "1")
    options.add_session_config_entry("session.force_spinning_stop", "1" if spinning == "run" else "0")
    options.log_severity_level = 3  # errors only; we report the provider in use ourselves
    return options


def _providers(device: str, *, tf32: bool, cuda_graphs: bool) -> tuple[list[Any], tuple[str, ...]]:
    """The providers to ask ONNX Runtime for, and what the CUDA library preload said."""
    providers: list[Any] = [CPU]
    preload_report: tuple[str, ...] = ()
    if device in ("auto", "cuda"):
        if CUDA in ort.get_available_providers():
            preload_report = preload_cuda_libraries()
            providers = [(CUDA, cuda_provider_options(tf32=tf32, cuda_graphs=cuda_graphs)), CPU]
        elif device == "cuda":
            raise EngineError(
                "--device cuda: this onnxruntime build has no CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
            )
    if cuda_graphs and device == "cpu":
        raise EngineError("--cuda-graphs needs --device cuda (or auto on a machine where CUDA loads)")
    return providers, preload_report


def _create_session(path: Path, options: ort.SessionOptions, providers: list[Any], *, quiet: bool) -> ort.InferenceSession:
    # With "auto" (quiet), a CUDA provider that fails to load is expected on CPU hosts: silence
    # ONNX Runtime's multi-line error and let the caller report the fallback in one line.
    # "cuda" keeps it, since there it says why the start fails.
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise EngineError(f"cannot load {path} with ONNX Runtime: {exc}") from None
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def _check_provider(provider: str, device: str, preload_report: tuple[str, ...], *, cuda_graphs: bool) -> None:
    """The provider ONNX Runtime really uses, against what was asked for."""
    if device == "cuda" and provider != CUDA:
        for line in preload_report:  # at DEBUG otherwise; here it is the likeliest reason
            log.warning("CUDA library preload: %s", line)
        missing = f"; the library preload said: {preload_report[0]}" if preload_report else ""
        raise EngineError(
            f"--device cuda: CUDAExecutionProvider did not load (ONNX Runtime fell back to {provider}){missing}; "
            f"check the NVIDIA driver, CUDA and cuDNN libraries ({extra_hint('cuda')}), or use --device auto/cpu"
        )
    if cuda_graphs and provider != CUDA:
        raise EngineError(f"--cuda-graphs: CUDA did not load (ONNX Runtime uses {provider}); use --device cuda to see why")


@dataclass
class _Binding:
    """IO binding of one bucket: input and output buffers on the device, bound once, reused by
    every batch of this size (CUDA graphs need exactly that: the same addresses every replay)."""

    binding: Any  # ort.IOBinding
    inputs: Any  # ort.OrtValue (bucket, T, C, H, W)
    outputs: Any  # ort.OrtValue (bucket, T', C, H, W)
    run_options: Any  # ort.RunOptions


class Engine:
    """An ONNX Runtime session for one STLight model. The service calls ``run`` from a single
    worker thread (the bound buffers are shared state)."""

    def __init__(
        self,
        path: str | Path,
        device: Device = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        *,
        max_batch_size: int = 8,
        tf32: bool = False,
        cuda_graphs: bool = False,
        buckets: bool | None = None,
        io_binding: bool | None = None,
        spinning: Spinning = "run",
    ) -> None:
        """``buckets`` and ``io_binding`` default to on for CUDA, off for CPU (padding costs
        CPU time and ONNX Runtime already reads numpy input in place there); turning them on
        for CPU runs the same code path as CUDA does, which is how it is tested without a GPU."""
        self.path = Path(path)
        _check_arguments(self.path, device, spinning, max_batch_size)
        options = _session_options(intra_op_threads, inter_op_threads, spinning)
        self.intra_op_threads, self.inter_op_threads, self.spinning = intra_op_threads, inter_op_threads, spinning
        self.tf32, self.cuda_graphs = tf32, cuda_graphs
        providers, preload_report = _providers(device, tf32=tf32, cuda_graphs=cuda_graphs)
        self.session = _create_session(self.path, options, providers, quiet=device == "auto")
        self.provider: str = self.session.get_providers()[0]
        _check_provider(self.provider, device, preload_report, cuda_graphs=cuda_graphs)
        self._read_io()
        self._plan_batches(max_batch_size, buckets=buckets, io_binding=io_binding, cuda_graphs=cuda_graphs)
        self._bindings: dict[int, _Binding] = {}
        self.sha256 = file_sha256(self.path)
        self.name = self.card.preset or self.path.stem
        self._warm = threading.Event()

    def _read_io(self) -> None:
        """The model card, and the one float input and output, checked against the card's clip shape."""
        try:
            self.card = ModelCard.from_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        except ValueError as exc:
            raise EngineError(f"{self.path}: {exc}") from None
        self.spec = self.card.clip_spec
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        input_dtype, output_dtype = _NP_DTYPES.get(inputs[0].type), _NP_DTYPES.get(outputs[0].type)
        if input_dtype is None or output_dtype is None:
            raise EngineError(
                f"{self.path}: input {self.input_name!r} has type {inputs[0].type} and output {self.output_name!r} "
                f"{outputs[0].type}; expected float tensors"
            )
        self.input_dtype, self.output_dtype = input_dtype, output_dtype
        shape = inputs[0].shape  # [B, T, C, H, W]; B is a name when the batch axis is dynamic
        if len(shape) != 5 or any(
            isinstance(d, int) and d != want for d, want in zip(shape[1:], self.spec.input_shape, strict=True)
        ):
            want = ", ".join(map(str, self.spec.input_shape))
            raise EngineError(f"{self.path}: input shape {shape} does not match the model card's (B, {want})")
        # a fixed batch axis (export without a dynamic batch) is served by padding to it
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) else None

    def _plan_batches(self, max_batch_size: int, *, buckets: bool | None, io_binding: bool | None, cuda_graphs: bool) -> None:
        """Bucket sizes and IO binding: on for CUDA, off for CPU unless asked for."""
        on_cuda = self.provider == CUDA
        want_buckets = buckets if buckets is not None else on_cuda
        self.buckets: tuple[int, ...] = ()  # empty: any batch size as it comes
        if self.fixed_batch is not None:
            self.buckets = (self.fixed_batch,)
        elif want_buckets or cuda_graphs:
            self.buckets = bucket_sizes(max_batch_size)
        self.max_batch_size = max_batch_size
        self.io_binding = io_binding if io_binding is not None else on_cuda
        if cuda_graphs and not (self.io_binding and self.buckets):
            raise EngineError("--cuda-graphs needs IO binding and bucketed batch sizes (fixed shapes and addresses)")
        self._device = "cuda" if on_cuda else "cpu"

    # running -----------------------------------------------------------------------------
    def bucket_for(self, n: int) -> int:
        """The batch size a run of ``n`` clips (n <= the largest bucket) really executes at."""
        return next((b for b in self.buckets if b >= n), n)

    def run(self, clips: np.ndarray) -> np.ndarray:
        """(B, T, C, H, W) float32 in [0, 1] -> (B, T', C, H, W) float32. Raises
        :class:`~service.core.runtime.OutOfMemory` or :class:`~service.core.runtime.DeviceLost` for
        the ONNX Runtime failures the batcher answers by kind."""
        if clips.ndim != 5 or clips.shape[1:] != self.spec.input_shape:
            raise ValueError(f"expected clips of shape (B, {', '.join(map(str, self.spec.input_shape))}), got {clips.shape}")
        if not self.buckets:
            return self._run(clips)
        largest = self.buckets[-1]
        parts = [self._run_padded(clips[start : start + largest]) for start in range(0, len(clips), largest)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_padded(self, clips: np.ndarray) -> np.ndarray:
        n, bucket = len(clips), self.bucket_for(len(clips))
        if bucket != n:  # zero clips fill the bucket; their rows are cut off below
            padded = np.zeros((bucket, *clips.shape[1:]), self.input_dtype)
            padded[:n] = clips
            clips = padded
        return self._run(clips)[:n]

    def _run(self, clips: np.ndarray) -> np.ndarray:
        try:
            if self.io_binding and len(clips) in self.buckets:
                out = self._run_bound(clips)
            else:
                feed = np.ascontiguousarray(clips, dtype=self.input_dtype)
                (out,) = self.session.run([self.output_name], {self.input_name: feed})
        except Exception as exc:
            raise classify_run_error(exc) from exc
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(clips), *self.spec.output_shape):
            raise RuntimeError(f"model returned shape {out.shape}, expected {(len(clips), *self.spec.output_shape)}")
        return out

    def _run_bound(self, clips: np.ndarray) -> np.ndarray:
        bound = self._bindings.get(len(clips)) or self._bind(len(clips))
        bound.inputs.update_inplace(np.ascontiguousarray(clips, dtype=self.input_dtype))  # host -> device
        self.session.run_with_iobinding(bound.binding, bound.run_options)
        out = bound.outputs.numpy()  # CUDA: a fresh host copy; CPU: a view of the bound buffer...
        return out.copy() if self._device == "cpu" else out  # ...which the next batch overwrites

    def _bind(self, bucket: int) -> _Binding:
        """Allocate and bind this bucket's buffers (on first use, normally during warm-up)."""
        inputs = ort.OrtValue.ortvalue_from_shape_and_type([bucket, *self.spec.input_shape], self.input_dtype, self._device, 0)
        outputs = ort.OrtValue.ortvalue_from_shape_and_type([bucket, *self.spec.output_shape], self.output_dtype, self._device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, inputs)
        binding.bind_ortvalue_output(self.output_name, outputs)
        run_options = ort.RunOptions()
        if self.cuda_graphs:  # one captured graph per bucket (ids start at 1; -1 means "no graph")
            run_options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(bucket) + 1))
        self._bindings[bucket] = _Binding(binding, inputs, outputs, run_options)
        return self._bindings[bucket]

    def warm_up(self, max_batch_size: int | None = None, runs: int = 2) -> None:
        """Run every bucket size (or, without buckets, 1, 2, 4, ... ``max_batch_size``), largest
        first, so the first requests do not pay for arena growth, kernel selection, buffer
        binding or CUDA graph capture."""
        rng = np.random.default_rng(0)
        sizes = self.buckets or bucket_sizes(max_batch_size or self.max_batch_size)
        if self.cuda_graphs:  # ONNX Runtime captures a graph after a few plain runs of its id
            runs = max(runs, 3)
        for _ in range(runs):
            for size in sorted(set(sizes), reverse=True):
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
            "ort_spinning": self.spinning,
            "tf32": self.tf32 and self.provider == CUDA,
            "cuda_graphs": self.cuda_graphs,
            "io_binding": self.io_binding,
            "batch_buckets": list(self.buckets),
        }
