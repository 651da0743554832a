"""The service's settings: one pydantic-settings class, read from ``STLIGHT_*`` environment
variables; ``stlight serve`` flags override them by passing values to the constructor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.limits import (
    DECODE_TIMEOUT_S,
    MAX_ANSWER_MB,
    MAX_DECODED_PIXELS,
    MAX_FRAMES_OUT,
    MAX_HORIZON,
    MAX_PIXELS,
    MAX_VIDEO_FRAMES,
    DecodeLimits,
)
from service.core.runtime import available_cpus
from service.inference.options import ModelControl, ModelOptions
from service.server.scopes import parse_restrictions


class ServeSettings(BaseSettings):
    """Everything ``stlight serve`` can be told; each field is also ``STLIGHT_<FIELD>`` and a flag.

    ``stlight serve`` builds its flags from these fields (service.cli.serve): ``--field-name``, the
    type and choices from the annotation, the help from the description plus the default. A field's
    ``json_schema_extra={"cli": {...}}`` overrides any of that (``flag``, ``help``, ``env`` and any
    argparse keyword); ``{"cli": False}`` keeps a setting off the command line (a secret).
    """

    model_config = SettingsConfigDict(env_prefix="STLIGHT_", extra="forbid", frozen=True)

    # NoDecode: STLIGHT_MODEL is a plain path (or several, os.pathsep-separated), not a JSON list
    model: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        json_schema_extra={
            "cli": {
                "metavar": "[NAME=]PATH",
                "action": "append",
                "help": (
                    "ONNX file from `stlight export`, served as model NAME (default: the file's stem); repeat for more models; "
                    "the first is the default of /predict (default: the model shipped in the package, named 'default', "
                    "unless --model-repository is given). PATH 'builtin' is that shipped model: "
                    "--model mine.onnx --model builtin serves yours (the default of /predict) beside it"
                ),
                "env": "STLIGHT_MODEL, several separated by ':'",
            }
        },
        description="ONNX files to serve, each PATH or NAME=PATH (PATH 'builtin': the model shipped in the package); "
        "default: the shipped model alone",
    )
    model_repository: Path | None = Field(
        None,
        json_schema_extra={
            "cli": {
                "metavar": "DIR",
                "help": (
                    "serve every model in DIR: DIR/NAME.onnx (version 1) and DIR/NAME/VERSION/model.onnx (Triton's layout, every "
                    "version, the highest is the default); a file that fails to load is reported and the others are served; "
                    "POST /v2/repository/models/NAME/load and .../unload load and unload models while serving "
                    "(with --model-control explicit)"
                ),
            }
        },
        description="folder of models: NAME.onnx (version 1) or NAME/VERSION/model.onnx (Triton's layout)",
    )
    model_control: ModelControl = Field(
        "none",
        json_schema_extra={
            "cli": {
                "help": (
                    "who may change what is served while the server runs: none (the default) refuses the repository's "
                    "load/unload calls (403, over REST and gRPC; the index stays readable); explicit allows them; poll "
                    "follows --model-repository instead, rescanning it every --repository-poll-s: a new or changed version "
                    "serves once it is loaded and warm, a removed model is unloaded, a file that fails leaves the one "
                    "before serving"
                )
            }
        },
        description="who may change what is served: none, explicit (load/unload calls), poll (the folder is rescanned)",
    )
    repository_poll_s: float = Field(
        15.0,
        gt=0,
        json_schema_extra={
            "cli": {
                "metavar": "S",
                "help": "with --model-control poll: seconds between rescans of --model-repository (default 15)",
            }
        },
        description="with model_control poll: seconds between rescans of the repository folder",
    )
    host: str = Field(
        "127.0.0.1",
        json_schema_extra={"cli": {"help": "address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)"}},
        description="address to bind",
    )
    port: int = Field(
        8000,
        ge=0,
        le=65535,
        json_schema_extra={"cli": {"help": "TCP port; 0 picks a free one (default 8000)"}},
        description="TCP port (0: any free port)",
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        json_schema_extra={
            "cli": {
                "metavar": "PORT",
                "help": (
                    "TCP port of the Open Inference Protocol over gRPC (what tritonclient.grpc and KServe's gRPC clients speak), "
                    "with gRPC health checking and reflection, on the same --host; 0 turns gRPC off (default 8001)"
                ),
            }
        },
        description="TCP port of the Open Inference Protocol over gRPC (Triton's and KServe's 8001); 0: off",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        json_schema_extra={
            "cli": {
                "choices": ["auto", "cpu", "cuda"],
                "help": ("auto (the default): CUDA when it really loads, else CPU; cpu; cuda: fail at start unless CUDA loads"),
            }
        },
        description="auto: CUDA when it really loads, else CPU",
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        json_schema_extra={"cli": {"metavar": "N", "help": "most clips per session.run; 1 turns batching off (default 8)"}},
        description="most clips coalesced into one session.run",
    )
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        json_schema_extra={
            "cli": {
                "metavar": "MS",
                "help": (
                    "extra wait for more clips after the first; 0 (the default) runs at once and batches what gathered "
                    "while the previous batch ran"
                ),
            }
        },
        description="extra wait for more clips after the first; 0: run at once, batching what gathered during the last run",
    )
    max_body_mb: float = Field(
        64.0,
        gt=0,
        json_schema_extra={"cli": {"metavar": "MB", "help": "largest request body in MiB; larger ones get 413 (default 64)"}},
        description="largest accepted request body in MiB (413 beyond, while streaming)",
    )
    queue_size: int = Field(256, ge=1, description="requests waiting for inference before new ones get 503")
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="an inference request not answered within this, from its first byte (body, decode, every rollout "
        "step, encode), gets 504",
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads inside one operator; 0: every available CPU")
    inter_op_threads: int = Field(1, ge=1, description="ONNX Runtime threads across operators (sequential execution: 1)")
    tf32: bool = Field(
        False,
        json_schema_extra={
            "cli": {
                "help": (
                    "CUDA: allow TF32 math (faster on Ampere and newer; outputs move by ~5e-4, more than `stlight export` "
                    "validated with TF32 off; shown in /v1/model)"
                )
            }
        },
        description="allow TF32 on CUDA (faster on Ampere+, outputs move by ~5e-4; not what was validated)",
    )
    cuda_graphs: bool = Field(
        False,
        json_schema_extra={
            "cli": {
                "help": (
                    "CUDA: capture one CUDA graph per batch-size bucket at warm-up and replay it (less launch overhead "
                    "for small models)"
                )
            }
        },
        description="capture one CUDA graph per batch-size bucket (CUDA only)",
    )
    ort_spinning: Literal["off", "run", "on"] = Field(
        "run",
        description="ONNX Runtime's pool threads: spin between operators of a run (run), also after it (on), never (off)",
    )
    warmup_runs: int = Field(2, ge=0, description="session.run calls at each batch-size bucket before /readyz says ready")
    max_video_frames: int = Field(MAX_VIDEO_FRAMES, ge=1, description="most frames decoded from one video body (422 beyond)")
    max_frame_pixels: int = Field(
        MAX_PIXELS, ge=1, description="most pixels of one decoded video frame or GIF canvas, W x H (422 beyond)"
    )
    max_decoded_pixels: int = Field(
        MAX_DECODED_PIXELS, ge=1, description="most pixels decoded for one video body, every frame counted (422 beyond)"
    )
    decode_timeout_s: float = Field(
        DECODE_TIMEOUT_S, gt=0, description="most wall-clock seconds decoding one video body may take (422 beyond)"
    )
    codec_workers: int = Field(
        0, ge=0, description="threads that decode bodies and encode answers, apart from inference; 0: one per CPU"
    )
    codec_queue: int = Field(
        8, ge=0, description="decodes/encodes that may wait for a codec worker; beyond, 503 with Retry-After"
    )
    max_horizon: int = Field(MAX_HORIZON, ge=1, description="largest ?horizon= (frames predicted by rollout; 422 beyond)")
    max_frames_out: int = Field(
        MAX_FRAMES_OUT, ge=1, description="most frames one request may be answered, clips x horizon (413 beyond)"
    )
    max_answer_mb: float = Field(
        MAX_ANSWER_MB,
        gt=0,
        description="most memory an answer may take while it is built, 4 bytes a value for npy/binary tensors, 16 for "
        "zip/GIF/MP4/WebM, 48 for JSON (413 beyond)",
    )
    # operations (service.server.security, service.server.request_id, service.server.logging_setup; docs/operations.md)
    api_keys: SecretStr = Field(
        SecretStr(""),
        json_schema_extra={"cli": False},
        description="comma-separated keys; any set: routes but the probes need one",
    )
    api_key_file: Path | None = Field(
        None,
        json_schema_extra={
            "cli": {
                "metavar": "FILE",
                "help": (
                    "API keys, one a line (# comments): KEY (may infer) or NAME:KEY:SCOPES (infer, repository, metrics, "
                    "admin); re-read on SIGHUP or when the file changes. With it or STLIGHT_API_KEYS, "
                    "every route but /healthz, /readyz, /v2/health/* (and the page and docs) needs "
                    "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
                ),
            }
        },
        description="file of keys, one a line; re-read on SIGHUP or when it changes",
    )
    restricted_api: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        json_schema_extra={
            "cli": {
                "metavar": "GROUP=SCOPE",
                "action": "append",
                "help": (
                    "with API keys: the scope a key needs for a route group (repeatable). Groups: inference (/predict, "
                    "/v1, /v2 models and infer), repository (/v2/repository/*: index, load, unload), metrics (/metrics, "
                    "with --metrics-auth); scopes: infer, repository, metrics, admin (admin passes every group). "
                    "Default: inference=infer, repository=repository, metrics=metrics; e.g. repository=admin"
                ),
                "env": "STLIGHT_RESTRICTED_API, comma-separated",
            }
        },
        description="GROUP=SCOPE: the scope a key needs for a route group (inference, repository, metrics)",
    )
    metrics_auth: bool = Field(
        False,
        json_schema_extra={"cli": {"help": "/metrics needs an API key too (default: open to scrapers, like the probes)"}},
        description="/metrics needs a key too (default: open, like the probes)",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        json_schema_extra={
            "cli": {
                "help": (
                    "text lines (the default) or one JSON object per line with time, level, request_id, route, status, "
                    "duration_ms, model, batch; uvicorn's lines follow it"
                )
            }
        },
        description="text lines, or one JSON object per line",
    )
    access_log: bool = Field(
        True,
        json_schema_extra={
            "cli": {
                "flag": "--no-access-log",
                "action": "store_const",
                "const": False,
                "env": "STLIGHT_ACCESS_LOG=false",
                "help": "no log line per request (default: one, with its request id)",
            }
        },
        description="one log line per request (id, route, status, duration, model, batch)",
    )
    drain_timeout_s: float = Field(30.0, gt=0, description="on SIGTERM, how long requests already received may take")
    # longer than the idle timeout of the proxies in front (AWS ALB 60 s, nginx 60-75 s): a server
    # closing an idle connection first races the proxy's next request on it, which then fails (502)
    keep_alive_s: float = Field(75.0, gt=0, description="idle keep-alive connections are closed after this")

    online_budget_mb: float = Field(
        256.0, ge=0, description="memory for predictions kept until their true frames are posted to /v1/feedback (0: off)"
    )
    online_ttl_s: float = Field(600.0, gt=0, description="a kept prediction not graded within this is dropped (counted expired)")

    @field_validator("restricted_api", mode="before")
    @classmethod
    def _split_restrictions(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part for part in value.split(",") if part.strip())
        if isinstance(value, (list, tuple)):
            parse_restrictions(str(item) for item in value)  # a ValueError names the bad item
        return value

    def restrictions(self) -> dict[str, str]:
        """Route group -> the scope a key needs for it."""
        return parse_restrictions(self.restricted_api)

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

    def decode_limits(self) -> DecodeLimits:
        """What decoding one video body may cost (service.core.video checks them frame by frame)."""
        return DecodeLimits(self.max_video_frames, self.max_frame_pixels, self.max_decoded_pixels, self.decode_timeout_s)

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
            max_frames_out=self.max_frames_out,
            max_answer_mb=self.max_answer_mb,
            online_budget_bytes=int(self.online_budget_mb * 1024 * 1024),
            online_ttl_s=self.online_ttl_s,
            model_control=self.model_control,
            repository_poll_s=self.repository_poll_s,
        )
