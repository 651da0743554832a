"""Running: read each input, share batches of clips across inputs, run them on a predictor
(local ONNX Runtime or a remote service), write the outputs and score them.

A predictor is anything with ``spec`` and ``predict((n, T, C, H, W) float32) -> (n, T', C, H,
W)`` (:class:`service.client.Client` or :class:`~service.client.LocalClient`). Bad inputs are
recorded with the reason; the rest go on."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.batch.inputs import Source, finished
from service.batch.online import OnlineReport
from service.batch.readers import UNUSABLE, InputClips, VideoReading, read_npy, read_source, split_checked
from service.batch.writers import commit_output, discard_output, new_output, write_images
from service.client import ServiceUnreachable
from service.core.card import ClipSpec
from service.core.errors import InputError
from service.core.frames import shape_text
from service.core.scores import ScoreSums


class Predictor(Protocol):
    @property
    def spec(self) -> ClipSpec: ...

    def predict(self, frames: np.ndarray) -> np.ndarray: ...


class HorizonClient(Protocol):
    @property
    def spec(self) -> ClipSpec: ...

    def predict(self, frames: np.ndarray, horizon: int | None = None) -> np.ndarray: ...


class Rollout:
    """A predictor of ``horizon`` frames from a client that rolls its model forward
    (:class:`~service.client.Client` asks the service to, :class:`~service.client.LocalClient`
    does it in process); its ``spec`` says T' = horizon, so outputs and targets have that length."""

    def __init__(self, client: HorizonClient, horizon: int) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.client, self.horizon = client, horizon
        s = client.spec
        self.spec = ClipSpec(s.in_frames, horizon, s.channels, s.height, s.width)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        return self.client.predict(frames, horizon=self.horizon)


@dataclass
class Job:
    """One input in flight: its raw clips, the output being filled, clips still to come."""

    source: Source
    clips: InputClips
    output: np.ndarray  # (N, T', C, H, W) float32 view of ``result``
    result: np.ndarray  # the input's leading shape; in memory, or memory-mapped onto its .partial file when large
    remaining: int
    error: str = ""


@dataclass
class Segment:
    job: Job
    start: int
    inputs: np.ndarray  # (n, T, C, H, W) float32
    targets: np.ndarray | None


@dataclass
class Summary:
    inputs: int = 0
    done: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    scored_clips: int = 0
    stopped: str = ""  # why the run stopped early (the service became unreachable), else ""
    online: OnlineReport | None = None  # --report-online: the server's grades of this run's clips
    # the running sums behind ``metrics``: runs over parts of a set (Ray actors) add these, then score once
    scores: ScoreSums = field(default_factory=ScoreSums)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"{self.clips} clip(s) from {self.done} input(s) in {self.seconds:.2f} s ({self.clips_per_s:.1f} clips/s); "
            f"{self.skipped} skipped (outputs exist; --overwrite redoes them); {len(self.failures)} failed"
        ]
        if self.metrics is not None:
            m = self.metrics
            out.append(
                f"metrics over {self.scored_clips} clip(s): MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  PSNR {m['psnr']:.4f} dB"
            )
        if self.online is not None:
            out.extend(self.online.lines())
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        return out


