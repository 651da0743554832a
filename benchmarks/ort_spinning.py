"""ONNX Runtime's thread spinning, measured the way the server uses a session.

Three policies of the engine (``STLIGHT_ORT_SPINNING``):

- ``off``: pool threads sleep as soon as a parallel section ends (``allow_spinning`` 0);
- ``run``: they spin between the operators of a run and stop when it returns
  (``allow_spinning`` 1 + ``session.force_spinning_stop`` 1);
- ``on``: ONNX Runtime's default, they also spin for a while after a run returns.

Per policy, in a fresh process each: batch-1 runs back to back; runs each preceded by 1 ms of
Python work on the calling thread (what the event loop does between batches: HTTP, decode,
encode); and the CPU the process burns while idle. Policies are interleaved over rounds; the
table shows medians and ratios to ``off``.

    python benchmarks/ort_spinning.py [--model M] [--rounds 5] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("off", "run", "on")


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(model: str, policy: str, runs: int) -> dict[str, float]:
    import numpy as np

    from service.inference.engine import Engine

    engine = Engine(model, "cpu", len(os.sched_getaffinity(0)), 1, spinning=policy)  # type: ignore[arg-type]
    x = np.random.default_rng(0).random((1, *engine.spec.input_shape), dtype=np.float32)
    for _ in range(20):
        engine.run(x)
    lat, cpu0 = [], time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        engine.run(x)
        lat.append(time.perf_counter() - t)
    cpu_per_run = (time.process_time() - cpu0) / runs
    with_work = []
    for _ in range(runs // 2):
        t = time.perf_counter()
        busy(0.001)
        engine.run(x)
        with_work.append(time.perf_counter() - t)
    time.sleep(0.5)
    cpu0 = time.process_time()
    time.sleep(1.0)
    idle = time.process_time() - cpu0
    return {
        "p50_ms": 1000 * statistics.median(lat),
        "cpu_ms_per_run": 1000 * cpu_per_run,
        "with_work_ms": 1000 * statistics.median(with_work),
        "idle_cpu_pct": 100 * idle,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "service" / "assets" / "default.onnx"), help="ONNX file")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--runs", type=int, default=200, help="back-to-back runs per measurement (default 200)")
    parser.add_argument("--one", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one[0], args.runs)))
        return 0
    results: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    for round_ in range(args.rounds):
        for policy in POLICIES[round_ % 3 :] + POLICIES[: round_ % 3]:
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--runs", str(args.runs), "--one", policy],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            results[policy].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {policy}: {results[policy][-1]}", flush=True)
    keys = ("p50_ms", "with_work_ms", "cpu_ms_per_run", "idle_cpu_pct")
    median = {p: {k: statistics.median(r[k] for r in results[p]) for k in keys} for p in POLICIES}
    spread = {
        p: {k: (max(r[k] for r in results[p]) - min(r[k] for r in results[p])) / max(median[p][k], 1e-9) for k in keys}
        for p in POLICIES
    }
    print(f"\n{len(os.sched_getaffinity(0))} CPUs, intra-op threads = CPUs, {args.rounds} interleaved rounds, medians")
    print("| policy | batch-1 p50 ms | vs off | 1 ms work + run, p50 ms | vs off | CPU ms per run | idle CPU % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for p in POLICIES:
        m, s = median[p], spread[p]
        print(
            f"| {p} | {m['p50_ms']:.2f} (±{50 * s['p50_ms']:.0f}%) | {m['p50_ms'] / median['off']['p50_ms']:.2f}x "
            f"| {m['with_work_ms']:.2f} (±{50 * s['with_work_ms']:.0f}%) "
            f"| {m['with_work_ms'] / median['off']['with_work_ms']:.2f}x "
            f"| {m['cpu_ms_per_run']:.2f} | {m['idle_cpu_pct']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
