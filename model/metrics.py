"""OpenSTL's video prediction metrics (the paper's tables use them), on numpy arrays
``(N, T, C, H, W)`` with values in [0, 1].

- MSE / MAE / PSNR: defined once in :mod:`service.core.scores` (numpy only, so ``stlight predict``
  scores with the same code in the serving install) and re-exported here.
- SSIM: per frame, skimage's ``structural_similarity`` defaults (7×7 uniform window, K1 0.01,
  K2 0.03, sample covariance), channels averaged, averaged over all frames. OpenSTL passes float
  frames without ``data_range``; the skimage versions it ran on then used the float dtype range
  (-1, 1), i.e. ``data_range = 2``, which is our default. Computed in :mod:`service.core.scores`
  for a whole batch at once (numpy only, so the server grades with it too; same arithmetic as
  skimage; ``tests/test_metrics.py`` checks it against skimage).
- per-frame MSE: the MSE above for each predicted frame index separately.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.core.scores import (
    SSIM_DATA_RANGE,
    frame_absolute_error,
    frame_psnr,
    frame_squared_error,
    frame_ssim,
    mae,
    mse,
    psnr,
)

__all__ = ["MetricAccumulator", "compute_metrics", "frame_psnr", "frame_ssim", "mae", "mse", "per_frame_mse", "psnr", "ssim"]


def per_frame_mse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(T,)``: the summed squared error of frame t, averaged over clips."""
    return np.mean(frame_squared_error(pred, true), axis=0)


def ssim(pred: np.ndarray, true: np.ndarray, data_range: float = SSIM_DATA_RANGE) -> float:
    return float(np.mean(frame_ssim(pred, true, data_range)))


def compute_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float | list[float]]:
    """All metrics of one batch; see :class:`MetricAccumulator` for a whole dataset."""
    acc = MetricAccumulator()
    acc.update(pred, true)
    return acc.result()


class MetricAccumulator:
    """Streams batches and returns the dataset-level metrics, equal to computing them on all
    clips at once (each metric is a mean over clips or frames)."""

    def __init__(self) -> None:
        self.clips = 0
        self.frame_sq: np.ndarray | None = None  # (T,) summed over clips
        self.frame_abs: np.ndarray | None = None
        self.psnr_sum = 0.0
        self.ssim_sum = 0.0

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        sq = frame_squared_error(pred, true).sum(axis=0)  # (T,)
        ab = frame_absolute_error(pred, true).sum(axis=0)
        self.frame_sq = sq if self.frame_sq is None else self.frame_sq + sq
        self.frame_abs = ab if self.frame_abs is None else self.frame_abs + ab
        self.psnr_sum += float(frame_psnr(pred, true).sum())
        self.ssim_sum += float(frame_ssim(pred, true).sum())
        self.clips += len(pred)

    def reduce(self, all_reduce_sum: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the sums by their totals over processes that each accumulated other clips
        (``all_reduce_sum``: element-wise sum over processes); the result is then that of all clips."""
        if self.frame_sq is None or self.frame_abs is None:
            raise ValueError("no clips were added")
        t = len(self.frame_sq)
        totals = all_reduce_sum(np.concatenate([[self.clips, self.psnr_sum, self.ssim_sum], self.frame_sq, self.frame_abs]))
        self.clips, self.psnr_sum, self.ssim_sum = round(float(totals[0])), float(totals[1]), float(totals[2])
        self.frame_sq, self.frame_abs = totals[3 : 3 + t], totals[3 + t :]

    def result(self) -> dict[str, float | list[float]]:
        if not self.clips or self.frame_sq is None or self.frame_abs is None:
            raise ValueError("no clips were added")
        frames = self.clips * len(self.frame_sq)
        per_frame = self.frame_sq / self.clips
        return {
            "mse": float(per_frame.mean()),
            "mae": float((self.frame_abs / self.clips).mean()),
            "ssim": self.ssim_sum / frames,
            "psnr": self.psnr_sum / frames,
            "per_frame_mse": [float(v) for v in per_frame],
        }
