"""OpenSTL metrics against hand-computed values and against skimage itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from model.metrics import MetricAccumulator, compute_metrics, frame_ssim, mae, mse, per_frame_mse, psnr, ssim


def clips(*frames: np.ndarray) -> np.ndarray:
    """One clip (1, T, 1, H, W) from 2-D frames."""
    return np.stack(frames)[None, :, None].astype(np.float64)


def test_mse_and_mae_sum_over_pixels_and_average_over_frames() -> None:
    true = clips(np.zeros((2, 2)), np.zeros((2, 2)))
    pred = clips(np.full((2, 2), 0.5), np.array([[1.0, 0.0], [0.0, 0.0]]))
    # frame 0: 4 pixels * 0.25 = 1.0 squared, 4 * 0.5 = 2.0 absolute; frame 1: 1.0 and 1.0
    assert mse(pred, true) == pytest.approx((1.0 + 1.0) / 2)
    assert mae(pred, true) == pytest.approx((2.0 + 1.0) / 2)
    assert per_frame_mse(pred, true) == pytest.approx([1.0, 1.0])


def test_mse_is_computed_before_clipping_and_psnr_after() -> None:
    true = clips(np.full((4, 4), 0.9))
    pred = clips(np.full((4, 4), 1.5))  # clipped to 1.0: error 0.1 per pixel
    assert mse(pred, true) == pytest.approx(16 * 0.36)
    assert psnr(pred, true) == pytest.approx(20.0)  # 20·log10(1 / 0.1)


def test_psnr_averages_per_frame_values_not_the_pooled_error() -> None:
    true = clips(np.zeros((2, 2)), np.zeros((2, 2)))
    pred = clips(np.full((2, 2), 0.1), np.full((2, 2), 0.01))
    assert psnr(pred, true) == pytest.approx((20.0 + 40.0) / 2)


def test_psnr_of_an_exact_frame_is_infinite() -> None:
    frame = clips(np.full((3, 3), 0.25))
    assert math.isinf(psnr(frame, frame))


def test_ssim_of_constant_frames_by_hand() -> None:
    a, b = 0.2, 0.6
    c1 = (0.01 * 2.0) ** 2  # data_range 2, as OpenSTL's call to skimage amounted to
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are zero, so the contrast term is 1
    assert ssim(clips(np.full((9, 9), a)), clips(np.full((9, 9), b))) == pytest.approx(expected)
    assert ssim(clips(np.full((9, 9), a)), clips(np.full((9, 9), a))) == pytest.approx(1.0)


def test_batched_ssim_matches_skimage_per_frame() -> None:
    rng = np.random.default_rng(3)
    true = rng.random((2, 3, 2, 20, 24))
    pred = np.clip(true + rng.normal(0, 0.2, true.shape), -0.2, 1.2)
    ours = frame_ssim(pred, true)
    for n in range(2):
        for t in range(3):
            # OpenSTL: cal_ssim(pred[b, f].swapaxes(0, 2), true[b, f].swapaxes(0, 2), multichannel=True) on clipped preds
            ref = structural_similarity(
                np.clip(pred[n, t], 0, 1).swapaxes(0, 2), true[n, t].swapaxes(0, 2), channel_axis=-1, data_range=2.0
            )
            assert ours[n, t] == pytest.approx(ref, abs=1e-12)


def test_accumulated_batches_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    true = rng.random((5, 4, 1, 16, 16)).astype(np.float32)
    pred = (true + rng.normal(0, 0.1, true.shape)).astype(np.float32)
    whole = compute_metrics(pred, true)
    acc = MetricAccumulator()
    acc.update(pred[:2], true[:2])
    acc.update(pred[2:], true[2:])
    parts = acc.result()
    for key in ("mse", "mae", "ssim", "psnr"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-9)
    assert parts["per_frame_mse"] == pytest.approx(list(per_frame_mse(pred, true)))
    assert whole["mse"] == pytest.approx(mse(pred, true))


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="N, T, C, H, W"):
        mse(np.zeros((1, 2, 1, 4, 4)), np.zeros((1, 3, 1, 4, 4)))
