"""How the inference layer runs models, as plain values: the server's settings build one
:class:`ModelOptions` (``ServeSettings.model_options()``); nothing here imports ONNX Runtime, so
reading the options costs nothing at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.core.limits import MAX_ANSWER_MB, MAX_FRAMES_OUT

Device = Literal["auto", "cuda", "cpu"]
Spinning = Literal["off", "run", "on"]  # ONNX Runtime's pool threads: see service.inference.engine
# who may change what is served (Triton's --model-control-mode): nobody while serving (none), callers
# of the repository's load/unload API (explicit), or the repository folder itself, rescanned (poll)
ModelControl = Literal["none", "explicit", "poll"]


@dataclass(frozen=True)
class ModelOptions:
    """Where a server's models come from and how each version is run and batched: built once
    from the server's settings (``ServeSettings.model_options()``), which hold every default."""

    models: tuple[str, ...]  # --model [NAME=]PATH; empty: the repository's, else the shipped default
    model_repository: Path | None
    device: Device
    intra_op_threads: int  # resolved: >= 1
    inter_op_threads: int
    tf32: bool
    cuda_graphs: bool
    ort_spinning: Spinning
    max_batch_size: int
    max_delay_ms: float
    queue_size: int
    request_timeout_s: float
    warmup_runs: int
    online_budget_bytes: int = 256 << 20  # answers kept for grading (service.inference.online)
    online_ttl_s: float = 600.0
    max_frames_out: int = MAX_FRAMES_OUT  # clips x frames one request may ask for
    max_answer_mb: float = MAX_ANSWER_MB  # memory an answer may take while built, per format's cost
    model_control: ModelControl = "none"
    repository_poll_s: float = 15.0  # model_control "poll": seconds between rescans of the folder
