"""ONNX Runtime's providers and run-time errors, as every part of the project uses them: the
CUDA provider options (``stlight export`` validates with the same ones ``stlight serve`` runs
with), the CUDA library preload, and the sorting of run failures into what the batcher answers
by kind. No HTTP, no torch; onnxruntime is imported only where it is called.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os

log = logging.getLogger("stlight.engine")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_cpus() -> int:
    """CPUs this process may run on (container/affinity aware), at least 1: the default number
    of ONNX Runtime's intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return max(1, os.cpu_count() or 1)


class OutOfMemory(RuntimeError):
    """The run could not allocate memory for this batch; smaller or later batches may fit."""


class DeviceLost(RuntimeError):
    """The device is in an error state that every later run would repeat (a sticky CUDA error):
    only a new process recovers."""


def cuda_provider_options(*, tf32: bool = False, cuda_graphs: bool = False) -> dict[str, str]:
    """The CUDA provider options of every session this project creates: ``stlight export``'s
    validation and ``stlight serve`` alike, so the file served is the file validated.

    - ``use_tf32`` off unless asked: TF32 convolutions move outputs by ~5e-4 on the presets,
      several times the validation tolerance.
    - ``cudnn_conv_algo_search`` HEURISTIC: the exhaustive search costs seconds per new shape.
    - ``arena_extend_strategy`` kSameAsRequested: the default (kNextPowerOfTwo) doubles each
      extension, so a long-lived server's arena grows far past what its largest batch needs.
    - ``enable_cuda_graph``: only with fixed input/output addresses (the engine's IO binding).
    """
    return {
        "use_tf32": "1" if tf32 else "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "enable_cuda_graph": "1" if cuda_graphs else "0",
    }


@functools.cache
def preload_cuda_libraries() -> tuple[str, ...]:
    """Load CUDA and cuDNN from the nvidia-* wheels of the ``cuda`` extra (what the Docker image
    installs), which the CUDA provider does not find on its own (they are not on the library
    path). Quiet where they are absent: the provider then searches the system as usual.

    Returns what the preload said (one line per library it could not load): with ``--device
    auto`` that is noise on a CPU host, with ``--device cuda`` it is often the best reason."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        return ()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # it print()s each library it cannot load
            preload()
    except Exception as exc:  # never let this stop the CPU fallback
        print(f"onnxruntime.preload_dlls failed: {exc}", file=printed)
    lines = tuple(line.strip() for line in printed.getvalue().splitlines() if line.strip())
    for line in lines:
        log.debug("onnxruntime.preload_dlls: %s", line)
    return lines


# ONNX Runtime raises one exception type for everything at run time; its message tells the kind.
# An allocation failure is specific to this batch; the "sticky" CUDA errors corrupt the context,
# and every later call on it fails the same way.
_OUT_OF_MEMORY = (
    "failed to allocate memory",
    "out of memory",
    "alloc_failed",
    "cudaerrormemoryallocation",
    "bad_alloc",
    "bad allocation",
)
_DEVICE_LOST = (
    "cuda failure",
    "cuda error",
    "cudaerror",
    "illegal memory access",
    "illegal address",
    "unspecified launch failure",
    "execution_failed",
    "device-side assert",
    "uncorrectable ecc",
)


def classify_run_error(exc: Exception) -> Exception:
    """``exc`` as the batcher should treat it: OutOfMemory, DeviceLost, or itself."""
    text = str(exc).lower()
    if any(needle in text for needle in _OUT_OF_MEMORY):
        return OutOfMemory(str(exc).strip())
    if any(needle in text for needle in _DEVICE_LOST):
        return DeviceLost(str(exc).strip())
    return exc
