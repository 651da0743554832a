"""What every RPC goes through, as every HTTP request goes through the middleware of
:mod:`service.app`, in the same order: request id and access log (with the metrics), then the API key.

- :class:`RequestInterceptor`: the caller's ``x-request-id`` metadata (sanitised) or a new id, in
  the context variable that every log line reads (:mod:`service.request_id`) and back in the
  trailing metadata; an error (a typed error of :mod:`service.core.errors`) becomes its status code
  (:mod:`service.grpc.status`) with the REST message; one access log line and the
  ``stlight_requests_total`` / ``stlight_request_duration_seconds`` samples (``protocol="grpc"``).
- :class:`ApiKeyInterceptor`: the REST key store; ``authorization: Bearer KEY`` or ``x-api-key: KEY``
  metadata, else UNAUTHENTICATED, and a key without the scope the method's group needs
  (:mod:`service.server.scopes`) PERMISSION_DENIED, before the request message is even parsed. Health checking,
  reflection and ServerLive / ServerReady stay open, as the probes and /openapi.json do over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from service.core.errors import ServeError
from service.grpc import status
from service.inference.metrics import ServiceMetrics
from service.server import request_id
from service.server.scopes import grpc_group
from service.server.security import KeyStore

log = logging.getLogger("stlight.grpc")

Request = TypeVar("Request")
Response = TypeVar("Response")
if TYPE_CHECKING:  # grpc's classes are generic in its type stubs only
    Handler = grpc.RpcMethodHandler[Request, Response]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler[Request, Response] | None]]
    Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
GRPC_HOW = "metadata 'authorization: Bearer <key>' or 'x-api-key: <key>'"


def metadata_values(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> list[str]:
    """Every value of ``name`` (lower case, as gRPC delivers keys) in ``metadata``."""
    values = []
    for key, value in metadata or ():
        if key == name:
            values.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return values


def presented_keys(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[str]:
    """The keys a call carries: ``authorization: Bearer <key>`` and ``x-api-key: <key>``."""
    keys = []
    for value in metadata_values(metadata, "authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            keys.append(token.strip())
    keys.extend(value.strip() for value in metadata_values(metadata, "x-api-key") if value.strip())
    return keys


def _replace_unary(handler: Handler[Any, Any], behavior: Unary, *, parse: bool = True) -> Handler[Any, Any]:
    """``handler`` with ``behavior`` in place of its unary-unary one (``parse=False``: the request
    message is left as bytes, unread)."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer if parse else None,
        response_serializer=handler.response_serializer,
    )


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, store: KeyStore, public: frozenset[str]) -> None:
        self.store, self.public = store, public

    def _is_public(self, method: str) -> bool:
        return method in self.public or method.startswith(PUBLIC_PREFIXES)

    async def intercept_service(
        self, continuation: Continuation[Request, Response], handler_call_details: grpc.HandlerCallDetails
    ) -> Handler[Request, Response] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.store.enabled or self._is_public(method):
            return handler
        presented = presented_keys(handler_call_details.invocation_metadata)
        try:
            self.store.authorize(presented, grpc_group(method), GRPC_HOW)
            return handler
        except ServeError as error:
            refusal = error  # UNAUTHENTICATED or PERMISSION_DENIED, naming the scope the method needs

        async def refuse(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            raise refusal

        if handler.unary_unary is None:  # every RPC that needs a key is unary; a stream is refused all the same
            return grpc.stream_stream_rpc_method_handler(refuse)
        return _replace_unary(handler, refuse, parse=False)


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics, *, log_requests: bool = True) -> None:
        self.metrics, self.log_requests = metrics, log_requests

    async def intercept_service(
        self, continuation: Continuation[Request, Response], handler_call_details: grpc.HandlerCallDetails
    ) -> Handler[Request, Response] | None:
        method = handler_call_details.method
        incoming = metadata_values(handler_call_details.invocation_metadata, "x-request-id")
        # the interceptors and the handler share one context: lines logged while serving carry the id
        fields = request_id.begin(incoming[0] if incoming else None)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:  # unknown methods; health Watch and reflection streams
            return handler
        behavior: Unary = handler.unary_unary  # type: ignore[assignment]  # the stubs know sync behaviours only

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            began, code = time.perf_counter(), grpc.StatusCode.OK
            trailing = (("x-request-id", fields["request_id"]),)
            context.set_trailing_metadata(trailing)
            try:
                return await behavior(request, context)
            except ServeError as error:
                code, details, extra = status.from_error(error)
                await context.abort(code, details, trailing + extra)
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                remaining = context.time_remaining()
                code = (
                    grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
                )
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", method, exc_info=exc)
                await context.abort(code, f"unexpected {type(exc).__name__}; the server log has the traceback", trailing)
            finally:
                self._observe(method, code, fields, time.perf_counter() - began, context)

        return _replace_unary(handler, observed)

    def _observe(
        self,
        method: str,
        code: grpc.StatusCode,
        fields: dict[str, Any],
        seconds: float,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        model = fields.get("model", "")
        self.metrics.requests.labels("grpc", method, code.name, model).inc()
        self.metrics.duration.labels("grpc", method).observe(seconds)
        if not self.log_requests:
            return
        http = status.http_status(code)
        extra = {
            **fields,
            "protocol": "grpc",
            "path": method,
            "route": method,
            "status": http,
            "grpc_status": code.name,
            "duration_ms": round(seconds * 1000, 2),
            "client": context.peer(),
        }
        request_id.access_log.info("%s gRPC %r %s %.1f ms", extra["client"], method, code.name, extra["duration_ms"], extra=extra)
