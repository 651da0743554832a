"""``stlight predict --url ... --has-targets --report-online``: each batch is predicted in one
request, and its true frames are posted to ``/v1/feedback/{request_id}`` right after, so the
server grades its own answer. The scores the server sends back are summed here per horizon step
(the same running sums as the server's figures), so the run prints the server's view of its
clips beside the metrics it computed itself: the two must agree."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from service.client import ServiceError
from service.inference.online import StepFigures


class FeedbackClient(Protocol):
    def predict_with_id(self, frames: np.ndarray, horizon: int | None = None) -> tuple[np.ndarray, str]: ...

    def feedback(self, request_id: str, truth: np.ndarray) -> dict[str, Any]: ...


class OnlineReport:
    """Predicts a batch and posts its truth; thread-safe (batches run ``--concurrency`` at once)."""

    def __init__(self, client: FeedbackClient, horizon: int | None = None) -> None:
        self.client, self.horizon = client, horizon
        self.figures = StepFigures()
        self.clips = 0
        self.missed = 0  # clips predicted but not graded (their answer expired, a refused truth)
        self.reason = ""
        self._lock = threading.Lock()

    def predict(self, frames: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """(n, T, C, H, W) and its (n, T', C, H, W) truth -> the prediction; a feedback that fails
        is counted as missed (the prediction is still the run's output)."""
        prediction, request_id = self.client.predict_with_id(frames, self.horizon)
        try:
            graded = self.client.feedback(request_id, truth)
            frame_scores = {name: _array(values) for name, values in graded["scores"].items()}
        except (ServiceError, KeyError, TypeError, ValueError) as exc:
            with self._lock:
                self.missed += len(frames)
                self.reason = self.reason or f"{type(exc).__name__}: {exc}"
            return prediction
        with self._lock:
            self.figures.add(frame_scores)
            self.clips += len(frames)
        return prediction

    def lines(self) -> list[str]:
        out = []
        if self.clips:
            m = self.figures.overall()
            out.append(
                f"online (graded by the server) over {self.clips} clip(s): MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  "
                f"PSNR {m['psnr']:.4f} dB  SSIM {m['ssim']:.4f}"
            )
        if self.missed:
            out.append(f"online: {self.missed} clip(s) predicted but not graded ({self.reason})")
        return out


def _array(values: list[list[float | None]]) -> np.ndarray:
    """Per-frame scores from JSON; ``null`` (an exact frame's PSNR) is infinity again."""
    return np.array([[np.inf if v is None else v for v in clip] for clip in values], dtype=np.float64)
