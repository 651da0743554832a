"""Request ids and the access log: one ASGI middleware, outermost of the app's own.

Every answer carries ``X-Request-ID``: the caller's own (sanitised, at most 128 characters) or
a generated one. The id sits in a context variable for the request's lifetime, so every log line
written while serving it (the access line, an error's traceback, a decode failure in a worker
thread) carries it, and problem+json bodies name it as their ``instance``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# What an id may hold: letters, digits and the punctuation of UUIDs, W3C trace ids, base64 and
# URNs. No spaces, quotes or control characters, so it is safe in a log line, a header and a URI.
_UNSAFE = re.compile(r"[^A-Za-z0-9._~:/+=@-]")

access_log = logging.getLogger("stlight.access")

# The request being served by this task; the dict is per request and mutable, so a route (or a
# thread it started with a copied context) can add fields such as the model and batch size.
_current: ContextVar[dict[str, Any] | None] = ContextVar("stlight_request", default=None)


def sanitise(value: str | None) -> str:
    """The caller's id with unsafe characters removed, cut to 128; a fresh one if nothing is left."""
    cleaned = _UNSAFE.sub("", value or "")[:MAX_LENGTH]
    return cleaned or uuid.uuid4().hex


def begin(incoming: str | None) -> dict[str, Any]:
    """Start serving a request in this task (HTTP middleware, gRPC interceptor): its id, the
    caller's ``incoming`` one sanitised or a new one, in the context; the access line's fields."""
    fields: dict[str, Any] = {"request_id": sanitise(incoming)}
    # not reset afterwards: each request runs in its own task (its own context), and the 500
    # handler, which runs after the middleware returns, needs the id
    _current.set(fields)
    return fields


def current_request_id() -> str | None:
    """The id of the request this code is serving, or ``None`` outside a request."""
    fields = _current.get()
    return fields["request_id"] if fields else None


def current_field(name: str) -> Any:
    """A field of the current request's access line (``key``: the name of the key it sent)."""
    fields = _current.get()
    return fields.get(name) if fields else None


def annotate(**fields: Any) -> None:
    """Add fields (``model``, ``batch``...) to the access log line of the current request."""
    current = _current.get()
    if current is not None:
        current.update(fields)


class RequestIdFilter(logging.Filter):
    """Give every record ``request_id`` (``None`` outside a request), for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class RequestIdMiddleware:
    """Assign the id, return it on the answer and write one access log line per request.

    Starlette runs its 500 handler outside every user middleware, so that handler's answer does
    not pass through ``send`` here; ``service.server.problems`` adds the header and ``instance`` itself
    from the context variable, which is still set when the handler runs in this same task.
    """

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app, self.log_requests = app, log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope.get("headers") or [] if k == b"x-request-id"), None)
        fields = begin(incoming.decode("latin-1") if incoming is not None else None)
        request_id = fields["request_id"]
        began, status = time.perf_counter(), 500
        header = (HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                if not any(k.lower() == header[0] for k, _ in headers):
                    headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                self._log(scope, fields, status, time.perf_counter() - began)

    @staticmethod
    def _log(scope: Scope, fields: dict[str, Any], status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        client = scope.get("client")
        extra = {
            **fields,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        # the path is the client's text: %r escapes control characters (no forged log lines)
        client_text = extra["client"] or "-"
        access_log.info(
            "%s %s %r %d %.1f ms", client_text, extra["method"], extra["path"], status, extra["duration_ms"], extra=extra
        )
