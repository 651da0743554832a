"""``stlight serve``: flags (each also an ``STLIGHT_*`` variable; a flag wins), then uvicorn.

Imported to build the parser, so heavy imports (onnxruntime, fastapi) wait for the handler.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from service.core.errors import UserError

if TYPE_CHECKING:  # imported where used: building the parser must stay light
    from service.server.settings import ServeSettings


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
            "a flag given on the command line wins; API keys themselves only as STLIGHT_API_KEYS (comma-separated), "
            "so they stay out of process listings. "
            "A process whose warm-up fails or whose GPU hits a sticky CUDA error exits with status 1 so "
            "its orchestrator replaces it. See docs/operations.md for keys, request ids, logs and draining."
        ),
    )
    _add_setting_flags(parser)
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log verbosity (default info)"
    )
    parser.set_defaults(handler=run_serve)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServeSettings field, so a default or help text is written once, in the settings.

    Flags default to None: only the ones given override the STLIGHT_* environment."""
    from service.server.settings import ServeSettings  # pydantic only: no fastapi or onnxruntime

    for name, field in ServeSettings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        spec = extra.get("cli", {})
        if spec is False:
            continue
        options: dict[str, Any] = dict(spec) if isinstance(spec, dict) else {}
        flag = options.pop("flag", "--" + name.replace("_", "-"))
        env = options.pop("env", f"STLIGHT_{name.upper()}")
        text = options.pop("help", None) or f"{field.description} (default {field.default})"
        kind: dict[str, Any] = {}
        if field.annotation is bool:
            kind = {"action": "store_const", "const": True}
        elif get_origin(field.annotation) is Literal:
            kind = {"choices": get_args(field.annotation)}
        elif field.annotation in (int, float):
            kind = {"type": field.annotation}
        parser.add_argument(flag, dest=name, default=None, help=f"{text} [{env}]", **{**kind, **options})


def _given(args: argparse.Namespace) -> dict[str, Any]:
    from service.server.settings import ServeSettings

    return {name: getattr(args, name) for name in ServeSettings.model_fields if getattr(args, name, None) is not None}


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Environment first, then the flags that were given."""
    from pydantic import ValidationError

    from service.server.settings import ServeSettings

    given = _given(args)
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
            state = self.config.app.state.service  # type: ignore[union-attr]
            if state.grpc is not None:
                state.grpc.begin_drain()
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