class _Run:
    """State of one :func:`predict_files` call."""

    def __init__(
        self,
        predictor: Predictor,
        total: int,
        *,
        png: bool,
        gif: bool,
        video: bool,
        reading: VideoReading | None,
        has_targets: bool,
        batch_size: int,
        concurrency: int,
        progress: bool,
        online: OnlineReport | None = None,
        echo_failures: bool = True,
    ) -> None:
        from tqdm import tqdm

        self.echo_failures = echo_failures
        self.predictor, self.spec = predictor, predictor.spec
        self.png, self.gif, self.video, self.has_targets = png, gif, video, has_targets
        self.reading = reading
        self.batch_size, self.concurrency = batch_size, concurrency
        self.summary = Summary(online=online)
        self.scores = self.summary.scores
        self.bar = tqdm(total=total, unit="input", desc="predict", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="stlight-predict")
        self.in_flight: dict[Future[np.ndarray], list[Segment]] = {}
        self.pending: list[Segment] = []
        self.pending_clips = 0

    # one input -----------------------------------------------------------------------------
    def skip(self, source: Source) -> None:
        """An input whose outputs exist; with targets its old prediction is still scored, so a
        resumed run reports the whole set."""
        self.summary.skipped += 1
        if self.has_targets:
            try:
                self.score_existing(source)
            except (InputError, OSError) as exc:
                self.fail(source.name, str(exc))
        self.bar.update(1)

    def start(self, source: Source) -> None:
        """Read an input and queue its clips; one that cannot be read is a failure, not a crash."""
        try:
            clips = read_source(source.path, source.kind, self.spec, self.has_targets, self.reading)
            shape = (len(clips.raw), *self.spec.output_shape) if clips.batched else self.spec.output_shape
            output = new_output(source, shape)
        except InputError as exc:
            self.fail(source.name, str(exc))
            self.bar.update(1)
            return
        except OSError as exc:
            self.fail(source.name, f"cannot read it or write its output: {exc}")
            self.bar.update(1)
            return
        except Exception as exc:
            self.fail(source.name, f"unreadable ({type(exc).__name__}: {exc})")
            self.bar.update(1)
            return
        view = output if clips.batched else output[None]  # (N, T', C, H, W)
        self.add(Job(source, clips, view, output, remaining=len(clips.raw)))

    def not_attempted(self, sources: Sequence[Source]) -> None:
        """After an early stop: the inputs never reached are failures too, so none goes unreported."""
        done = {name for name, _ in self.summary.failures}
        for source in sources:
            if source.name not in done and not source.npy.is_file():
                self.summary.failures.append((source.name, "not attempted: the run stopped early"))

    # bookkeeping ---------------------------------------------------------------------
    def fail(self, name: str, reason: str) -> None:
        self.summary.failures.append((name, reason))
        if self.echo_failures:
            self.bar.write(f"stlight predict: {name}: {reason}", file=sys.stderr)

    def finish(self, job: Job) -> None:
        result, job.output, job.result = job.result, np.empty(0), np.empty(0)
        if not job.error:
            try:
                commit_output(job.source, result)
                self.summary.done += 1
            except OSError as exc:
                job.error = f"cannot write {job.source.npy}: {exc}"
        if job.error:
            discard_output(job.source)
            self.fail(job.source.name, job.error)
        self.bar.update(1)

    # batches -------------------------------------------------------------------------
    def add(self, job: Job) -> None:
        """Queue ``job``'s clips, checked and converted a batch at a time."""
        raw = job.clips.raw
        for start in range(0, len(raw), self.batch_size):
            if job.error:
                job.remaining -= len(raw) - start  # the rest of a failed input is not sent
                break
            chunk = raw[start : start + self.batch_size]
            label = f"clips {start}-{start + len(chunk) - 1}" if job.clips.batched else "clip"
            try:
                inputs, targets = split_checked(chunk, self.spec, self.has_targets, label)
            except (InputError, OSError) as exc:
                job.error, job.remaining = str(exc), job.remaining - (len(raw) - start)
                break
            self._queue(Segment(job, start, inputs, targets))
        if job.remaining == 0:
            self.finish(job)

    def _queue(self, segment: Segment) -> None:
        """Append to the batch being built; full batches go to the pool. A segment may be split
        across two batches (one input's clips in several batches, several inputs in one)."""
        while len(segment.inputs):
            room = self.batch_size - self.pending_clips
            head = Segment(
                segment.job, segment.start, segment.inputs[:room], None if segment.targets is None else segment.targets[:room]
            )
            self.pending.append(head)
            self.pending_clips += len(head.inputs)
            segment = Segment(
                segment.job,
                segment.start + room,
                segment.inputs[room:],
                None if segment.targets is None else segment.targets[room:],
            )
            if self.pending_clips == self.batch_size:
                self.submit()

    def submit(self) -> None:
        if not self.pending:
            return
        while len(self.in_flight) >= 2 * self.concurrency:  # bounded: never more than this in memory
            self.collect(block=True)
        segments, self.pending, self.pending_clips = self.pending, [], 0
        batch = np.concatenate([s.inputs for s in segments])  # (n, T, C, H, W)
        online = self.summary.online
        targets = [s.targets for s in segments if s.targets is not None]
        if online is not None and len(targets) == len(segments):  # the truth follows the prediction
            future = self.pool.submit(online.predict, batch, np.concatenate(targets))
        else:
            future = self.pool.submit(self.predictor.predict, batch)
        self.in_flight[future] = segments

    def collect(self, block: bool) -> None:
        if not self.in_flight:
            return
        done, _ = wait(list(self.in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            segments = self.in_flight.pop(future)
            try:
                prediction = future.result()
                error = ""
            except ServiceUnreachable as exc:
                self.summary.stopped = str(exc)
                prediction, error = None, f"not predicted: {exc}"
            except Exception as exc:
                prediction, error = None, f"prediction failed: {type(exc).__name__}: {exc}"
            offset = 0
            for segment in segments:
                job, n = segment.job, len(segment.inputs)
                if prediction is not None and not job.error:
                    part = prediction[offset : offset + n]  # (n, T', C, H, W)
                    try:
                        job.output[segment.start : segment.start + n] = part
                        write_images(
                            job.source,
                            job.clips.batched,
                            segment.start,
                            segment.inputs,
                            part,
                            self.png,
                            self.gif,
                            self.video,
                            job.clips.fps,
                        )
                    except OSError as exc:
                        job.error = f"cannot write outputs: {exc}"
                    else:
                        self.summary.clips += n
                        if segment.targets is not None:
                            self.scores.update(part, segment.targets)
                            self.summary.scored_clips += n
                elif not job.error:
                    job.error = error
                offset += n
                job.remaining -= n
                if job.remaining == 0:
                    self.finish(job)
            self.bar.set_postfix(clips=self.summary.clips, refresh=False)

    def drain(self) -> None:
        if self.summary.stopped:  # the service is gone: do not send what is still waiting
            segments, self.pending, self.pending_clips = self.pending, [], 0
            for segment in segments:
                job = segment.job
                job.error = job.error or "not predicted: the run stopped early"
                job.remaining -= len(segment.inputs)
                if job.remaining == 0:
                    self.finish(job)
        self.submit()
        while self.in_flight:
            self.collect(block=True)

    # skipped inputs still count in the metrics -----------------------------------------
    def score_existing(self, source: Source) -> None:
        clips = read_source(source.path, source.kind, self.spec, True, self.reading)
        prediction = read_npy(source.npy)
        expected = (len(clips.raw), *self.spec.output_shape)
        got = prediction.shape if clips.batched else (1, *prediction.shape)
        if tuple(got) != expected:
            raise InputError(
                UNUSABLE,
                f"its existing output {source.npy} has shape {shape_text(prediction.shape)}, not the model's; pass --overwrite",
            )
        prediction = prediction.reshape(expected)
        for start in range(0, len(clips.raw), self.batch_size):
            _, targets = split_checked(clips.raw[start : start + self.batch_size], self.spec, True, "clips")
            assert targets is not None
            self.scores.update(np.asarray(prediction[start : start + self.batch_size], dtype=np.float32), targets)
            self.summary.scored_clips += len(targets)


def predict_files(
    sources: Sequence[Source],
    predictor: Predictor,
    *,
    png: bool = False,
    gif: bool = False,
    video: bool = False,
    reading: VideoReading | None = None,
    overwrite: bool = False,
    has_targets: bool = False,
    batch_size: int = 8,
    concurrency: int = 1,
    progress: bool = True,
    online: OnlineReport | None = None,
    echo_failures: bool = True,
) -> Summary:
    """Predict every source and write its outputs; failures are recorded in the summary.

    ``concurrency`` batches run at once (remote: requests in flight; local: 1 is best, ONNX
    Runtime already uses every core). With ``has_targets`` the metrics cover skipped inputs too
    (read back from their outputs), so a resumed run reports the whole set. ``video`` writes
    ``<stem>.mp4`` (input then prediction); ``reading`` says how video files become clips.
    ``online`` (with ``has_targets``): predicts each batch instead of ``predictor`` and has the
    server grade it by its truth; skipped inputs are scored offline only (nothing is sent).
    ``echo_failures``: print each failure to stderr as it happens (the summary has them either way)."""
    if (png or gif or video) and predictor.spec.channels not in (1, 3):
        raise ValueError(f"--png/--gif/--video need 1- or 3-channel frames; this model predicts {predictor.spec.channels}")
    run = _Run(
        predictor,
        len(sources),
        png=png,
        gif=gif,
        video=video,
        reading=reading,
        has_targets=has_targets,
        batch_size=batch_size,
        concurrency=concurrency,
        progress=progress,
        online=online,
        echo_failures=echo_failures,
    )
    run.summary.inputs = len(sources)
    began = time.perf_counter()
    try:
        for source in sources:
            if run.summary.stopped:
                break
            run.collect(block=False)
            if not overwrite and finished(source, png, gif, video):
                run.skip(source)
            else:
                run.start(source)
        run.drain()
    finally:
        run.pool.shutdown(cancel_futures=True)
        run.bar.close()
    run.summary.seconds = time.perf_counter() - began
    if run.summary.stopped:
        run.not_attempted(sources)
    if run.scores.frames:
        run.summary.metrics = run.scores.result()
    return run.summary
