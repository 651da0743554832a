"""Per-request budgets on a real server: an answer of clips x horizon frames beyond
STLIGHT_MAX_FRAMES_OUT is refused before any model run, with a 413 problem+json naming the limit
and its setting; a request at the limit is answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import Server, load_npy, moving_digits, npy_bytes, running

NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("budgets") / "server.log"
    env = {"STLIGHT_MAX_FRAMES_OUT": "40"}
    with running(log, "--model", str(tiny_onnx), "--device", "cpu", env=env) as srv:
        yield srv


def _clips(digits: np.ndarray, n: int) -> bytes:
    clips = np.stack([moving_digits(digits, i) for i in range(n)]).astype(np.float32) / 255
    return npy_bytes(clips)


def test_answer_beyond_frames_budget_is_refused_before_work(server: Server, digits: np.ndarray) -> None:
    began = time.perf_counter()
    answer = httpx.post(server.url + "/predict?horizon=20", content=_clips(digits, 4), headers=NPY, timeout=30)
    took = time.perf_counter() - began
    assert answer.status_code == 413, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert "80 frames" in detail and "limit of 40" in detail and "STLIGHT_MAX_FRAMES_OUT" in detail
    assert took < 2.0  # refused up front: 20 rollout steps of 4 clips never ran


def test_answer_at_frames_budget_is_answered(server: Server, digits: np.ndarray) -> None:
    answer = httpx.post(server.url + "/predict", content=_clips(digits, 4), headers=NPY, timeout=30)
    assert answer.status_code == 200, answer.text
    assert load_npy(answer.content).shape == (4, 10, 1, 64, 64)
