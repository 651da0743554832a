"""The bounded pool that decodes request bodies and encodes answers (videos, images, JSON, large
arrays, OIP tensors), apart from the inference path.

asyncio's default executor has min(32, CPUs + 4) threads and an unbounded queue: six slow
decodes of tiny bodies took every thread of a 2-core box, and a well-formed ``/v2`` request
then waited behind them until its client gave up, while ``/healthz`` stayed green. Here a fixed
number of threads (``STLIGHT_CODEC_WORKERS``) run codec work and at most
``STLIGHT_CODEC_QUEUE`` more wait; one more is refused at once with a 503 and ``Retry-After``
(``codec-busy``) rather than queued behind work it cannot overtake. Inference never waits for
this pool (its batchers have their own thread), so well-formed requests keep their latency, and
``/readyz`` and ``/v2/health/ready`` answer 503 while the pool is full, so a balancer can send
traffic elsewhere.

A job counts against the limit until its thread is done with it, not until its caller stops
waiting: a client that hangs up cannot free a place that a decode still occupies (decoding has
its own deadline, :mod:`service.core.video`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from service.core.errors import Unavailable

# npy and binary-tensor bodies and answers up to this size are decoded/encoded on the event loop:
# ~0.1 ms per 10-frame 64x64 clip, less than the two thread hops that a worker costs, and they
# never wait behind slow decodes in the pool
INLINE_BYTES = 1 << 20
P = ParamSpec("P")
R = TypeVar("R")
RETRY_AFTER_S = 1


class CodecPool:
    """``workers`` threads for decoding and encoding, at most ``queue`` jobs waiting for one."""

    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"workers must be >= 1 and queue >= 0, got {workers} and {queue}")
        self.workers, self.queue = workers, queue
        self.admitted = 0  # running + waiting; changed on the event loop's thread only
        self.refused = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stlight-codec")

    @property
    def running(self) -> int:
        return min(self.admitted, self.workers)

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.workers)

    @property
    def saturated(self) -> bool:
        """No place left: the next job would be refused."""
        return self.admitted >= self.workers + self.queue

    def describe(self) -> dict[str, int]:
        return {"workers": self.workers, "running": self.running, "waiting": self.waiting, "queue": self.queue}

    def busy_error(self) -> Unavailable:
        return Unavailable(
            "codec-busy",
            f"all {self.workers} decode/encode workers are busy and {self.waiting} request(s) wait for them (the most "
            f"that may wait: {self.queue}, STLIGHT_CODEC_QUEUE; workers: STLIGHT_CODEC_WORKERS); retry in about "
            f"{RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
            **self.describe(),
        )

    async def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``function(*args, **kwargs)`` in one of the pool's threads; :class:`Unavailable`
        (503, ``Retry-After``) at once when every place is taken."""
        if self.saturated:
            self.refused += 1
            raise self.busy_error()
        loop = asyncio.get_running_loop()
        self.admitted += 1
        try:
            job: Future[R] = self._executor.submit(functools.partial(function, *args, **kwargs))
        except BaseException:
            self.admitted -= 1
            raise
        # cancelled while it waited: the thread never takes it; running: the place is freed when it ends
        job.add_done_callback(functools.partial(self._done, loop))
        return await asyncio.wrap_future(job)

    def _done(self, loop: asyncio.AbstractEventLoop, _: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nothing counts any more
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self.admitted -= 1

    def close(self) -> None:
        """Drop the jobs still waiting; the running ones finish in their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
