"""``stlight serve``: flags (each also an ``STLIGHT_*`` variable; a flag wins), then uvicorn.

Imported to build the parser, so heavy imports (onnxruntime, fastapi) wait for the handler.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Any

from service.core.errors import UserError

if TYPE_CHECKING:  # imported where used: building the parser must stay light
    from service.server.settings import ServeSettings

# flag -> settings field; flags default to None so only the ones given override the environment
_FLAGS = (
    "model", "model_repository", "host", "port", "grpc_port", "device", "max_batch_size", "max_delay_ms", "max_body_mb", "tf32",
    "cuda_graphs",
    "api_key_file", "metrics_auth", "log_format", "access_log",
)  # fmt: skip


def add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve an ONNX model over HTTP and gRPC (FastAPI + ONNX Runtime, dynamic batching)",
        description=(
            "Serve exported STLight ONNX models: POST /predict, GET /healthz, /readyz, /v1/model, /v1/models, /metrics, /docs, "
            "and the Open Inference Protocol (KServe V2, what tritonclient speaks) under /v2, with Triton's binary tensor, "
            "model repository (load/unload while serving) and model configuration extensions; the same protocol over gRPC "
            "(tritonclient.grpc) on --grpc-port, with gRPC health checking and reflection. "
            "Every flag can also be set as an environment variable STLIGHT_<FLAG> (e.g. STLIGHT_MAX_BATCH_SIZE=16); "
            "a flag given on the command line wins. Further settings only as variables: STLIGHT_QUEUE_SIZE (256), "
            "STLIGHT_REQUEST_TIMEOUT_S (30), STLIGHT_INTRA_OP_THREADS (0 = all CPUs), STLIGHT_INTER_OP_THREADS (1), "
            "STLIGHT_WARMUP_RUNS (2), STLIGHT_ORT_SPINNING (run: ONNX Runtime's threads spin within a run; off: never; "
            "on: also between runs), STLIGHT_API_KEYS (comma-separated API keys), STLIGHT_DRAIN_TIMEOUT_S (30: on "
            "SIGTERM, how long requests already received may take before they are cancelled), STLIGHT_KEEP_ALIVE_S "
            "(75: idle connections are closed after this; keep it above the idle timeout of a proxy in front), "
            "STLIGHT_MAX_VIDEO_FRAMES (10000 frames decoded per video body), STLIGHT_MAX_HORIZON (1000: the largest "
            "?horizon=). A process whose warm-up fails or whose GPU hits a sticky CUDA error exits with status 1 so "
            "its orchestrator replaces it. See docs/operations.md for keys, request ids, logs and draining."
        ),
    )
    parser.add_argument(
        "--model",
        metavar="[NAME=]PATH",
        action="append",
        help=(
            "ONNX file from `stlight export`, served as model NAME (default: the file's stem); repeat for more models; "
            "the first is the default of /predict (default: the model shipped in the package, named 'default', "
            "unless --model-repository is given). PATH 'builtin' is that shipped model: --model mine.onnx --model builtin "
            "serves yours (the default of /predict) beside it [STLIGHT_MODEL, several separated by ':']"
        ),
    )
    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        help=(
            "serve every model in DIR: DIR/NAME.onnx (version 1) and DIR/NAME/VERSION/model.onnx (Triton's layout, every "
            "version, the highest is the default); a file that fails to load is reported and the others are served; "
            "POST /v2/repository/models/NAME/load and .../unload load and unload models while serving "
            "[STLIGHT_MODEL_REPOSITORY]"
        ),
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces) [STLIGHT_HOST]")
    parser.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default 8000) [STLIGHT_PORT]")
    parser.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help="TCP port of the Open Inference Protocol over gRPC (what tritonclient.grpc and KServe's gRPC clients speak), "
        "with gRPC health checking and reflection, on the same --host; 0 turns gRPC off (default 8001) [STLIGHT_GRPC_PORT]",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto (the default): CUDA when it really loads, else CPU; cpu; cuda: fail at start unless CUDA loads "
        "[STLIGHT_DEVICE]",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        metavar="N",
        help="most clips per session.run; 1 turns batching off (default 8) [STLIGHT_MAX_BATCH_SIZE]",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        metavar="MS",
        help="extra wait for more clips after the first; 0 (the default) runs at once and batches what gathered "
        "while the previous batch ran [STLIGHT_MAX_DELAY_MS]",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        metavar="MB",
        help="largest request body in MiB; larger ones get 413 (default 64) [STLIGHT_MAX_BODY_MB]",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        default=None,
        help="CUDA: allow TF32 math (faster on Ampere and newer; outputs move by ~5e-4, more than `stlight export` "
        "validated with TF32 off; shown in /v1/model) [STLIGHT_TF32]",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="CUDA: capture one CUDA graph per batch-size bucket at warm-up and replay it (less launch overhead "
        "for small models) [STLIGHT_CUDA_GRAPHS]",
    )
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="API keys, one a line (# comments); re-read on SIGHUP or when the file changes. With it or STLIGHT_API_KEYS, "
        "every route but /healthz, /readyz, /v2/health/* (and the page and docs) needs 'Authorization: Bearer KEY' or "
        "'X-API-Key: KEY' [STLIGHT_API_KEY_FILE]",
    )
    parser.add_argument(
        "--metrics-auth",
        action="store_const",
        const=True,
        help="/metrics needs an API key too (default: open to scrapers, like the probes) [STLIGHT_METRICS_AUTH]",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines (the default) or one JSON object per line with time, level, request_id, route, status, "
        "duration_ms, model, batch; uvicorn's lines follow it [STLIGHT_LOG_FORMAT]",
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_const",
        const=False,
        help="no log line per request (default: one, with its request id) [STLIGHT_ACCESS_LOG=false]",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log verbosity (default info)"
    )
    parser.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Environment first, then the flags that were given."""
    from pydantic import ValidationError

    from service.server.settings import ServeSettings

    given = {name: getattr(args, name) for name in _FLAGS if getattr(args, name, None) is not None}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid settings (flags or STLIGHT_* variables): {problems}") from None


