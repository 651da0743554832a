"""The HTTP service: ``create_app(settings)`` wires a FastAPI app whose lifespan loads the models
(:mod:`service.inference.repository`), starts a batcher per model and warms them up in the
background (``/readyz`` answers 503 until done). The routes are ``APIRouter`` modules in
:mod:`service.server.routes`: ``/predict``, the probes and ``/v1`` model routes, and the Open
Inference Protocol under ``/v2``; :mod:`service.server.web` adds the page and the docs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service import __version__
from service.inference.engine import Engine
from service.inference.metrics import ServiceMetrics
from service.inference.polling import Poller
from service.inference.repository import Repository
from service.server import web
from service.server.deps import ServiceState
from service.server.middleware import BodyLimitMiddleware, DeadlineMiddleware, MetricsMiddleware
from service.server.problems import register_problem_handlers
from service.server.request_id import RequestIdMiddleware
from service.server.routes import predict, v1, v2
from service.server.security import ApiKeyMiddleware, KeyStore, document_keys, key_store
from service.server.settings import ServeSettings

log = logging.getLogger("stlight.service")

DESCRIPTION = (
    "Give it past frames, get the next ones. ONNX Runtime with dynamic batching; one process serves several "
    "models. Every error is application/problem+json (RFC 9457), except under /v2 (the Open Inference "
    'Protocol, as tritonclient speaks it), where it is {"error": "..."}.'
)


def create_app(
    settings: ServeSettings,
    engine: Engine | None = None,
    keys: KeyStore | None = None,
    repository: Repository | None = None,
) -> FastAPI:
    """The service. Pass a built ``repository`` (its engines loaded) to skip loading in the
    lifespan, or one loaded ``engine`` to serve just that, and the API ``keys`` read from
    ``settings`` (the CLI does both first so that start-up errors are plain messages)."""
    service_state = ServiceState(settings, repository.metrics if repository else ServiceMetrics())
    store = keys if keys is not None else key_store(settings)  # HTTP and gRPC check the same keys

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        models = repository
        if models is None:
            models = await asyncio.to_thread(Repository, settings.model_options(), service_state.metrics, engine=engine)
        # batchers, and warm-ups in the background; a lost device stops the process
        models.start(on_fatal=service_state.fail)
        service_state.repository = app.state.repository = models
        poller = Poller(models) if settings.model_control == "poll" else None
        if poller is not None:
            poller.start()
        if settings.grpc_port:
            from service.grpc.server import GrpcServer  # grpcio loads only when gRPC is on

            service_state.grpc = GrpcServer(settings, models, store, service_state.metrics, failed=lambda: service_state.error)
            try:
                await service_state.grpc.start()
            except BaseException:
                if poller is not None:
                    await poller.stop()
                await models.stop()
                raise
        try:
            yield
        finally:
            if poller is not None:
                await poller.stop()  # no swap may start while the models stop
            if service_state.grpc is not None:
                await service_state.grpc.stop()  # its RPCs in flight finish (drain_timeout_s) before the batchers stop
            await models.stop()
            service_state.codecs.close()
            log.info("stopped")

    # FastAPIOffline: /docs loads Swagger UI from its wheel, not from a CDN (service.server.web serves /redoc)
    app = FastAPIOffline(
        title="STLight frame prediction",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url=web.DOCS_STATIC_URL,
        redoc_url=None,
    )
    app.state.service = service_state
    app.state.repository = repository
    register_problem_handlers(app)
    # the last added runs first: request id -> metrics -> API key (before any body is read) -> body limit -> deadline
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout_s)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, store=store, metrics_auth=settings.metrics_auth)
    app.add_middleware(MetricsMiddleware, metrics=service_state.metrics)
    app.add_middleware(RequestIdMiddleware, log_requests=settings.access_log)
    document_keys(app, store, settings.metrics_auth)
    for routes in (predict, v1, v2):
        app.include_router(routes.router)
    web.install(app)
    return app
