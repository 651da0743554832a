"""Shared fixtures: paths to the repository, ../shared and its MNIST digits."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Real MNIST digits (idx format) shipped beside the repository for offline work."""
    if not any(MNIST_DIR.glob("*-images-idx3-ubyte*")):
        pytest.fail(f"MNIST digits not found in {MNIST_DIR}; CI runs with ../shared beside the checkout")
    return MNIST_DIR
