"""The service's settings: one pydantic-settings class, read from ``STLIGHT_*`` environment
variables; ``stlight serve`` flags override them by passing values to the constructor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.limits import MAX_HORIZON, MAX_VIDEO_FRAMES
from service.core.runtime import available_cpus
from service.inference.options import ModelOptions


class ServeSettings(BaseSettings):
    """Everything ``stlight serve`` can be told; each field is also ``STLIGHT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="STLIGHT_", extra="forbid", frozen=True)

    # NoDecode: STLIGHT_MODEL is a plain path (or several, os.pathsep-separated), not a JSON list
    model: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="ONNX files to serve, each PATH or NAME=PATH (PATH 'builtin': the model shipped in the package); "
        "default: the shipped model alone",
    )
    model_repository: Path | None = Field(
        None, description="folder of models: NAME.onnx (version 1) or NAME/VERSION/model.onnx (Triton's layout)"
    )
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="TCP port of the Open Inference Protocol over gRPC (Triton's and KServe's 8001); 0: off"
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when it really loads, else CPU")
    max_batch_size: int = Field(8, ge=1, le=1024, description="most clips coalesced into one session.run")
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="extra wait for more clips after the first; 0: run at once, batching what gathered during the last run",
    )
    max_body_mb: float = Field(64.0, gt=0, description="largest accepted request body in MiB (413 beyond, while streaming)")
    queue_size: int = Field(256, ge=1, description="requests waiting for inference before new ones get 503")
    request_timeout_s: float = Field(30.0, gt=0, description="a request not answered within this gets 504")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads inside one operator; 0: every available CPU")
    inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime threads across operators (sequential execution: 1)")
    tf32: bool = Field(False, description="allow TF32 on CUDA (faster on Ampere+, outputs move by ~5e-4; not what was validated)")
    cuda_graphs: bool = Field(False, description="capture one CUDA graph per batch-size bucket (CUDA only)")
    ort_spinning: Literal["off", "run", "on"] = Field(
        "run",
        description="ONNX Runtime's pool threads: spin between operators of a run (run), also after it (on), never (off)",
    )
    warmup_runs: int = Field(2, ge=0, description="session.run calls at each batch-size bucket before /readyz says ready")
    max_video_frames: int = Field(MAX_VIDEO_FRAMES, ge=1, description="most frames decoded from one video body (422 beyond)")
    max_horizon: int = Field(MAX_HORIZON, ge=1, description="largest ?horizon= (frames predicted by rollout; 422 beyond)")
    # operations (service.server.security, service.server.request_id, service.server.logging_setup; docs/operations.md)
    api_keys: SecretStr = Field(SecretStr(""), description="comma-separated keys; any set: routes but the probes need one")
    api_key_file: Path | None = Field(None, description="file of keys, one a line; re-read on SIGHUP or when it changes")
    metrics_auth: bool = Field(False, description="/metrics needs a key too (default: open, like the probes)")
    log_format: Literal["text", "json"] = Field("text", description="text lines, or one JSON object per line")
    access_log: bool = Field(True, description="one log line per request (id, route, status, duration, model, batch)")
    drain_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests already received may take")
    # longer than the idle timeout of the proxies in front (AWS ALB 60 s, nginx 60-75 s): a server
    # closing an idle connection first races the proxy's next request on it, which then fails (502)
    keep_alive_s: float = Field(75.0, gt=0, description="idle keep-alive connections are closed after this")

    online_budget_mb: float = Field(
        256.0, ge=0, description="memory for predictions kept until their true frames are posted to /v1/feedback (0: off)"
    )
    online_ttl_s: float = Field(600.0, gt=0, description="a kept prediction not graded within this is dropped (counted expired)")

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, (str, Path)):
            return tuple(part for part in str(value).split(os.pathsep) if part)
        return value

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def resolved_intra_op_threads(self) -> int:
        return self.intra_op_threads or available_cpus()

    def model_options(self) -> ModelOptions:
        """What the model repository needs of these settings (it never sees the rest)."""
        return ModelOptions(
            models=self.model,
            model_repository=self.model_repository,
            device=self.device,
            intra_op_threads=self.resolved_intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            tf32=self.tf32,
            cuda_graphs=self.cuda_graphs,
            ort_spinning=self.ort_spinning,
            max_batch_size=self.max_batch_size,
            max_delay_ms=self.max_delay_ms,
            queue_size=self.queue_size,
            request_timeout_s=self.request_timeout_s,
            warmup_runs=self.warmup_runs,
            online_budget_bytes=int(self.online_budget_mb * 1024 * 1024),
            online_ttl_s=self.online_ttl_s,
        )
