"""The app's own ASGI middleware: request metrics by route template, and the request-body size
limit enforced while the body streams in. (The request id and API key middleware live with
what they guard: ``request_id.py``, ``security.py``.) None of them buffers a body."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.inference.metrics import ServiceMetrics
from service.server.problems import body_too_large, error_response


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
                await error_response(body_too_large(self.limit, size, True), scope.get("path", ""))(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise body_too_large(self.limit, seen, False)
            return message

        await self.app(scope, limited_receive, send)
