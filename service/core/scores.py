"""OpenSTL's MSE, MAE and PSNR in numpy, on ``(N, T, C, H, W)`` arrays with values in [0, 1].

Torch- and scipy-free so that ``stlight predict --has-targets`` scores clips in the serving
install; ``model/metrics.py`` builds its full set (SSIM included) on these same functions.

- MSE / MAE: the **sum** over C·H·W of the squared / absolute error, averaged over clips and
  frames; computed on raw predictions (before clipping).
- PSNR: per frame ``20·log10(1 / sqrt(mean over C·H·W of squared error))`` on predictions
  clipped to [0, 1], averaged over all frames (``inf`` for an exact frame, as OpenSTL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def check_pair(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape or pred.ndim != 5:
        raise ValueError(f"pred and true must both be (N, T, C, H, W); got {pred.shape} and {true.shape}")


def frame_squared_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(N, T)``: the squared error of each frame summed over C·H·W."""
    check_pair(pred, true)
    return np.sum((pred.astype(np.float64) - true) ** 2, axis=(2, 3, 4))


def frame_absolute_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(N, T)``: the absolute error of each frame summed over C·H·W."""
    check_pair(pred, true)
    return np.sum(np.abs(pred.astype(np.float64) - true), axis=(2, 3, 4))


def frame_psnr(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(N, T)`` PSNR of every frame, predictions clipped to [0, 1]; ``inf`` for an exact frame."""
    check_pair(pred, true)
    err = np.mean((np.clip(pred.astype(np.float64), 0, 1) - true) ** 2, axis=(2, 3, 4))
    with np.errstate(divide="ignore"):
        return np.asarray(20 * np.log10(1 / np.sqrt(err)))


SSIM_DATA_RANGE = 2.0  # what OpenSTL's call amounted to (see model/metrics.py)


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over a ``size``×``size`` window on the last two axes, edges mirrored as scipy's
    ``uniform_filter`` (mode "reflect": d c b a | a b c d), by running sums."""
    pad = size // 2
    padded = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(pad, pad), (pad, pad)], mode="symmetric")
    for axis in (-1, -2):
        sums = np.cumsum(padded, axis=axis)
        zero = np.zeros_like(np.take(sums, [0], axis=axis))
        sums = np.concatenate([zero, sums], axis=axis)
        n = sums.shape[axis]
        padded = (np.take(sums, range(size, n), axis=axis) - np.take(sums, range(0, n - size), axis=axis)) / size
    return padded


def frame_ssim(pred: np.ndarray, true: np.ndarray, data_range: float = SSIM_DATA_RANGE, win_size: int = 7) -> np.ndarray:
    """``(N, T)`` SSIM of every frame (predictions clipped to [0, 1]), channels averaged:
    skimage's ``structural_similarity`` defaults (7×7 uniform window, K1 0.01, K2 0.03, sample
    covariance), as OpenSTL scores it."""
    check_pair(pred, true)
    x = np.clip(pred.astype(np.float64), 0, 1)
    y = true.astype(np.float64)
    ux, uy = _box_mean(x, win_size), _box_mean(y, win_size)
    cov_norm = win_size**2 / (win_size**2 - 1)  # sample covariance, as skimage
    vx = cov_norm * (_box_mean(x * x, win_size) - ux * ux)
    vy = cov_norm * (_box_mean(y * y, win_size) - uy * uy)
    vxy = cov_norm * (_box_mean(x * y, win_size) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))  # (N, T, C, H, W)
    pad = (win_size - 1) // 2
    return np.asarray(s[..., pad:-pad, pad:-pad].mean(axis=(3, 4)).mean(axis=2))


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(frame_squared_error(pred, true)))


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(frame_absolute_error(pred, true)))


def psnr(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(frame_psnr(pred, true)))


@dataclass
class ScoreSums:
    """Running sums over predicted frames, so a dataset streamed in batches scores exactly as
    if it were scored at once (each metric is a mean over frames)."""

    frames: int = 0
    squared: float = 0.0
    absolute: float = 0.0
    psnr: float = 0.0

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        """``pred`` and ``true``: (N, T', C, H, W) in [0, 1]."""
        squared = frame_squared_error(pred, true)
        self.squared += float(squared.sum())
        self.absolute += float(frame_absolute_error(pred, true).sum())
        self.psnr += float(frame_psnr(pred, true).sum())
        self.frames += squared.size

    def result(self) -> dict[str, float]:
        if not self.frames:
            raise ValueError("no frames were scored")
        return {"mse": self.squared / self.frames, "mae": self.absolute / self.frames, "psnr": self.psnr / self.frames}
