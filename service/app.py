"""The HTTP service: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the ONNX
model, starts the batcher and warms up in the background (``/readyz`` answers 503 until done).

decode (service.codecs) -> predict (service.batching + service.engine) -> encode (service.codecs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, codecs, horizon, video, web
from service.batching import Batcher, ClientGone
from service.engine import CPU, Engine, EngineError
from service.metrics import ServiceMetrics
from service.openapi import PREDICT_OPENAPI, PREDICT_RESPONSES, problem_doc
from service.problems import BodyLimitMiddleware, Problem, register_problem_handlers
from service.request_id import RequestIdMiddleware, annotate
from service.security import ApiKeyMiddleware, KeyStore, document_keys, key_store
from service.settings import DEFAULT_MODEL, ServeSettings

log = logging.getLogger("stlight.service")

# npy bodies and answers up to this size are decoded/encoded on the event loop: ~0.1 ms per
# 10-frame 64x64 clip, less than the two thread hops that moving them to a worker costs
INLINE_BYTES = 1 << 20

State = Literal["loading", "warming", "ready", "failed", "stopping"]


@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    engine: Engine | None = None
    batcher: Batcher | None = None
    state: State = "loading"
    error: str = ""
    # set by `stlight serve`: stop the server, so a process that cannot serve any more exits
    # non-zero and its orchestrator replaces it (in-process apps just stay not ready)
    shutdown: Callable[[], None] | None = None

    def set_state(self, state: State) -> None:
        self.state = state
        self.metrics.ready.set(1 if state == "ready" else 0)

    def fail(self, reason: str) -> None:
        """The model cannot serve any more (warm-up failed, device lost): not ready, stop."""
        if self.state == "failed":
            return
        self.error = reason
        self.set_state("failed")
        if self.shutdown:
            self.shutdown()


def resolve_model(settings: ServeSettings) -> str:
    """The ONNX file to serve: ``settings.model`` or the one shipped in the package."""
    if settings.model is not None:
        return str(settings.model)
    if DEFAULT_MODEL.is_file():
        return str(DEFAULT_MODEL)
    raise EngineError(
        f"no model given and no default model is shipped ({DEFAULT_MODEL} is missing); pass --model PATH.onnx (or set "
        "STLIGHT_MODEL)"
    )


def load_engine(settings: ServeSettings) -> Engine:
    """Create the session and log the provider ONNX Runtime really uses."""
    engine = Engine(
        resolve_model(settings),
        settings.device,
        settings.resolved_intra_op_threads,
        settings.inter_op_threads,
        max_batch_size=settings.max_batch_size,
        tf32=settings.tf32,
        cuda_graphs=settings.cuda_graphs,
        spinning=settings.ort_spinning,
    )
    fallback = (
        " (CUDA did not load; falling back to CPU; --device cuda shows why)"
        if settings.device == "auto" and engine.provider == CPU
        else ""
    )
    log.info(
        "serving %s (%s, sha256 %s) on %s%s with %d intra-op / %d inter-op threads",
        engine.name, engine.path, engine.sha256[:12], engine.provider, fallback, engine.intra_op_threads, engine.inter_op_threads,
    )  # fmt: skip
    return engine


# ---------------------------------------------------------------------------------------
# dependencies (async: FastAPI runs a plain `def` dependency in a worker thread, two hops each)
# ---------------------------------------------------------------------------------------


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


async def loaded_engine(service: ServiceDep) -> Engine:
    if service.engine is None:
        raise Problem(503, "not-ready", f"the model is not loaded yet (state: {service.state})", headers={"Retry-After": "1"})
    return service.engine


async def ready_service(service: ServiceDep) -> ServiceState:
    if service.state != "ready":
        detail = f"the model is not ready to serve (state: {service.state})" + (f": {service.error}" if service.error else "")
        raise Problem(503, "not-ready", detail, headers={"Retry-After": "1"}, state=service.state)
    return service


EngineDep = Annotated[Engine, Depends(loaded_engine)]
ReadyDep = Annotated[ServiceState, Depends(ready_service)]


# ---------------------------------------------------------------------------------------
# middleware: request metrics
# ---------------------------------------------------------------------------------------


class MetricsMiddleware:
    """Count requests by route template (not raw path: bounded label values) and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.duration.labels(route).observe(time.perf_counter() - began)


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------


async def _client_gone(request: Request, exc: Exception) -> Response:
    """Nobody reads this answer; 499 (nginx's "client closed request") shows up in the metrics."""
    return Response(status_code=499)


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has closed the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class VideoOptions:
    """How a video body is cut to one clip (query parameters ``resize`` and ``start``)."""

    resize: video.Resize = "none"
    start: int | None = None

    def check_for(self, request_type: str) -> None:
        """Refuse video options on array and image bodies rather than ignore them."""
        given = [f"{k}={v}" for k, v in (("resize", self.resize if self.resize != "none" else None), ("start", self.start)) if v]
        if given and request_type not in (*codecs.VIDEO_TYPES, codecs.MULTIPART):
            raise Problem(
                422,
                "invalid-request",
                f"{' and '.join(given)} apply to video bodies ({', '.join(codecs.VIDEO_TYPES)}), not to {request_type}",
            )


