"""RFC 9457 problem details: every error the service answers is ``application/problem+json``
with ``type, title, status, detail`` — bad input, unknown routes, wrong methods, validation
errors and unexpected failures alike — except under ``/v2``, where the Open Inference Protocol's
clients expect ``{"error": detail}`` (same status, same detail). Also the request-body size
The only place that knows HTTP status codes: the layers below raise the typed errors of
:mod:`service.core.errors`, and :data:`STATUS` turns each type into its status."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.core.errors import (
    ClientGone,
    DeadlineExceeded,
    Forbidden,
    InputError,
    LimitExceeded,
    NotAcceptable,
    NotFound,
    ServeError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unprocessable,
    UnsupportedMedia,
)
from service.server.request_id import HEADER as REQUEST_ID_HEADER
from service.server.request_id import current_request_id

log = logging.getLogger("stlight.service")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:stlight:problem:"  # a stable identifier per kind of problem, not a web page
OIP_PREFIX = "/v2"  # Open Inference Protocol routes: errors are {"error": "..."}


def is_oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


# each error type's status; the most specific class listed wins (LimitExceeded before Unprocessable)
STATUS: dict[type[ServeError], int] = {
    InputError: 400,
    Unprocessable: 422,
    LimitExceeded: 422,
    UnsupportedMedia: 415,
    NotAcceptable: 406,
    TooLarge: 413,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Unavailable: 503,
    DeadlineExceeded: 504,
}


def status_of(error: ServeError) -> int:
    """The HTTP status of a typed error: that of its nearest class in :data:`STATUS`."""
    return next((STATUS[cls] for cls in type(error).__mro__ if cls in STATUS), 500)


def body_too_large(limit: int, seen: int, declared: bool) -> TooLarge:
    how = "declares Content-Length" if declared else "sent more than"
    return TooLarge(
        "body-too-large",
        f"request body {how} {seen:,} bytes; the limit is {limit:,} bytes ({limit / 2**20:g} MiB, --max-body-mb)",
        limit_bytes=limit,
    )


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
    **extra: Any,
) -> JSONResponse:
    """The error answer for a request to ``path``: problem+json, or OIP's ``{"error": ...}``."""
    request_id = current_request_id()
    if request_id is not None:
        # set here too because the 500 handler's answer bypasses the middleware that sets it on
        # every other answer
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    if is_oip(path):
        return JSONResponse({"error": detail}, status_code=status, headers=headers)
    body = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    if request_id is not None:
        body["instance"] = f"urn:stlight:request:{request_id}"  # names this occurrence (RFC 9457)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def error_response(error: ServeError, path: str) -> JSONResponse:
    """The answer to a typed error raised while serving ``path``."""
    retry_after = getattr(error, "retry_after_s", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return problem_response(status_of(error), error.detail, kind=error.kind, headers=headers, path=path, **error.extra)


async def _error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServeError)
    return error_response(exc, request.url.path)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        detail = f"no route {request.url.path!r}; see /docs for the API"
    elif exc.status_code == 405:
        allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "?")
        detail = f"{request.method} is not allowed on {request.url.path!r}; allowed: {allowed}"
    return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}), path=request.url.path)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors) or "invalid request"
    return problem_response(422, detail, kind="invalid-request", path=request.url.path, errors=errors)


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500, f"unexpected {type(exc).__name__}; the server log has the traceback", kind="internal", path=request.url.path
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """Nobody reads this answer; 499 (nginx's "client closed request") shows up in the metrics."""
    return Response(status_code=499)


def register_problem_handlers(app: FastAPI) -> None:
    """Make every error response problem+json (a client that is gone gets nothing, logged 499)."""
    app.add_exception_handler(ServeError, _error_handler)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(ClientDisconnect, _client_gone)  # gone while the body was streaming in
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
