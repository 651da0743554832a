"""What several benchmarks share: a real ``stlight serve`` on a free loopback port, ready before
anything is timed, and a median timer. Imported as ``common`` (scripts here run with this folder
on ``sys.path``)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_server(
    serve_args: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout_s: float = 180
) -> tuple[subprocess.Popen[bytes], str]:
    """``stlight serve --port 0 SERVE_ARGS`` with its output in ``log``; returns once ``/readyz``
    says ready, so warm-up never counts in a measurement. gRPC is off unless SERVE_ARGS give a
    ``--grpc-port`` (its default port would collide with any other server on this machine)."""
    command = [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--grpc-port", "0", *serve_args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as handle:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log.read_text(errors="replace"))
        if found:
            url = found.group(1)
            while time.monotonic() < deadline:
                if httpx.get(url + "/readyz").status_code == 200:
                    return proc, url
                time.sleep(0.05)
            break
        if proc.poll() is not None:
            raise SystemExit(f"the server failed to start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the server was not ready within {timeout_s:g} s:\n{log.read_text(errors='replace')}")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