async def _read_clips(
    request: Request, request_type: str, engine: Engine, settings: ServeSettings, options: VideoOptions
) -> codecs.Clips:
    if request.headers.get("content-length") == "0":
        raise Problem(
            400,
            "empty-body",
            f"the request body is empty; expected {request_type} with {codecs.shape_text(engine.spec.input_shape)} frames",
        )
    if request_type == codecs.MULTIPART:
        try:
            form = await request.form(
                max_files=4 * engine.spec.in_frames + 16, max_fields=64, max_part_size=settings.max_body_bytes
            )
        except Problem:
            raise
        except Exception as exc:  # malformed multipart (missing boundary, broken parts...)
            raise Problem(
                400, "undecodable-multipart", f"cannot parse the multipart body: {getattr(exc, 'detail', None) or exc}"
            ) from None
        try:
            videos = form.getlist("video")
            if videos:
                if len(videos) > 1 or form.getlist("frames") or not isinstance(videos[0], UploadFile):
                    raise Problem(
                        422,
                        "missing-frames",
                        "send one video file in a part named 'video', or image files in parts named 'frames', not both",
                    )
                data = await videos[0].read()
                return await asyncio.to_thread(_decode_video, data, engine, settings, options)
            options.check_for(codecs.NPY)  # image parts: no video options
            parts = form.getlist("frames")
            if not parts:
                names = sorted(set(form.keys()))
                got = f"parts named {names}" if names else "no complete part (is the closing boundary missing?)"
                raise Problem(
                    422,
                    "missing-frames",
                    f"expected {engine.spec.in_frames} image files in parts named 'frames', in order; got {got}",
                )
            if any(not isinstance(part, UploadFile) for part in parts):
                raise Problem(422, "missing-frames", "'frames' parts must be image files (with a filename), not text fields")
            files = [(part.filename or "", await part.read()) for part in parts if isinstance(part, UploadFile)]
        finally:
            await form.close()
        return await asyncio.to_thread(codecs.decode_images, files, engine.spec)
    body = await request.body()
    if not body:
        raise Problem(
            400,
            "empty-body",
            f"the request body is empty; expected {request_type} with {codecs.shape_text(engine.spec.input_shape)} frames",
        )
    if request_type in codecs.VIDEO_TYPES:
        return await asyncio.to_thread(_decode_video, body, engine, settings, options)
    if request_type == codecs.NPY and len(body) <= INLINE_BYTES:
        return codecs.decode_npy(body, engine.spec)
    decode = codecs.decode_npy if request_type == codecs.NPY else codecs.decode_json
    return await asyncio.to_thread(decode, body, engine.spec)


def _decode_video(data: bytes, engine: Engine, settings: ServeSettings, options: VideoOptions) -> codecs.Clips:
    return codecs.decode_video(
        data, engine.spec, resize=options.resize, start=options.start, max_frames=settings.max_video_frames
    )


