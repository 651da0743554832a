"""Shared fixtures: paths to the repository, the real MNIST digits shipped with the tests
(``tests/data/mnist``, 500 digits: see its README), the tiny ONNX model and in-process ONNX Runtime
on it (the reference the served answers are compared to).

Nothing here reads outside the clone: the README's test command passes in a fresh checkout with
nothing beside it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from serving import REPO

MNIST_DIR = REPO / "tests" / "data" / "mnist"

# `stlight serve` and in-process apps listen for gRPC on 8001 unless told otherwise; servers of
# several test runs share this machine, so a server a test starts has gRPC off unless the test
# gives it a port (tests/serving.py's Server(grpc=True) passes a free one)
os.environ.setdefault("STLIGHT_GRPC_PORT", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``extended`` tests (more of what a default test already covers, each over ~30 s) run only
    with STLIGHT_EXTENDED_TESTS=1: before a release, not in every CI run."""
    if os.environ.get("STLIGHT_EXTENDED_TESTS") == "1":
        return
    reason = "extended check (more cases of a test that runs by default): opt in with STLIGHT_EXTENDED_TESTS=1"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A folder holding ``digits-500-images-idx3-ubyte.gz``: real MNIST digits (idx format) in the
    repository, so that tests, like users' runs, read the standard file format offline."""
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``preset("tiny")`` with seed-0 random weights, exported by ``export.export_preset`` (fp32).

    tests/test_export.py validates this very file against torch; service tests serve it.
    """
    from export import export_preset

    return export_preset("tiny", tmp_path_factory.mktemp("onnx") / "tiny.onnx", seed=0)


@pytest.fixture(scope="session")
def digits(mnist_dir: Path) -> np.ndarray:
    """(N, 28, 28) uint8: the real MNIST digits of ``mnist_dir``."""
    from model.data import load_mnist_digits

    return load_mnist_digits(mnist_dir, download=False)


@pytest.fixture(scope="session")
def reference(tiny_onnx: Path) -> Callable[[np.ndarray], np.ndarray]:
    """In-process ONNX Runtime on ``tiny_onnx``: (B, T, C, H, W) -> (B, T', C, H, W) float32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    return lambda clips: session.run(None, {"frames": np.asarray(clips, np.float32)})[0]
