"""Longer horizons by rollout: predict N frames with a model that predicts T' at a time.

Each step feeds the model the last T frames of (input + predictions so far), exactly as if a
caller fed the predictions back by hand; predictions are fed back unclipped, as the model
produced them. Errors compound: every step after the first works from predicted, not observed,
frames. N <= T' is one run, of which the first N frames are returned.

numpy only; the same plan serves the service (async, every step through the batcher), the
local client and ``stlight predict`` (sync).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from service.core.errors import LimitExceeded, TooLarge, Unprocessable
from service.core.limits import MAX_HORIZON, AnswerCost


def check_limit(horizon: int, max_horizon: int, name: str = "horizon") -> int:
    """``horizon``, unless it is beyond the server's limit: :class:`LimitExceeded`
    (``horizon-too-far``), whichever protocol asked (``name`` says how it was asked)."""
    if horizon > max_horizon:
        raise LimitExceeded(
            "horizon-too-far",
            f"{name}={horizon} is beyond this server's limit of {max_horizon} frames (STLIGHT_MAX_HORIZON)",
        )
    return horizon


def check_frames_out(clips: int, frames: int, max_frames_out: int) -> None:
    """Refuse (:class:`TooLarge`, ``answer-too-large``) before any model run a request whose
    answer, ``clips`` x ``frames``, is beyond the server's budget: the answer is held whole while
    it is encoded, so a small body asking a long horizon for many clips would otherwise cost
    gigabytes, whichever protocol carried it."""
    if clips * frames > max_frames_out:
        raise TooLarge(
            "answer-too-large",
            f"{clips} clip(s) x {frames} frames = {clips * frames:,} frames to answer is beyond this server's limit of "
            f"{max_frames_out:,} frames per request (STLIGHT_MAX_FRAMES_OUT); send fewer clips or a shorter horizon",
            max_frames_out=max_frames_out,
        )


def check_answer_bytes(clips: int, frames: int, frame_values: int, cost: AnswerCost, max_answer_mb: float) -> None:
    """Refuse (:class:`TooLarge`, ``answer-too-large``) before any model run an answer whose
    format would hold more than ``max_answer_mb`` while it is built: ``clips`` x ``frames`` x
    ``frame_values`` (C x H x W) values at ``cost.bytes_per_value`` each."""
    held = clips * frames * frame_values * cost.bytes_per_value
    if held > max_answer_mb * 2**20:
        raise TooLarge(
            "answer-too-large",
            f"{clips} clip(s) x {frames} frames of {frame_values:,} values as {cost.name} take about "
            f"{held / 2**20:,.0f} MiB while the answer is built ({cost.bytes_per_value:g} bytes a value), beyond this "
            f"server's limit of {max_answer_mb:g} MiB (STLIGHT_MAX_ANSWER_MB); ask for npy or binary tensors (4 bytes a "
            "value), fewer clips or a shorter horizon",
            max_answer_mb=max_answer_mb,
        )


def from_parameters(parameters: Mapping[str, Any], max_horizon: int = MAX_HORIZON) -> int | None:
    """The ``horizon`` of an Open Inference Protocol request's ``parameters`` object (REST:
    ``"parameters": {"horizon": 25}``), or None when absent. The /v2 infer route rolls out with
    :func:`rollout_async` when it is set, exactly as ``/predict?horizon=`` does."""
    if "horizon" not in parameters:
        return None
    value = parameters["horizon"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Unprocessable("invalid-horizon", f"parameters.horizon must be an integer >= 1 (frames to predict), got {value!r}")
    return check_limit(value, max_horizon, "parameters.horizon")


def steps(horizon: int, out_frames: int) -> int:
    """Model runs needed for ``horizon`` frames."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return math.ceil(horizon / out_frames)


def next_window(window: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(B, T, ...) and (B, T', ...) -> the last T frames of both, the next step's input."""
    in_frames = window.shape[1]
    return np.concatenate([window, prediction], axis=1)[:, -in_frames:]  # (B, T, C, H, W)


def rollout(predict: Callable[[np.ndarray], np.ndarray], clips: np.ndarray, horizon: int, out_frames: int) -> np.ndarray:
    """(B, T, C, H, W) -> (B, horizon, C, H, W), ``predict`` mapping (B, T, ...) -> (B, T', ...)."""
    window, outputs, runs = clips, [], steps(horizon, out_frames)
    for step in range(runs):
        prediction = predict(window)
        outputs.append(prediction)
        if step + 1 < runs:  # the one-run case (every plain request) copies nothing
            window = next_window(window, prediction)
    return _joined(outputs, horizon)


async def rollout_async(
    predict: Callable[[np.ndarray], Awaitable[np.ndarray]], clips: np.ndarray, horizon: int, out_frames: int
) -> np.ndarray:
    """:func:`rollout` with an awaitable ``predict`` (the service's batcher)."""
    window, outputs, runs = clips, [], steps(horizon, out_frames)
    for step in range(runs):
        prediction = await predict(window)
        outputs.append(prediction)
        if step + 1 < runs:
            window = next_window(window, prediction)
    return _joined(outputs, horizon)


def _joined(outputs: list[np.ndarray], horizon: int) -> np.ndarray:
    """The predictions of every step, (B, horizon, C, H, W); a view when there was one step."""
    return (outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1))[:, :horizon]