def create_app(settings: ServeSettings, engine: Engine | None = None, keys: KeyStore | None = None) -> FastAPI:
    """The service. Pass a loaded ``engine`` to skip loading in the lifespan, and the API ``keys``
    read from ``settings`` (the CLI does both first so that start-up errors are plain messages)."""
    service = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = engine if engine is not None else await asyncio.to_thread(load_engine, settings)
        service.engine = loaded
        batcher = Batcher(
            loaded.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_delay_ms / 1000,
            queue_size=settings.queue_size,
            timeout_s=settings.request_timeout_s,
            metrics=service.metrics,
            on_fatal=service.fail,
        )
        service.batcher = batcher
        batcher.start()
        service.set_state("warming")
        warm = asyncio.create_task(_warm_up(service), name="stlight-warm-up")
        try:
            yield
        finally:
            if service.state != "failed":  # a failed service stays failed: `stlight serve` exits 1 on it
                service.set_state("stopping")
            warm.cancel()
            await asyncio.gather(warm, return_exceptions=True)
            await batcher.stop()
            log.info("stopped")

    # FastAPIOffline: /docs loads Swagger UI from its wheel, not from a CDN (service.web serves /redoc)
    app = FastAPIOffline(
        title="STLight frame prediction",
        version=__version__,
        description=(
            "Give it past frames, get the next ones. ONNX Runtime with dynamic batching; every error is "
            "application/problem+json (RFC 9457)."
        ),
        lifespan=lifespan,
        static_url=web.DOCS_STATIC_URL,
        redoc_url=None,
    )
    app.state.service = service
    register_problem_handlers(app)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(ClientDisconnect, _client_gone)  # gone while the body was streaming in
    # the last added runs first: request id -> metrics -> API key (before any body is read) -> body limit
    keys = keys if keys is not None else key_store(settings)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, store=keys, metrics_auth=settings.metrics_auth)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(RequestIdMiddleware, log_requests=settings.access_log)
    document_keys(app, keys, settings.metrics_auth)

    @app.post(
        "/predict",
        openapi_extra=PREDICT_OPENAPI,
        responses=PREDICT_RESPONSES,
        response_class=Response,
        summary="Predict the next frames",
    )
    async def predict(
        request: Request,
        ready: ReadyDep,
        horizon_frames: Annotated[
            int | None,
            Query(
                alias="horizon",
                ge=1,
                description="frames to predict; beyond T' the model is rolled forward on its own predictions (errors compound)",
            ),
        ] = None,
        resize: Annotated[
            video.Resize,
            Query(description="video bodies: none (frames must fit the model), fit (scale), crop (scale, cut the centre)"),
        ] = "none",
        start: Annotated[
            int | None, Query(ge=0, description="video bodies: first frame of the T used (default: the last T frames)")
        ] = None,
        include_input: Annotated[
            bool, Query(description="GIF / MP4 / WebM answers: show the input frames before the prediction")
        ] = True,
    ) -> Response:
        """Accepts npy, JSON, multipart images or a video; answers npy, JSON, a zip of PNGs, an
        animated GIF or an MP4 / WebM video."""
        engine, batcher = ready.engine, ready.batcher
        assert engine is not None and batcher is not None
        annotate(model=engine.name)  # for the access log line
        request_type = codecs.media_type(request.headers.get("content-type"))
        if request_type not in codecs.REQUEST_TYPES:
            got = f"Content-Type {request_type!r}" if request_type else "no Content-Type"
            raise Problem(415, "unsupported-media-type", f"got {got}; send {', '.join(codecs.REQUEST_TYPES)}")
        options = VideoOptions(resize, start)
        options.check_for(request_type)
        if horizon_frames is not None and horizon_frames > ready.settings.max_horizon:
            raise Problem(
                422,
                "horizon-too-far",
                f"horizon={horizon_frames} is beyond this server's limit of {ready.settings.max_horizon} frames "
                "(STLIGHT_MAX_HORIZON)",
            )
        answer_type = codecs.choose_answer_type(request.headers.get("accept"), request_type)
        clips = await _read_clips(request, request_type, engine, ready.settings, options)
        annotate(batch=len(clips.frames))
        codecs.check_answerable(answer_type, engine.spec.channels, len(clips.frames), clips.batched)

        async def step(window: Any) -> Any:  # each rollout step queues through the batcher like any request
            return await batcher.predict(window, lambda: _wait_for_disconnect(request))  # (B, T', C, H, W)

        frames = horizon_frames or engine.spec.out_frames
        prediction = await horizon.rollout_async(step, clips.frames, frames, engine.spec.out_frames)  # (B, N, C, H, W)
        if answer_type == codecs.NPY and prediction.nbytes <= INLINE_BYTES:
            body = codecs.encode(answer_type, clips, prediction, include_input=include_input)
        else:  # JSON, images and large arrays take longer than a thread hop
            body = await asyncio.to_thread(codecs.encode, answer_type, clips, prediction, include_input=include_input)
        headers = {"Content-Disposition": 'attachment; filename="prediction.zip"'} if answer_type == codecs.ZIP else None
        return Response(body, media_type=answer_type, headers=headers)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz", summary="Readiness: 200 once the model is warmed up", responses={503: problem_doc("Loading or warming up")}
    )
    async def readyz(ready: ReadyDep) -> dict[str, Any]:
        assert ready.engine is not None
        return {"status": "ready", "provider": ready.engine.provider, "model": ready.engine.name}

    @app.get("/v1/model", summary="The served model: shapes, provider, batching, sha256 and model card")
    async def model_info(service: ServiceDep, engine: EngineDep) -> dict[str, Any]:
        return {
            **engine.describe(),
            "max_batch_size": service.settings.max_batch_size,
            "max_delay_ms": service.settings.max_delay_ms,
            "state": service.state,
            "card": engine.card.to_dict(),
        }

    @app.get(
        "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
    )
    async def metrics(service: ServiceDep) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    web.install(app)
    return app


async def _warm_up(service: ServiceState) -> None:
    engine, batcher, settings = service.engine, service.batcher, service.settings
    assert engine is not None and batcher is not None
    began = time.perf_counter()
    try:
        await batcher.run_in_worker(lambda: engine.warm_up(settings.max_batch_size, settings.warmup_runs))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        batcher.fail(f"warm-up failed: {type(exc).__name__}: {exc}")  # logs once, then service.fail
        return
    service.set_state("ready")
    sizes = engine.buckets or "1, 2, 4, ... " + str(settings.max_batch_size)
    log.info(
        "ready on %s: warm-up (%d runs at batch sizes %s) took %.2f s",
        engine.provider,
        settings.warmup_runs,
        ", ".join(map(str, sizes)) if isinstance(sizes, tuple) else sizes,
        time.perf_counter() - began,
    )
