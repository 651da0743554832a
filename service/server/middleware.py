"""The app's own ASGI middleware: request metrics by route template, the request-body size
limit enforced while the body streams in, and one deadline for a whole inference request. (The
request id and API key middleware live with what they guard: ``request_id.py``,
``security.py``.) None of them buffers a body."""

from __future__ import annotations

import asyncio
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import DeadlineExceeded
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


# the routes that run a model or grade an answer; the repository's load/unload (minutes for a
# large model) and the probes are not under the deadline
_DEADLINED = re.compile(r"^/predict$|^/v1/feedback/[^/]+$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


class DeadlineMiddleware:
    """One deadline for a whole inference request, from its first byte to the start of its
    answer: receiving the body (a client that sends it slowly included), waiting for and running
    the decode, every rollout step and the encode. Past it, the route is cancelled (its clips
    leave the batcher's queue, a decode not yet started leaves the codec pool's) and the client
    gets a 504 ``deadline-exceeded`` naming the setting. Each rollout step also has the batcher's
    own timeout, the same number: a step can never outlive the request."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not _DEADLINED.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        task, started, expired = asyncio.current_task(), False, False

        def expire() -> None:
            nonlocal expired
            expired = True
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.seconds, expire)

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                timer.cancel()  # the answer is being sent: no 504 can follow a status line
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except asyncio.CancelledError:
            if started or not expired:
                raise
            if task is not None and hasattr(task, "uncancel"):  # 3.11+: this cancellation is handled here
                task.uncancel()
        finally:
            timer.cancel()
        if expired and not started:
            detail = (
                f"no answer within {self.seconds:g} s, the most one request may take from its first byte to its answer "
                "(receiving the body, decoding, every rollout step, encoding; STLIGHT_REQUEST_TIMEOUT_S)"
            )
            error = DeadlineExceeded("deadline-exceeded", detail, limit_s=self.seconds)
            await error_response(error, scope.get("path", ""))(scope, receive, send)
