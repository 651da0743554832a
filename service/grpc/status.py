"""Errors as gRPC status codes: a typed error of :mod:`service.core.errors` (its class, and for a
few its kind) -> a ``grpc.StatusCode``, with the same message as the REST answer as details, and
the retry hint in trailing metadata.

A refusal with a ``Retry-After`` (a full queue, a model being loaded or unloaded, a lost device)
carries ``retry-after`` (seconds, as over HTTP) and ``grpc-retry-pushback-ms``: the server
pushback that gRPC's own retry policy honours (gRFC A6), so a client configured to retry waits as
long as the server asks.
"""

from __future__ import annotations

import grpc

from service.core.errors import (
    DeadlineExceeded,
    Forbidden,
    InputError,
    NotFound,
    ServeError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)

Metadata = tuple[tuple[str, str], ...]

# the codes grpc-gateway and Google's API design guide pair with the HTTP statuses of these
# classes (server/problems.py); the nearest class listed wins. Every InputError (400, 406, 415,
# 422) is INVALID_ARGUMENT, a body over the limit (413) RESOURCE_EXHAUSTED.
BY_CLASS: dict[type[ServeError], grpc.StatusCode] = {
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# kinds whose gRPC code is not their HTTP status's: a model of the repository that is unloaded is
# UNAVAILABLE, as Triton answers for a model with no version loaded (HTTP: 404; NOT_FOUND stays
# for names the server does not know)
BY_KIND: dict[str, grpc.StatusCode] = {"model-unloaded": grpc.StatusCode.UNAVAILABLE}
# the other way, for the access log's `status` (an HTTP status, so that one dashboard reads both protocols)
HTTP_EQUIVALENT: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def code_for(error: ServeError) -> grpc.StatusCode:
    """The gRPC code of a typed error: by kind where it differs, else by its nearest class."""
    if error.kind in BY_KIND:
        return BY_KIND[error.kind]
    return next((BY_CLASS[cls] for cls in type(error).__mro__ if cls in BY_CLASS), grpc.StatusCode.INTERNAL)


def retry_metadata(error: ServeError) -> Metadata:
    """``retry-after`` and ``grpc-retry-pushback-ms`` from an ``Unavailable``'s retry time."""
    wait = getattr(error, "retry_after_s", None)
    if wait is None:
        return ()
    return (("retry-after", str(wait)), ("grpc-retry-pushback-ms", str(int(wait) * 1000)))


def from_error(error: ServeError) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status, details and trailing metadata that answer ``error`` over gRPC."""
    return code_for(error), error.detail, retry_metadata(error)


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_EQUIVALENT.get(code, 500)