def _check_free(host: str, port: int) -> None:
    """A one-line error, before the models load, when the gRPC port is taken (the lifespan that
    binds it would fail with a traceback)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise UserError(
                f"--grpc-port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                "is another server using it? Pick another port, or 0 to turn gRPC off"
            ) from None


def _uvicorn_server() -> type:
    """uvicorn's server, starting the gRPC server's drain when its own begins (SIGTERM): both
    protocols refuse new work and finish what they hold side by side, not one after the other."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            service = self.config.app.state.service  # type: ignore[union-attr]
            if service.grpc is not None:
                service.grpc.begin_drain()
            await super().shutdown(sockets)

    return Server


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    from service.server.logging_setup import configure

    configure(settings.log_format, args.log_level)
    import uvicorn

    from service.inference.engine import EngineError
    from service.server.app import create_app
    from service.server.security import KeyFileError, key_store, warn_if_open

    try:
        keys = key_store(settings)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    warn_if_open(settings.host, keys)
    from service.inference.metrics import ServiceMetrics
    from service.inference.repository import Repository

    if settings.grpc_port:
        _check_free(settings.host, settings.grpc_port)
    try:
        # before uvicorn starts, so a bad --model file or --device cuda fails as one line
        repository = Repository(settings.model_options(), ServiceMetrics())
    except EngineError as exc:
        raise UserError(str(exc)) from None
    app = create_app(settings, repository=repository, keys=keys)
    # Drain: on SIGTERM/SIGINT uvicorn closes the listening socket (new connections are refused),
    # lets every request already received finish (in flight or queued for the batcher) for up to
    # drain_timeout_s, then runs the lifespan shutdown. log_config=None: our handler formats
    # uvicorn's lines too; access_log=False: service.server.request_id writes a richer line per request.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=None,
        # uvicorn waits with asyncio.wait_for and call_later, which take float seconds; its annotations say int
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        access_log=False,
    )
    server = _uvicorn_server()(config)
    service_state = app.state.service
    service_state.shutdown = lambda: setattr(server, "should_exit", True)
    # uvicorn re-raises the SIGTERM/SIGINT it caught once shutdown is done; with this handler in
    # place that re-raise is a no-op, so a graceful stop exits 0 instead of "killed by signal"
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service_state.state == "failed":
        print(f"stlight serve: stopped, the model cannot serve: {service_state.error}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
