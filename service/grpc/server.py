"""The gRPC server (``grpc.aio``) of ``stlight serve``: in the same process and event loop as uvicorn,
started and stopped by the app's lifespan (:mod:`service.app`), so both protocols share one
repository, one batcher per model version and one key store — one batch can hold clips of HTTP
and gRPC callers.

Besides ``inference.GRPCInferenceService`` (:mod:`service.grpc.servicer`) it serves
``grpc.health.v1.Health`` (service ``""``: live, as ``/healthz``; service
``inference.GRPCInferenceService``: ready, as ``/readyz``) and server reflection (v1alpha), so that
``grpcurl`` and ``grpc_health_probe`` work without the .proto.

Stopping (SIGTERM): health turns NOT_SERVING, new RPCs are refused, the RPCs in flight have
``drain_timeout_s`` to finish (as HTTP requests do), then the rest are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.grpc.interceptors import ApiKeyInterceptor, RequestInterceptor
from service.grpc.proto import open_inference_grpc_pb2 as pb
from service.grpc.proto import open_inference_grpc_pb2_grpc as pb_grpc
from service.grpc.servicer import PUBLIC_METHODS, SERVICE_NAME, InferenceServicer
from service.inference.metrics import ServiceMetrics
from service.inference.repository import Repository
from service.server.security import KeyStore
from service.server.settings import ServeSettings

log = logging.getLogger("stlight.grpc")

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_REFRESH_S = 1.0  # how often Watch streams see a change of readiness


class GrpcStartError(RuntimeError):
    """The gRPC port cannot be bound (taken, or not an address of this host)."""


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (an IPv6 literal in brackets)."""
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


class Health(health.aio.HealthServicer):
    """grpc.health.v1 answering from the repository: each Check reads the current state."""

    def __init__(self, ready: Callable[[], bool], live: Callable[[], bool]) -> None:
        super().__init__()
        self._ready, self._live = ready, live

    async def refresh(self) -> None:
        await self.set("", SERVING if self._live() else NOT_SERVING)
        await self.set(SERVICE_NAME, SERVING if self._live() and self._ready() else NOT_SERVING)

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)


def _pool_with(*files: object) -> descriptor_pool.DescriptorPool:
    """Our messages' pool, with the health and reflection protos added so that reflection can
    describe those services too (theirs live in protobuf's default pool)."""
    for file in files:
        with contextlib.suppress(KeyError):
            pb.POOL.FindFileByName(file.name)  # type: ignore[attr-defined]
            continue
        pb.POOL.AddSerializedFile(file.serialized_pb)  # type: ignore[attr-defined]
    return pb.POOL


class GrpcServer:
    """One ``grpc.aio`` server on ``settings.host:settings.grpc_port``."""

    def __init__(
        self,
        settings: ServeSettings,
        repository: Repository,
        keys: KeyStore,
        metrics: ServiceMetrics,
        failed: Callable[[], str] = lambda: "",
    ) -> None:
        self.settings, self.repository, self.failed = settings, repository, failed
        self.server = grpc.aio.server(
            interceptors=(
                RequestInterceptor(metrics, log_requests=settings.access_log),
                ApiKeyInterceptor(keys, PUBLIC_METHODS),
            ),
            options=(
                # grpc core binds with SO_REUSEPORT by default: a second server on the same port would
                # silently share its traffic instead of failing to start
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_body_bytes),  # larger: RESOURCE_EXHAUSTED
                ("grpc.max_send_message_length", -1),
            ),
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(repository, failed, settings.max_horizon), self.server
        )
        self.health = Health(lambda: repository.not_ready() is None, lambda: not failed())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        services = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        pool = _pool_with(health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
        reflection.enable_server_reflection(services, self.server, pool=pool)
        self.port = 0
        self._refresher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and start; the port (``GrpcStartError`` if it cannot be bound)."""
        where = address(self.settings.host, self.settings.grpc_port)
        try:
            self.port = self.server.add_insecure_port(where)
        except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind to address ...")
            raise GrpcStartError(f"cannot listen for gRPC on {where} (--grpc-port; 0 turns gRPC off): {exc}") from None
        await self.server.start()
        await self.health.refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_health(), name="stlight-grpc-health")
        log.info("gRPC (Open Inference Protocol, health, reflection) listening on %s", address(self.settings.host, self.port))
        return self.port

    async def _refresh_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            await self.health.refresh()

    def begin_drain(self) -> None:
        """Stop taking RPCs now; those in flight get ``drain_timeout_s`` (idempotent)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._drain(), name="stlight-grpc-drain")

    async def _drain(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self.health.enter_graceful_shutdown()
        grace = self.settings.drain_timeout_s
        stopping = asyncio.ensure_future(self.server.stop(grace))
        await asyncio.sleep(0)  # its first step tells gRPC's core to refuse new calls
        log.info("gRPC: new calls refused; those in flight have %g s to finish", grace)
        await stopping
        log.info("gRPC stopped")

    async def stop(self) -> None:
        self.begin_drain()
        assert self._stopping is not None
        await self._stopping
