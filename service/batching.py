"""Dynamic batching: concurrent requests are coalesced into one ``session.run``.

One asyncio task collects queued requests until ``max_batch_size`` clips or ``max_delay``
after the first (``time.monotonic`` deadlines), runs the batch in a worker thread so the event
loop never blocks, and splits the output back one for one. The queue is bounded (503 with
``Retry-After`` when full); requests whose client went away or whose time ran out are dropped
before inference.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.metrics import ServiceMetrics
from service.problems import Problem

log = logging.getLogger("stlight.batching")


class ClientGone(Exception):
    """The client disconnected while its request waited; nobody is left to answer."""


@dataclass(eq=False)
class _Request:
    clips: np.ndarray  # (n, T, C, H, W) float32
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)
    dropped: str = ""  # why it was cancelled: "disconnected" or "timeout"


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        timeout_s: float,
        metrics: ServiceMetrics,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or timeout_s <= 0:
            raise ValueError("max_batch_size and queue_size must be >= 1, max_delay_s >= 0 and timeout_s > 0")
        self.run, self.metrics = run, metrics
        self.max_batch_size, self.max_delay_s, self.timeout_s = max_batch_size, max_delay_s, timeout_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=queue_size)
        metrics.queue_depth.set_function(self.queue.qsize)  # read at scrape time, never stale
        # one inference thread: session.run already uses every intra-op thread we gave it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stlight-infer")
        self._task: asyncio.Task[None] | None = None
        self._seconds_per_clip = 0.0  # moving average, for Retry-After

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="stlight-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self.queue.empty():
            request = self.queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(
                    Problem(503, "shutting-down", "the server is shutting down; retry on another instance")
                )
        self.executor.shutdown(wait=True)

    async def run_in_worker(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (warm-up uses this so it never overlaps a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    # requests ------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        backlog_clips = (self.queue.qsize() + 1) * self.max_batch_size
        return max(1, math.ceil(backlog_clips * self._seconds_per_clip))

    async def predict(self, clips: np.ndarray, client_gone: Callable[[], Awaitable[object]] | None = None) -> np.ndarray:
        """(n, T, C, H, W) -> (n, T', C, H, W). Raises 503 when the queue is full, 504 on timeout,
        :class:`ClientGone` when ``client_gone()`` completes first."""
        loop = asyncio.get_running_loop()
        request = _Request(clips, loop.create_future())
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            self.metrics.dropped.labels("queue_full").inc()
            wait = self.retry_after_s()
            raise Problem(
                503,
                "queue-full",
                f"all {self.queue.maxsize} queue places are taken; retry in about {wait} s",
                headers={"Retry-After": str(wait)},
            ) from None
        watcher = loop.create_task(client_gone()) if client_gone else None
        waiting: set[asyncio.Future[object]] = {request.future} | ({watcher} if watcher else set())  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait(waiting, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher:
                watcher.cancel()
        if request.future in done:
            return request.future.result()
        request.dropped = "disconnected" if watcher in done else "timeout"
        request.future.cancel()
        if request.dropped == "disconnected":
            raise ClientGone()
        self.metrics.timeouts.inc()
        raise Problem(
            504,
            "timeout",
            f"no prediction within {self.timeout_s:g} s (request_timeout_s); the server is overloaded, retry later",
        )

    # the loop ------------------------------------------------------------------------
    async def _collect(self, first: _Request) -> tuple[list[_Request], _Request | None]:
        """``first`` plus whatever arrives until the batch is full or the deadline passes; a
        request that would overflow the batch is handed back for the next one."""
        batch, clips = [first], len(first.clips)
        deadline = time.monotonic() + self.max_delay_s
        while clips < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if nxt.future.done():  # cancelled while queued
                self._count_drop(nxt)
                continue
            if clips + len(nxt.clips) > self.max_batch_size:
                return batch, nxt
            batch.append(nxt)
            clips += len(nxt.clips)
        return batch, None

    def _count_drop(self, request: _Request) -> None:
        self.metrics.dropped.labels(request.dropped or "cancelled").inc()

    async def _loop(self) -> None:
        carry: _Request | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            if first.future.done():
                self._count_drop(first)
                continue
            batch, carry = await self._collect(first)
            # drop requests whose client left or whose time ran out while we were collecting
            live = []
            for request in batch:
                if request.future.done():
                    self._count_drop(request)
                else:
                    live.append(request)
            if live:
                await self._run_batch(live)

    async def _run_batch(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        for request in batch:
            self.metrics.queue_wait.observe(now - request.enqueued)
        counts = [len(r.clips) for r in batch]
        inputs = np.concatenate([r.clips for r in batch]) if len(batch) > 1 else batch[0].clips  # (sum n, T, C, H, W)
        loop = asyncio.get_running_loop()
        try:
            outputs = []
            # one oversized request (more clips than max_batch_size) runs in several session.run calls
            for start in range(0, len(inputs), self.max_batch_size):
                chunk = inputs[start : start + self.max_batch_size]
                began = time.perf_counter()
                self.metrics.running.set(len(chunk))
                try:
                    outputs.append(await loop.run_in_executor(self.executor, self.run, chunk))
                finally:
                    self.metrics.running.set(0)
                elapsed = time.perf_counter() - began
                self.metrics.inference.observe(elapsed)
                self.metrics.batch_size.observe(len(chunk))
                self._seconds_per_clip = (
                    0.8 * self._seconds_per_clip + 0.2 * elapsed / len(chunk) if self._seconds_per_clip else elapsed / len(chunk)
                )
            output = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
            if len(output) != len(inputs):
                raise RuntimeError(f"inference returned {len(output)} clips for {len(inputs)} inputs")
        except Exception as exc:  # fail this batch's requests, keep serving
            log.exception("inference failed for a batch of %d clips", len(inputs))
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        start = 0
        for request, count in zip(batch, counts):
            if not request.future.done():  # may have timed out or disconnected during inference
                request.future.set_result(output[start : start + count])
            start += count
