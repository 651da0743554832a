"""Helpers shared by the tests that run the product as users do: ``stlight`` in a subprocess
with the ``train`` extra blocked from import (the serving image has none of it), a real
``stlight serve`` process on loopback, and npy bodies."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]

# prepended to code run with ``python -c``: torch and the exporter's packages fail to import
# there exactly as where they are not installed
NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxscript"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked in this process)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""
# ``python -c CLI serve ...`` is ``stlight serve ...`` without torch
CLI = NO_TORCH + "from service.cli.stlight import main\nsys.exit(main(sys.argv[1:]))\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``stlight ARGS`` without torch, to completion; output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def npy_bytes(array: np.ndarray) -> bytes:
    """``numpy.save`` of ``array``, as a client sends it."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def wait_until(condition: Callable[[], object], what: str = "condition", timeout: float = 30.0) -> None:
    """Poll ``condition`` until it is true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.02)  # conditions often poll the server under test: keep that load small


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def moving_digits(digits: np.ndarray, index: int, frames: int = 10, size: int = 64) -> np.ndarray:
    """(T, 1, 64, 64) uint8: MNIST digit ``index`` moving diagonally, bouncing off the edges."""
    rng = np.random.default_rng(index)
    clip = np.zeros((frames, 1, size, size), np.uint8)
    y, x = rng.integers(0, size - 28, 2)
    dy, dx = rng.choice([-3, -2, 2, 3], 2)
    for t in range(frames):
        clip[t, 0, y : y + 28, x : x + 28] = digits[index % len(digits)]
        if not 0 <= y + dy <= size - 28:
            dy = -dy
        if not 0 <= x + dx <= size - 28:
            dx = -dx
        y, x = y + dy, x + dx
    return clip


class Server:
    """``stlight serve ARGS --port PORT`` in a subprocess, its output in ``log_path``.

    ``port=0`` (the default) lets the server pick one; ``wait_listening`` reads it from uvicorn's
    log. A fixed port (``free_port()``) gives ``url`` at once, before the server listens.
    ``cwd``: the server's working directory (default: the repository).

    gRPC is off (``--grpc-port 0``: its default, 8001, would collide between servers run side by
    side) unless ``grpc=True`` (a free port, in ``grpc_target``) or ARGS name a ``--grpc-port``.
    """

    def __init__(
        self,
        log_path: Path,
        *args: str,
        port: int = 0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        grpc: bool = False,
    ) -> None:
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if cwd is not None:  # `python -c` finds the packages through the repository, not the working directory
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
        grpc_port = free_port() if grpc else 0
        # before ARGS: a --grpc-port among them (a manifest's command line) wins
        argv = [sys.executable, "-c", CLI, "serve", "--port", str(port), "--grpc-port", str(grpc_port), *args]
        with open(log_path, "wb") as log:  # the server writes to its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or REPO)
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.grpc_target = f"127.0.0.1:{grpc_port}" if grpc_port else ""

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", self.text())
            if found:
                self.url = found.group(1)
                return self.url
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.01)
        raise AssertionError(f"server did not start within {timeout} s:\n{self.text()}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/readyz").status_code == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"/readyz not 200 within {timeout} s:\n{self.text()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.url + "/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful stop), a kill after 30 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextlib.contextmanager
def running(
    log_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, grpc: bool = False
) -> Iterator[Server]:
    """``stlight serve ARGS``, listening and warmed up, for a fixture; afterwards it must stop
    on SIGTERM with status 0 and no traceback in its log."""
    srv = Server(log_path, *args, env=env, cwd=cwd, grpc=grpc)
    try:
        srv.wait_listening()
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
    assert code == 0 and "Traceback" not in srv.text(), srv.text()
