"""Online accuracy: the predictions a server answered, kept (bounded in bytes and time, in
memory only) until their true frames arrive by ``POST /v1/feedback/{request_id}``, then graded
per horizon step with the same numpy scores ``stlight predict --has-targets`` uses."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core import scores
from service.core.card import ClipSpec
from service.core.errors import NotFound, Unprocessable
from service.core.frames import shape_text


@dataclass(frozen=True)
class Kept:
    """One answer waiting for its truth: float16 frames (half of float32's bytes; grading
    error ~1e-4 of a [0, 1] pixel, far below any model's error)."""

    model: str
    version: str
    frames: np.ndarray  # (B, N, C, H, W) float16
    at: float

    def truth_spec(self, frames: int | None = None) -> ClipSpec:
        """The clip shape the truth is decoded against: the first ``frames`` (1..N) of the
        prediction when a body declares them (partial truth), else all N."""
        _, n, c, h, w = self.frames.shape
        k = frames if frames is not None and 1 <= frames <= n else n
        return ClipSpec(k, k, c, h, w)


@dataclass(frozen=True)
class Graded:
    """One answer graded: per-frame ``(B, k)`` scores (MSE, MAE, PSNR, SSIM)."""

    request_id: str
    model: str
    version: str
    scores: dict[str, np.ndarray]

    @property
    def frames(self) -> int:
        return int(self.scores["mse"].shape[1])

    def document(self) -> dict[str, object]:
        """The JSON answer of ``POST /v1/feedback/{request_id}``."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "frames": self.frames,
            "scores": {name: [[_finite(v) for v in clip] for clip in values.tolist()] for name, values in self.scores.items()},
        }


@dataclass
class StepFigures:
    """Running sums per horizon step: a mean over every frame graded at that step."""

    sums: list[scores.ScoreSums] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)  # summed per step; ScoreSums has no SSIM
    graded: int = 0
    expired: int = 0

    def add(self, frame_scores: dict[str, np.ndarray]) -> None:
        steps = frame_scores["mse"].shape[1]
        while len(self.sums) < steps:
            self.sums.append(scores.ScoreSums())
            self.ssim.append(0.0)
        for step in range(steps):
            s = self.sums[step]
            s.squared += float(frame_scores["mse"][:, step].sum())
            s.absolute += float(frame_scores["mae"][:, step].sum())
            s.psnr += float(frame_scores["psnr"][:, step].sum())
            self.ssim[step] += float(frame_scores["ssim"][:, step].sum())
            s.frames += frame_scores["mse"].shape[0]
        self.graded += 1

    def describe(self) -> dict[str, object]:
        return {
            "graded": self.graded,
            "expired": self.expired,
            # JSON has no infinity: a step whose graded frames include an exact one has PSNR null
            "steps": [{k: _finite(v) for k, v in self.step(i).items()} for i, s in enumerate(self.sums) if s.frames],
        }

    def overall(self) -> dict[str, float | int]:
        """Mean MSE, MAE, PSNR and SSIM over every graded frame, all steps together."""
        frames = sum(s.frames for s in self.sums)
        if not frames:
            raise ValueError("no frames were graded")
        total = scores.ScoreSums(frames, *(sum(getattr(s, a) for s in self.sums) for a in ("squared", "absolute", "psnr")))
        return {"frames": frames, **total.result(), "ssim": sum(self.ssim) / frames}

    def step(self, index: int) -> dict[str, float | int]:
        """Mean MSE, MAE, PSNR and SSIM of the frames graded at step ``index + 1``."""
        s = self.sums[index]
        return {"step": index + 1, "frames": s.frames, **s.result(), "ssim": self.ssim[index] / s.frames}


def grade(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame ``(B, k)`` scores of the first k predicted frames against k true ones."""
    pred = pred[:, : truth.shape[1]].astype(np.float32)
    return {
        "mse": scores.frame_squared_error(pred, truth),
        "mae": scores.frame_absolute_error(pred, truth),
        "psnr": scores.frame_psnr(pred, truth),
        "ssim": scores.frame_ssim(pred, truth),
    }


class AnswerStore:
    """LRU of kept answers by request id with a byte budget and a time-to-live. Thread-safe
    (predictions finish on the event loop, a scrape reads from another thread)."""

    def __init__(
        self, budget_bytes: int, ttl_s: float, on_figures: Callable[[str, str, StepFigures], None] | None = None
    ) -> None:
        self.budget_bytes, self.ttl_s = budget_bytes, ttl_s
        self.on_figures = on_figures
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.figures: dict[tuple[str, str], StepFigures] = {}
        self._touched: set[tuple[str, str]] = set()  # models whose expired count changed, to publish

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._kept)

    def _figures(self, model: str, version: str) -> StepFigures:
        return self.figures.setdefault((model, version), StepFigures())

    def _drop(self, request_id: str, expired: bool) -> None:
        kept = self._kept.pop(request_id)
        self._bytes -= kept.frames.nbytes
        if expired:
            self._figures(kept.model, kept.version).expired += 1
            self._touched.add((kept.model, kept.version))

    def _expire(self, now: float) -> None:
        while self._kept:
            oldest_id, oldest = next(iter(self._kept.items()))
            if now - oldest.at < self.ttl_s:
                break
            self._drop(oldest_id, expired=True)

    def _publish(self) -> None:
        """Tell ``on_figures`` of the models whose counts changed (a few Prometheus gauges)."""
        if not self._touched:
            return
        with self._lock:  # under the lock: two publishers must not set the gauges out of order
            touched, self._touched = self._touched, set()
            if self.on_figures is not None:
                for model, version in touched:
                    self.on_figures(model, version, self.figures[(model, version)])

    def held(self) -> tuple[int, int]:
        """Answers kept and their bytes, once those past their time-to-live are dropped (a
        Prometheus scrape calls this, so an idle server's memory and counts stay current)."""
        with self._lock:
            self._expire(time.monotonic())
            held = len(self._kept), self._bytes
        self._publish()
        return held

    def step_sums(self) -> dict[tuple[str, str, str], tuple[int, dict[str, float]]]:
        """(model, version, step) -> frames graded and the sums of their scores, for a scrape."""
        with self._lock:
            return {
                (model, version, str(index + 1)): (
                    s.frames,
                    {"mse": s.squared, "mae": s.absolute, "psnr": s.psnr, "ssim": figures.ssim[index]},
                )
                for (model, version), figures in self.figures.items()
                for index, s in enumerate(figures.sums)
                if s.frames
            }

    def keep(self, request_id: str, model: str, version: str, prediction: np.ndarray) -> None:
        frames = prediction.astype(np.float16)
        if self.budget_bytes <= 0 or frames.nbytes > self.budget_bytes:
            return
        now = time.monotonic()
        with self._lock:
            if request_id in self._kept:  # a caller reusing its id: the older answer goes ungraded
                self._drop(request_id, expired=True)
            self._expire(now)
            while self._bytes + frames.nbytes > self.budget_bytes:  # least recently kept first
                self._drop(next(iter(self._kept)), expired=True)
            self._kept[request_id] = Kept(model, version, frames, now)
            self._bytes += frames.nbytes
        self._publish()

    def get(self, request_id: str, model: str | None = None, version: str | None = None) -> Kept:
        """The answer kept under ``request_id``; with ``model`` (and ``version``), only when
        that model (version) made it, so a feedback names the model it grades."""
        with self._lock:
            self._expire(time.monotonic())
            kept = self._kept.get(request_id)
        self._publish()
        if kept is None:
            raise NotFound(
                "unknown-request-id",
                f"no prediction {request_id!r} is kept: unknown, already graded, or older than {self.ttl_s:g} s "
                "(or pushed out by the byte budget)",
            )
        if (model is not None and kept.model != model) or (version is not None and kept.version != version):
            asked = f"model {model!r}" + (f" version {version!r}" if version is not None else "")
            raise NotFound(
                "unknown-request-id",
                f"prediction {request_id!r} was made by model {kept.model!r} version {kept.version!r}, not by {asked}",
            )
        return kept

    def grade(self, request_id: str, truth: np.ndarray, model: str | None = None, version: str | None = None) -> Graded:
        """Grade kept ``request_id`` on ``truth`` (B, k, C, H, W), k ≤ its frames; forget it."""
        kept = self.get(request_id, model, version)
        b, n = kept.frames.shape[:2]
        if truth.ndim != 5 or truth.shape[0] != b or not 1 <= truth.shape[1] <= n or truth.shape[2:] != kept.frames.shape[2:]:
            raise Unprocessable(
                "wrong-shape",
                f"the truth for {request_id!r} must be {shape_text((b, n, *kept.frames.shape[2:]))} frames "
                f"(or its first k ≤ {n} frames); got {shape_text(truth.shape)}",
            )
        frame_scores = grade(kept.frames, truth)
        with self._lock:
            if self._kept.get(request_id) is not kept:  # graded by a concurrent feedback meanwhile
                raise NotFound("unknown-request-id", f"prediction {request_id!r} was graded already")
            self._drop(request_id, expired=False)
            self._figures(kept.model, kept.version).add(frame_scores)
            self._touched.add((kept.model, kept.version))
        self._publish()
        return Graded(request_id, kept.model, kept.version, frame_scores)

    def describe(self, model: str, version: str) -> dict[str, object]:
        with self._lock:
            self._expire(time.monotonic())
            described = self._figures(model, version).describe()
        self._publish()
        return described


def _finite(value: float | int) -> float | int | None:
    """JSON has no infinity: an exact frame's PSNR is null."""
    return value if np.isfinite(value) else None
