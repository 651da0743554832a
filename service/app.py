"""The HTTP service: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the models
(:mod:`service.repository`), starts a batcher per model and warms them up in the background
(``/readyz`` answers 503 until done). ``/v2/...``: the Open Inference Protocol (:mod:`service.v2`).

decode (service.codecs) -> predict (service.batching + service.engine) -> encode (service.codecs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, codecs, v2, video, web
from service.batching import ClientGone
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.openapi import PREDICT_OPENAPI, PREDICT_RESPONSES, problem_doc
from service.problems import BodyLimitMiddleware, Problem, register_problem_handlers
from service.repository import Repository
from service.request_id import RequestIdMiddleware, annotate
from service.security import ApiKeyMiddleware, KeyStore, document_keys, key_store
from service.settings import ServeSettings

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

log = logging.getLogger("stlight.service")

# npy bodies and answers up to this size are decoded/encoded on the event loop: ~0.1 ms per
# 10-frame 64x64 clip, less than the two thread hops that moving them to a worker costs
INLINE_BYTES = 1 << 20

State = Literal["serving", "failed"]


@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    repository: Repository | None = None
    state: State = "serving"
    error: str = ""
    # set by `stlight serve`: stop the server, so a process that cannot serve any more exits
    # non-zero and its orchestrator replaces it (in-process apps just stay not ready)
    shutdown: Callable[[], None] | None = None
    grpc: GrpcServer | None = None  # the gRPC server, when settings.grpc_port is set

    def fail(self, reason: str) -> None:
        """The process cannot serve any more (the device is lost, or a --model file failed its
        warm-up): not ready, stop."""
        if self.state == "failed":
            return
        self.error, self.state = reason, "failed"
        if self.shutdown:
            self.shutdown()


# ---------------------------------------------------------------------------------------
# dependencies (async: FastAPI runs a plain `def` dependency in a worker thread, two hops each)
# ---------------------------------------------------------------------------------------


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


async def loaded_repository(service: ServiceDep) -> Repository:
    if service.repository is None:
        raise Problem(503, "not-ready", "the models are not loaded yet (state: loading)", headers={"Retry-After": "1"})
    return service.repository


RepositoryDep = Annotated[Repository, Depends(loaded_repository)]
ModelQuery = Annotated[
    str | None, Query(description="the model to use (`GET /v1/models` lists them); default: the server's default model")
]


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
            # set by routes once a request names a model that is served: label values stay bounded
            model = scope.get("state", {}).get("model", "")
            self.metrics.requests.labels("http", route, str(status), model).inc()
            self.metrics.duration.labels("http", route).observe(time.perf_counter() - began)


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------


async def _client_gone(request: Request, exc: Exception) -> Response:
    """Nobody reads this answer; 499 (nginx's "client closed request") shows up in the metrics."""
    return Response(status_code=499)


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
                kind = _part_video_type(videos[0])
                return await asyncio.to_thread(_decode_video, data, kind, engine, settings, options)
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
        return await asyncio.to_thread(_decode_video, body, request_type, engine, settings, options)
    if request_type == codecs.NPY and len(body) <= INLINE_BYTES:
        return codecs.decode_npy(body, engine.spec)
    decode = codecs.decode_npy if request_type == codecs.NPY else codecs.decode_json
    return await asyncio.to_thread(decode, body, engine.spec)


def _part_video_type(part: UploadFile) -> str:
    """A multipart 'video' part is read as its Content-Type says, else as its file name's suffix says."""
    kind = codecs.media_type(part.content_type)
    if kind in codecs.VIDEO_TYPES:
        return kind
    suffix = Path(part.filename or "").suffix.lower()
    if suffix in video.SUFFIX_TYPES:
        return video.SUFFIX_TYPES[suffix]
    got = f"Content-Type {kind!r}" if kind else "no Content-Type"
    raise Problem(
        415,
        "unsupported-media-type",
        f"the 'video' part has {got} and file name {part.filename!r}; expected one of {', '.join(codecs.VIDEO_TYPES)}",
    )


def _decode_video(data: bytes, media_type: str, engine: Engine, settings: ServeSettings, options: VideoOptions) -> codecs.Clips:
    return codecs.decode_video(
        data,
        engine.spec,
        media_type=media_type,
        resize=options.resize,
        start=options.start,
        max_frames=settings.max_video_frames,
    )


def _repository(settings: ServeSettings, metrics: ServiceMetrics, engine: Engine | None) -> Repository:
    return Repository(settings, metrics, engine=engine)


def create_app(
    settings: ServeSettings,
    engine: Engine | None = None,
    keys: KeyStore | None = None,
    repository: Repository | None = None,
) -> FastAPI:
    """The service. Pass a built ``repository`` (its engines loaded) to skip loading in the
    lifespan, or one loaded ``engine`` to serve just that, and the API ``keys`` read from
    ``settings`` (the CLI does both first so that start-up errors are plain messages)."""
    service = ServiceState(settings, repository.metrics if repository else ServiceMetrics())
    store = keys if keys is not None else key_store(settings)  # HTTP and gRPC check the same keys

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = repository if repository is not None else await asyncio.to_thread(_repository, settings, service.metrics, engine)
        # batchers, and warm-ups in the background; a lost device stops the process
        models.start(on_fatal=service.fail)
        service.repository = app.state.repository = models
        if settings.grpc_port:
            from service.grpc.server import GrpcServer  # grpcio loads only when gRPC is on

            service.grpc = GrpcServer(settings, models, store, service.metrics, failed=lambda: service.error)
            try:
                await service.grpc.start()
            except BaseException:
                await models.stop()
                raise
        try:
            yield
        finally:
            if service.grpc is not None:
                await service.grpc.stop()  # its RPCs in flight finish (drain_timeout_s) before the batchers stop
            await models.stop()
            log.info("stopped")

    # FastAPIOffline: /docs loads Swagger UI from its wheel, not from a CDN (service.web serves /redoc)
    app = FastAPIOffline(
        title="STLight frame prediction",
        version=__version__,
        description=(
            "Give it past frames, get the next ones. ONNX Runtime with dynamic batching; one process serves several "
            "models. Every error is application/problem+json (RFC 9457), except under /v2 (the Open Inference "
            'Protocol, as tritonclient speaks it), where it is {"error": "..."}.'
        ),
        lifespan=lifespan,
        static_url=web.DOCS_STATIC_URL,
        redoc_url=None,
    )
    app.state.service = service
    app.state.repository = repository
    register_problem_handlers(app)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(ClientDisconnect, _client_gone)  # gone while the body was streaming in
    # the last added runs first: request id -> metrics -> API key (before any body is read) -> body limit
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, store=store, metrics_auth=settings.metrics_auth)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(RequestIdMiddleware, log_requests=settings.access_log)
    document_keys(app, store, settings.metrics_auth)

    @app.post(
        "/predict",
        openapi_extra=PREDICT_OPENAPI,
        responses=PREDICT_RESPONSES,
        response_class=Response,
        summary="Predict the next frames",
    )
    async def predict(
        request: Request,
        models: RepositoryDep,
        model: ModelQuery = None,
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
        async with models.lease(model) as served:  # held until the prediction is made
            request.state.model = served.name
            annotate(model=served.name)  # for the access log line
            engine = served.engine
            request_type = codecs.media_type(request.headers.get("content-type"))
            if request_type not in codecs.REQUEST_TYPES:
                got = f"Content-Type {request_type!r}" if request_type else "no Content-Type"
                raise Problem(415, "unsupported-media-type", f"got {got}; send {', '.join(codecs.REQUEST_TYPES)}")
            options = VideoOptions(resize, start)
            options.check_for(request_type)
            if horizon_frames is not None and horizon_frames > settings.max_horizon:
                raise Problem(
                    422,
                    "horizon-too-far",
                    f"horizon={horizon_frames} is beyond this server's limit of {settings.max_horizon} frames "
                    "(STLIGHT_MAX_HORIZON)",
                )
            answer_type = codecs.choose_answer_type(request.headers.get("accept"), request_type)
            clips = await _read_clips(request, request_type, engine, settings, options)
            annotate(batch=len(clips.frames))
            codecs.check_answerable(answer_type, engine.spec.channels, len(clips.frames), clips.batched)

            prediction = await served.predict(clips.frames, horizon_frames, lambda: v2.client_gone(request))  # (B, N, C, H, W)
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
        "/readyz",
        summary="Readiness: 200 once every loaded model is warmed up",
        responses={503: problem_doc("Loading or warming up")},
    )
    async def readyz(service: ServiceDep, models: RepositoryDep) -> dict[str, Any]:
        if service.state == "failed":
            raise Problem(503, "not-ready", f"the server cannot serve any more: {service.error}", state="failed")
        problem = models.not_ready()
        if problem:
            raise problem
        default = models.get(None) if models.default in models.serving else None
        return {
            "status": "ready",
            "provider": default.engine.provider if default else None,
            "model": models.default,
            "models": sorted(models.serving),
        }

    @app.get(
        "/v1/model",
        summary="One served model (default: the default model): shapes, provider, batching, sha256 and model card",
        responses={404: problem_doc("No such model"), 503: problem_doc("The model failed to load")},
    )
    async def model_info(request: Request, models: RepositoryDep, model: ModelQuery = None) -> dict[str, Any]:
        served = models.get(model)
        request.state.model = served.name
        return {**served.describe(), "card": served.engine.card.to_dict()}

    @app.get(
        "/v1/models/{name}",
        summary="One served model by name (its highest version)",
        responses={404: problem_doc("No such model"), 503: problem_doc("The model failed to load")},
    )
    async def named_model_info(request: Request, models: RepositoryDep, name: str) -> dict[str, Any]:
        return await model_info(request, models, name)

    @app.get("/v1/models", summary="Every model the server knows of: the served versions, and the ones that are not served")
    async def models_info(models: RepositoryDep) -> dict[str, Any]:
        # one entry per model (its highest version, as /v1/model?model=NAME describes it) and its versions
        served = [{**models.get(name).describe(), "versions": models.versions(name)} for name in sorted(models.serving)]
        return {"default": models.default, "models": served, "repository": models.index()}

    @app.get(
        "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
    )
    async def metrics(service: ServiceDep) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(v2.router)
    web.install(app)
    return app
