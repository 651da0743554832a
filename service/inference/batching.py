"""Dynamic batching that never idles: concurrent requests share one ``session.run``.

One asyncio task per model takes the first waiting request and, with it, every request that
gathered in the queue while the previous batch ran, up to ``max_batch_size`` clips; a request
that would overflow the batch leads the next one. When the engine is free a lone request runs at
once: waiting for company only pays when requests arrive faster than batches finish, and then
they gather during the run anyway. ``max_delay_s`` (default 0) adds an optional wait for more
clips after the first, for loads that prefer fewer, fuller batches to latency.

The batch is assembled, run and checked on one inference thread (one hop there, one back), so
the event loop never blocks on a copy or on ONNX Runtime. Guarantees: the queue is bounded
(:class:`~service.core.errors.Unavailable` with a retry time when full); requests whose client
went away or whose time ran out are dropped before inference; each caller gets exactly its own
rows, and a run that returns another number of rows fails the batch instead of shifting answers
between callers. Failures of the run function are answered by kind: :class:`OutOfMemory` ->
``Unavailable`` with a retry time (a batch of several clips is first retried in halves);
:class:`DeviceLost` -> every waiting caller gets ``Unavailable``, the batcher refuses new work
and calls ``on_fatal`` once so the process can be replaced.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.errors import ClientGone, DeadlineExceeded, ServeError, Unavailable
from service.core.runtime import DeviceLost, OutOfMemory
from service.inference.metrics import ModelMetrics

__all__ = ["Batcher", "ClientGone", "DeviceLost", "OutOfMemory"]

log = logging.getLogger("stlight.batching")

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(eq=False)
class _Request:
    clips: np.ndarray  # (n, T, C, H, W), the dtype the run function takes
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)
    dropped: str = ""  # why it was cancelled: "disconnected" or "timeout"


class Batcher:
    """A per-model request queue in front of ``run``: ``await predict(clips)`` -> that caller's rows.

    ``run`` maps (B, ...) to (B, ...) and is only ever called from the batcher's single
    inference thread, with 1 <= B <= ``max_batch_size``.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        queue_size: int,
        timeout_s: float,
        metrics: ModelMetrics,
        max_delay_s: float = 0.0,
        on_fatal: Callable[[str], None] | None = None,
        name: str = "stlight",
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_s < 0 or timeout_s <= 0:
            raise ValueError("max_batch_size and queue_size must be >= 1, max_delay_s >= 0 and timeout_s > 0")
        self.run, self.metrics, self.on_fatal = run, metrics, on_fatal
        self.max_batch_size, self.max_delay_s, self.timeout_s = max_batch_size, max_delay_s, timeout_s
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=queue_size)
        metrics.queue_depth.set_function(self.queue.qsize)  # read at scrape time, never stale
        # one inference thread: session.run already uses every intra-op thread we gave it
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-infer")
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._seconds_per_clip = 0.0  # moving average, for Retry-After
        self.fatal = ""  # why the device is lost; non-empty: the batcher refuses all work

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_queued(Unavailable("shutting-down", "the server is shutting down; retry on another instance"))
        self.executor.shutdown(wait=True)

    async def run_in_worker(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (warm-up uses this so it never overlaps a batch)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def fail(self, reason: str) -> None:
        """Mark the device lost (also for a failed warm-up): answer everyone Unavailable, refuse new
        work, tell ``on_fatal`` once."""
        if self.fatal:
            return
        self.fatal = reason
        log.critical("%s: %s; not ready any more, the process should be replaced", self.name, reason)
        self._fail_queued(self._lost())
        if self.on_fatal:
            self.on_fatal(reason)

    def _lost(self) -> Unavailable:
        return Unavailable(
            "device-failed",
            f"the model cannot run any more ({self.fatal}); retry on another instance",
            retry_after_s=1,
        )

    def _fail_queued(self, problem: ServeError) -> None:
        while not self.queue.empty():
            request = self.queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(problem)

    # requests ------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        backlog_clips = (self.queue.qsize() + 1) * self.max_batch_size
        return max(1, math.ceil(backlog_clips * self._seconds_per_clip))

    async def predict(
        self, clips: np.ndarray, client_gone: Callable[[], Coroutine[Any, Any, object]] | None = None
    ) -> np.ndarray:
        """(n, ...) -> the run's (n, ...) rows for these clips. Raises
        :class:`~service.core.errors.Unavailable` when the queue is full or the device is lost,
        :class:`~service.core.errors.DeadlineExceeded` on timeout, :class:`ClientGone` when
        ``client_gone()`` completes first."""
        if self.fatal:
            raise self._lost()
        loop = asyncio.get_running_loop()
        request = _Request(clips, loop.create_future())
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            self.metrics.dropped.labels("queue_full").inc()
            wait = self.retry_after_s()
            raise Unavailable(
                "queue-full",
                f"all {self.queue.maxsize} queue places are taken; retry in about {wait} s",
                retry_after_s=wait,
            ) from None
        watcher = loop.create_task(client_gone()) if client_gone else None
        waiting: set[asyncio.Future[Any]] = {request.future, watcher} if watcher else {request.future}
        try:
            done, _ = await asyncio.wait(waiting, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the caller's task was cancelled (a gRPC call cancelled or past its deadline)
            request.dropped = "cancelled"
            request.future.cancel()  # a queued clip is dropped, not run
            raise
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
        raise DeadlineExceeded(
            "timeout",
            f"no prediction within {self.timeout_s:g} s (request_timeout_s); the server is overloaded, retry later",
        )

    # the loop ------------------------------------------------------------------------
    def _take(self, request: _Request, batch: list[_Request], clips: int) -> int:
        """Add ``request`` unless its caller is gone; the new clip count."""
        if request.future.done():  # timed out or disconnected while queued
            self.metrics.dropped.labels(request.dropped or "cancelled").inc()
            return clips
        batch.append(request)
        return clips + len(request.clips)

    async def _collect(self, first: _Request) -> tuple[list[_Request], _Request | None]:
        """``first`` plus what has gathered (and, with ``max_delay_s``, what arrives before the
        deadline) up to ``max_batch_size`` clips; a request that would overflow the batch is
        handed back to lead the next one."""
        batch: list[_Request] = []
        clips = self._take(first, batch, 0)
        deadline = time.monotonic() + self.max_delay_s
        while clips < self.max_batch_size:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not batch:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if batch and not nxt.future.done() and clips + len(nxt.clips) > self.max_batch_size:
                return batch, nxt
            clips = self._take(nxt, batch, clips)
        return batch, None

    async def _loop(self) -> None:
        carry: _Request | None = None
        while not self.fatal:
            first = carry or await self.queue.get()
            batch, carry = await self._collect(first)
            live: list[_Request] = []
            for request in batch:  # a caller may have left during a max_delay_s wait
                self._take(request, live, 0)
            if live:
                await self._run_batch(live)
        if carry and not carry.future.done():
            carry.future.set_exception(self._lost())

    def _infer(self, parts: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """On the inference thread: assemble, run in chunks of at most ``max_batch_size``
        (a request may carry more clips), check the row count. Returns the rows and
        (clips, seconds) per run."""
        inputs = np.concatenate(parts) if len(parts) > 1 else parts[0]  # (sum n, ...): the one copy
        outputs: list[np.ndarray] = []
        runs: list[tuple[int, float]] = []
        for start in range(0, len(inputs), self.max_batch_size):
            outputs.append(self._run_chunk(inputs[start : start + self.max_batch_size], runs))
        output = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
        if len(output) != len(inputs):
            raise RuntimeError(f"inference returned {len(output)} rows for {len(inputs)} clips")
        return output, runs

    def _run_chunk(self, chunk: np.ndarray, runs: list[tuple[int, float]]) -> np.ndarray:
        """One run; on :class:`OutOfMemory` with several clips, the halves one after the other
        (a smaller batch often fits where the large one did not)."""
        self.metrics.running.set(len(chunk))
        began = time.perf_counter()
        try:
            out = self.run(chunk)
        except OutOfMemory:
            if len(chunk) == 1:
                raise
            log.warning("%s: out of memory on a batch of %d clips; retrying in halves", self.name, len(chunk))
            half = (len(chunk) + 1) // 2
            return np.concatenate([self._run_chunk(chunk[:half], runs), self._run_chunk(chunk[half:], runs)])
        finally:
            self.metrics.running.set(0)
        runs.append((len(chunk), time.perf_counter() - began))
        if len(out) != len(chunk):
            raise RuntimeError(f"inference returned {len(out)} rows for {len(chunk)} clips")
        return out

    async def _run_batch(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        for request in batch:
            self.metrics.queue_wait.observe(now - request.enqueued)
        loop = asyncio.get_running_loop()
        clips = sum(len(r.clips) for r in batch)
        try:
            output, runs = await loop.run_in_executor(self.executor, self._infer, [r.clips for r in batch])
        except Exception as exc:  # fail this batch's requests; keep serving unless the device is lost
            self._fail_batch(batch, clips, exc)
            return
        for size, elapsed in runs:
            self.metrics.inference.observe(elapsed)
            self.metrics.batch_size.observe(size)
            per_clip = elapsed / size
            self._seconds_per_clip = 0.8 * self._seconds_per_clip + 0.2 * per_clip if self._seconds_per_clip else per_clip
        start = 0
        for request in batch:
            count = len(request.clips)
            if not request.future.done():  # may have timed out or disconnected during inference
                request.future.set_result(output[start : start + count])
            start += count

    def _fail_batch(self, batch: list[_Request], clips: int, exc: Exception) -> None:
        answer: Exception
        if isinstance(exc, DeviceLost):
            self.fail(f"{type(exc).__name__}: {exc}")
            answer = self._lost()
        elif isinstance(exc, OutOfMemory):
            self.metrics.dropped.labels("out_of_memory").inc(len(batch))
            wait = self.retry_after_s()
            log.error("%s: out of memory on a batch of %d clips: %s", self.name, clips, exc)
            answer = Unavailable(
                "out-of-memory",
                f"the device ran out of memory for this request ({clips} clip(s) in the batch); retry in about {wait} s"
                + (", with fewer clips per request" if max(len(r.clips) for r in batch) > 1 else ""),
                retry_after_s=wait,
            )
        else:
            log.error("%s: inference failed for a batch of %d clips", self.name, clips, exc_info=exc)
            answer = exc
        for request in batch:
            if not request.future.done():
                request.future.set_exception(answer)
