"""The batcher's policy in-process: a fake run function on the real inference thread, gated by
events, so each test decides exactly what is running and what waits. No server, no timing ratios.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from service.core.errors import ServeError
from service.inference.batching import Batcher, ClientGone, DeviceLost, OutOfMemory
from service.inference.metrics import ServiceMetrics
from service.server.problems import status_of

CLIP = (2, 1, 3, 3)  # (T, C, H, W): small, the policy does not care


class FakeRun:
    """Records each batch size; while ``gate`` is clear, a run blocks inside (the engine is busy).
    Answers ``clips * 2 + 1``, so every caller can check it got its own rows."""

    def __init__(self, answer: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.answer = answer or (lambda clips: clips * 2 + 1)

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        self.sizes.append(len(clips))
        self.entered.release()
        assert self.gate.wait(30), "test never released the gate"
        return self.answer(clips)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.acquire, True, 30), "the run never started"


def clips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *CLIP), dtype=np.float32)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": "m", "version": "1", **labels}) or 0.0


def run_with(run: FakeRun, test: Callable[[Batcher, ServiceMetrics], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        metrics = ServiceMetrics()
        settings = {"max_batch_size": 8, "queue_size": 64, "timeout_s": 30.0, **options}
        batcher = Batcher(run, metrics=metrics.model("m", "1"), **settings)
        batcher.start()
        try:
            await test(batcher, metrics)
        finally:
            run.gate.set()
            await batcher.stop()

    asyncio.run(main())


async def busy(batcher: Batcher, run: FakeRun) -> asyncio.Task[np.ndarray]:
    """Occupy the engine with one gated single-clip request; returns once it runs."""
    run.gate.clear()
    task = asyncio.create_task(batcher.predict(clips(1, 999)))
    await run.wait_entered()
    return task


# ---------------------------------------------------------------------------------------


def test_a_lone_request_runs_at_once_by_default() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        x = clips(1, 0)
        answer = await asyncio.wait_for(batcher.predict(x), 5)  # a 5 s wait would mean it idled
        np.testing.assert_array_equal(answer, x * 2 + 1)
        assert run.sizes == [1] and batcher.max_delay_s == 0.0

    run_with(run, test)  # no max_delay_s: the default never waits for company


def test_max_delay_waits_for_company_after_the_first_clip() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        first = asyncio.create_task(batcher.predict(clips(1, 0)))
        # queued once (asyncio.Queue counts puts until task_done) and taken: the batcher now waits
        await until(lambda: batcher.queue._unfinished_tasks == 1 and batcher.queue.qsize() == 0)
        second = asyncio.create_task(batcher.predict(clips(1, 1)))
        await asyncio.gather(first, second)
        assert run.sizes == [2]  # one run for both: the extra wait worked

    run_with(run, test, max_delay_s=30.0, max_batch_size=2)


def test_arrivals_gather_while_a_batch_runs_and_the_next_batch_is_cut_at_max_batch_size() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        inputs = [clips(1, i) for i in range(11)]
        tasks = [asyncio.create_task(batcher.predict(x)) for x in inputs]
        await until(lambda: batcher.queue.qsize() == 11)
        run.gate.set()
        answers = await asyncio.gather(*tasks)
        await blocker
        assert run.sizes == [1, 8, 3]  # what gathered during the first run, cut at 8, the rest next
        for x, answer in zip(inputs, answers, strict=True):
            np.testing.assert_array_equal(answer, x * 2 + 1)  # each caller its own rows
        assert sample(metrics, "stlight_batch_size_count") == 3
        assert sample(metrics, "stlight_batch_size_sum") == 12

    run_with(run, test)


def test_a_request_that_would_overflow_leads_the_next_batch_and_an_oversized_one_runs_in_chunks() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        inputs = [clips(3, 0), clips(3, 1), clips(3, 2), clips(20, 3)]
        tasks = [asyncio.create_task(batcher.predict(x)) for x in inputs]
        await until(lambda: batcher.queue.qsize() == 4)
        run.gate.set()
        answers = await asyncio.gather(*tasks)
        await blocker
        # 3+3 fit in 8, the third 3 carries over and runs alone (20 would overflow), 20 -> 8, 8, 4
        assert run.sizes == [1, 6, 3, 8, 8, 4]
        for x, answer in zip(inputs, answers, strict=True):
            assert answer.shape == x.shape
            np.testing.assert_array_equal(answer, x * 2 + 1)

    run_with(run, test)


def test_a_full_queue_answers_503_with_retry_after() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        queued = [asyncio.create_task(batcher.predict(clips(1, i))) for i in range(2)]
        await until(lambda: batcher.queue.qsize() == 2)
        with pytest.raises(ServeError) as refused:
            await batcher.predict(clips(1, 9))
        assert status_of(refused.value) == 503 and refused.value.kind == "queue-full"
        assert refused.value.retry_after_s >= 1
        run.gate.set()
        await asyncio.gather(blocker, *queued)  # the two that got places are answered
        assert sample(metrics, "stlight_dropped_requests_total", reason="queue_full") == 1
        assert sum(run.sizes) == 3

    run_with(run, test, queue_size=2)


def test_a_request_past_its_timeout_gets_504_and_never_runs() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        with pytest.raises(ServeError) as late:
            await batcher.predict(clips(1, 1))  # waits behind the gated run until its time is up
        assert status_of(late.value) == 504 and "request_timeout_s" in late.value.detail
        with pytest.raises(ServeError):
            await blocker  # the running one timed out too; its rows are discarded
        run.gate.set()
        answer = await batcher.predict(clips(2, 2))  # still serving
        assert answer.shape == (2, *CLIP)
        assert run.sizes == [1, 2]  # the timed-out queued request never ran
        assert sample(metrics, "stlight_dropped_requests_total", reason="timeout") == 1
        assert sample(metrics, "stlight_request_timeouts_total") == 2

    run_with(run, test, timeout_s=0.2)


def test_requests_of_departed_clients_are_dropped_before_inference() -> None:
    run = FakeRun()

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        gone = asyncio.Event()
        quitters = [asyncio.create_task(batcher.predict(clips(2, i), gone.wait)) for i in range(2)]
        stayer = asyncio.create_task(batcher.predict(clips(1, 5)))
        await until(lambda: batcher.queue.qsize() == 3)
        gone.set()
        for task in quitters:
            with pytest.raises(ClientGone):
                await task
        run.gate.set()
        np.testing.assert_array_equal(await stayer, clips(1, 5) * 2 + 1)
        await blocker
        assert run.sizes == [1, 1]  # the quitters' 4 clips never ran
        assert sample(metrics, "stlight_dropped_requests_total", reason="disconnected") == 2

    run_with(run, test)


def test_a_wrong_row_count_fails_the_batch_instead_of_shifting_answers() -> None:
    run = FakeRun(answer=lambda clips: (clips * 2 + 1)[:-1] if len(clips) > 1 else clips * 2 + 1)

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        tasks = [asyncio.create_task(batcher.predict(clips(1, i))) for i in range(3)]
        await until(lambda: batcher.queue.qsize() == 3)
        run.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "2 rows for 3 clips" in str(r) for r in results), results
        await blocker
        assert (await batcher.predict(clips(1, 7))).shape == (1, *CLIP)  # and it keeps serving

    run_with(run, test)


def test_out_of_memory_retries_in_halves_then_answers_503_with_retry_after() -> None:
    limit = {"clips": 2}

    def answer(x: np.ndarray) -> np.ndarray:
        if len(x) > limit["clips"]:
            raise OutOfMemory(f"Failed to allocate memory for a batch of {len(x)}")
        return x * 2 + 1

    run = FakeRun(answer)

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        x = clips(4, 0)
        np.testing.assert_array_equal(await batcher.predict(x), x * 2 + 1)  # 4 fails, 2 + 2 fit
        assert run.sizes == [4, 2, 2]
        limit["clips"] = 0
        with pytest.raises(ServeError) as oom:
            await batcher.predict(clips(2, 1))
        assert status_of(oom.value) == 503 and oom.value.kind == "out-of-memory" and "fewer clips" in oom.value.detail
        assert oom.value.retry_after_s >= 1
        limit["clips"] = 8
        assert (await batcher.predict(clips(1, 2))).shape == (1, *CLIP)  # not fatal: still serving
        assert not batcher.fatal

    run_with(run, test)


def test_a_lost_device_fails_everyone_once_and_refuses_new_work() -> None:
    fatal: list[str] = []

    def answer(x: np.ndarray) -> np.ndarray:
        raise DeviceLost("CUDA failure 700: an illegal memory access was encountered")

    run = FakeRun(answer)

    async def test(batcher: Batcher, metrics: ServiceMetrics) -> None:
        blocker = await busy(batcher, run)
        queued = [asyncio.create_task(batcher.predict(clips(1, i))) for i in range(3)]
        await until(lambda: batcher.queue.qsize() == 3)
        run.gate.set()
        results = await asyncio.gather(blocker, *queued, return_exceptions=True)
        for result in results:
            assert isinstance(result, ServeError) and status_of(result) == 503 and result.kind == "device-failed", result
            assert "illegal memory access" in result.detail and result.retry_after_s
        with pytest.raises(ServeError) as refused:
            await batcher.predict(clips(1, 9))
        assert refused.value.kind == "device-failed"
        assert run.sizes == [1]  # nothing ran after the failure
        assert fatal == ["DeviceLost: CUDA failure 700: an illegal memory access was encountered"]  # told once

    batcher_options = {"on_fatal": fatal.append}
    run_with(run, test, **batcher_options)


def test_stop_answers_queued_requests_503() -> None:
    run = FakeRun()

    async def main() -> None:
        batcher = Batcher(run, max_batch_size=8, queue_size=8, timeout_s=30, metrics=ServiceMetrics().model("m", "1"))
        batcher.start()
        blocker = await busy(batcher, run)
        queued = asyncio.create_task(batcher.predict(clips(1, 0)))
        await until(lambda: batcher.queue.qsize() == 1)
        threading.Timer(0.05, run.gate.set).start()
        await batcher.stop()
        with pytest.raises(ServeError) as stopped:
            await queued
        assert status_of(stopped.value) == 503 and stopped.value.kind == "shutting-down"
        blocker.cancel()

    asyncio.run(main())


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(FakeRun(), max_batch_size=0, queue_size=1, timeout_s=1, metrics=ServiceMetrics().model("m", "1"))
