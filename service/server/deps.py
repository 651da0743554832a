"""What the routes share: the process's serving state (kept on ``app.state.service``) and the
FastAPI dependencies that hand it, and the loaded model repository, to a route.

Dependencies are ``async``: FastAPI runs a plain ``def`` dependency in a worker thread, two
thread hops per request for nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, Query, Request

from service.core.errors import Unavailable
from service.core.runtime import available_cpus
from service.inference.metrics import ServiceMetrics
from service.inference.repository import Repository
from service.server.settings import ServeSettings
from service.server.workers import CodecPool

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

ProcessState = Literal["serving", "failed"]


@dataclass
class ServiceState:
    settings: ServeSettings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    repository: Repository | None = None
    state: ProcessState = "serving"
    error: str = ""
    # set by `stlight serve`: stop the server, so a process that cannot serve any more exits
    # non-zero and its orchestrator replaces it (in-process apps just stay not ready)
    shutdown: Callable[[], None] | None = None
    grpc: GrpcServer | None = None  # the gRPC server, when settings.grpc_port is set
    codecs: CodecPool = field(init=False)  # decoding and encoding, bounded (service.server.workers)

    def __post_init__(self) -> None:
        s = self.settings
        self.codecs = CodecPool(s.codec_workers or available_cpus(), s.codec_queue)

    def fail(self, reason: str) -> None:
        """The process cannot serve any more (the device is lost, or a --model file failed its
        warm-up): not ready, stop."""
        if self.state == "failed":
            return
        self.error, self.state = reason, "failed"
        if self.shutdown:
            self.shutdown()


async def get_service(request: Request) -> ServiceState:
    return request.app.state.service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


async def loaded_repository(service_state: ServiceDep) -> Repository:
    if service_state.repository is None:
        raise Unavailable("not-ready", "the models are not loaded yet (state: loading)", retry_after_s=1)
    return service_state.repository


RepositoryDep = Annotated[Repository, Depends(loaded_repository)]
ModelQuery = Annotated[
    str | None, Query(description="the model to use (`GET /v1/models` lists them); default: the server's default model")
]


async def client_gone(request: Request) -> None:
    """Return once the client has closed the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
