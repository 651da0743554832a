"""RFC 9457 problem details: every error the service answers is ``application/problem+json``
with ``type, title, status, detail`` — bad input, unknown routes, wrong methods, validation
errors and unexpected failures alike — except under ``/v2``, where the Open Inference Protocol's
clients expect ``{"error": detail}`` (same status, same detail). Also the request-body size
limit, enforced while the body streams in."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.request_id import HEADER as REQUEST_ID_HEADER
from service.request_id import current_request_id

log = logging.getLogger("stlight.service")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:stlight:problem:"  # a stable identifier per kind of problem, not a web page
OIP_PREFIX = "/v2"  # Open Inference Protocol routes: errors are {"error": "..."}


def is_oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


class Problem(Exception):
    """An error answer. ``kind`` becomes the ``type`` URI (``urn:stlight:problem:<kind>``)."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra


class BodyTooLarge(Problem):
    def __init__(self, limit: int, seen: int, declared: bool) -> None:
        how = "declares Content-Length" if declared else "sent more than"
        super().__init__(
            413,
            "body-too-large",
            f"request body {how} {seen:,} bytes; the limit is {limit:,} bytes ({limit / 2**20:g} MiB, --max-body-mb)",
            limit_bytes=limit,
        )


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
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
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    if request_id is not None:
        body["instance"] = f"urn:stlight:request:{request_id}"  # names this occurrence (RFC 9457)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def _from_problem(problem: Problem, path: str) -> JSONResponse:
    return problem_response(
        problem.status,
        problem.detail,
        kind=problem.kind,
        title=problem.title,
        headers=problem.headers,
        path=path,
        **problem.extra,
    )


async def _problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return _from_problem(exc, request.url.path)


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


def register_problem_handlers(app: FastAPI) -> None:
    """Make every error response problem+json."""
    app.add_exception_handler(Problem, _problem_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: at once when Content-Length says so, otherwise as soon
    as the streamed chunks pass the limit (raised from ``receive`` inside the route, so the
    exception handlers turn it into a 413 before the rest is read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > self.limit:
                await problem_response(
                    413,
                    BodyTooLarge(self.limit, size, True).detail,
                    kind="body-too-large",
                    path=scope.get("path", ""),
                    limit_bytes=self.limit,
                )(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit, seen, False)
            return message

        await self.app(scope, limited_receive, send)
