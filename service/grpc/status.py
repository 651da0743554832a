"""Errors as gRPC status codes: the REST answer's status (and kind) -> a ``grpc.StatusCode``, with the
same message as details, and the retry hint in trailing metadata.

A refusal with a ``Retry-After`` (a full queue, a model being loaded or unloaded, a lost device)
carries ``retry-after`` (seconds, as over HTTP) and ``grpc-retry-pushback-ms``: the server
pushback that gRPC's own retry policy honours (gRFC A6), so a client configured to retry waits as
long as the server asks.
"""

from __future__ import annotations

import grpc

from service.problems import Problem

Metadata = tuple[tuple[str, str], ...]

# the codes grpc-gateway and Google's API design guide pair with these HTTP statuses
BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
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


def code_for(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP error status (any other 4xx: INVALID_ARGUMENT, 5xx: INTERNAL)."""
    if status in BY_STATUS:
        return BY_STATUS[status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


def retry_metadata(headers: dict[str, str]) -> Metadata:
    """``retry-after`` and ``grpc-retry-pushback-ms`` from an answer's ``Retry-After`` header."""
    wait = next((value for name, value in headers.items() if name.lower() == "retry-after"), None)
    if wait is None or not wait.isdigit():
        return ()
    return (("retry-after", wait), ("grpc-retry-pushback-ms", str(int(wait) * 1000)))


def from_problem(problem: Problem) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status, details and trailing metadata that answer ``problem`` over gRPC."""
    code = BY_KIND.get(problem.kind) or code_for(problem.status)
    return code, problem.detail, retry_metadata(problem.headers)


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_EQUIVALENT.get(code, 500)
