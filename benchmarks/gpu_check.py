"""The GPU path in one command: CUDA in ONNX Runtime, export validated on CUDA, the engine against
torch, and ``stlight serve --device cuda`` under load, each phase time-boxed.

    python benchmarks/gpu_check.py --quick --out gpu-check/        # at most 4 minutes on one GPU
    python benchmarks/gpu_check.py --out gpu-check/                # the same, longer (< 10 min)
    python benchmarks/gpu_check.py --quick --device cpu --preset tiny --max-batch-size 4 --out dry/

Needs a CUDA torch and onnxruntime-gpu with CUDA 13 + cuDNN 9 (``pip install 'stlight[cuda,train]'``,
or the offline bundle of docs/gpu.md). Phases, each with its own time box (``--quick``: 25 + 75 +
60 + 70 s; the whole run is stopped at 240 s with what it has written):

1. ``cuda``: ONNX Runtime really runs on CUDAExecutionProvider (the providers a session got, the
   library preload's report) and torch sees the GPU; the GPU, driver, CUDA, cuDNN and library
   versions;
2. ``export``: the preset (seeded random weights) exported and validated on the CUDA provider
   (TF32 off, the serving options);
3. ``engines``: per bucket size 1, 2, 4 ... ``--max-batch-size``: torch CUDA eager (TF32 off),
   the serving engine on CUDA (IO binding, padded buckets), the same with CUDA graphs and with
   TF32, in ms per batch, each engine's answers checked against the CPU provider;
4. ``serve``: ``stlight serve --device cuda`` on loopback: ``/v1/model`` on the GPU path, answers
   at every bucket size checked against the CPU provider, p50 at 1 client and clips/s at 8, 32
   and 128 clients (one uint8 clip per request, keep-alive connections from several processes).

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the tables and the targets of
docs/serving-performance.md) after every phase, and the server's log as ``OUT/serve.log``.

``--device cpu`` is the dry run for a machine without a GPU: every phase that can runs on the CPU
provider (the engine still with buckets and IO binding: the CUDA code path on CPU buffers), the
CUDA-only parts (CUDA graphs, the GPU's versions, the targets) are recorded as skipped, each with
its reason.

Exit status: 0 every check passed (the targets are reported, not enforced); 1 a check failed; 2
CUDA did not load (the reason is in the output, nothing was checked); 3 the whole run's time box
ran out (what was measured is written).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import io
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# this folder (common, serve_peers), then this checkout's packages, before any installed copy
sys.path[:0] = [p for p in (str(REPO / "benchmarks"), str(REPO)) if p not in sys.path[:2]]

from serve_peers import drive  # noqa: E402 - the keep-alive load generator the serving benchmarks use

BUDGETS = {
    "quick": {"cuda": 25, "export": 75, "engines": 60, "serve": 70},
    "full": {"cuda": 60, "export": 150, "engines": 180, "serve": 180},
}
TOTAL = {"quick": 240, "full": 590}
CELL_S = {"quick": 1.0, "full": 3.0}  # most seconds timing one engine at one batch size
LOAD_S = {"quick": 3.0, "full": 8.0}  # seconds of load per client count, after a warm-up of a sixth of it
CLIENTS = (1, 8, 32, 128)
TOLERANCE = 1e-3  # CUDA against the CPU provider, fp32 with TF32 off (validation's is tighter, per clip)
TF32_TOLERANCE = 1e-2
POOL = 5  # distinct clips behind every test batch: a row shifted by 1-4 places shows


class CheckFailed(Exception):
    """A result is wrong (an answer, a provider, a validation): exit 1."""


class CudaUnavailable(Exception):
    """CUDA is required and did not load: exit 2."""


@dataclass
class Box:
    """One phase's time box."""

    seconds: float
    began: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.began + self.seconds - time.perf_counter()

    def share(self, remaining: int, reserve: float = 0.0) -> float:
        """Seconds for one of ``remaining`` equal steps, ``reserve`` kept back for what follows."""
        return max(0.0, (self.left() - reserve) / max(1, remaining))


class Report:
    """Everything measured, written as JSON and Markdown after every phase (and by the watchdog)."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out, self.data = out, data
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str, status: str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.data["phases"][name] = {"status": status, "seconds": round(seconds, 1), "detail": detail}
        print(f"[{name}] {status} in {seconds:.1f} s{': ' + detail if detail else ''}", flush=True)

    def save(self) -> None:
        with self.lock:
            text = json.dumps(self.data, indent=1, default=str) + "\n"
            markdown = render_markdown(self.data)
        for name, content in (("gpu_check.json", text), ("gpu_check.md", markdown)):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(content)
            tmp.replace(self.out / name)


@dataclass
class Context:
    """What the phases hand on to each other."""

    args: argparse.Namespace
    report: Report
    device: str
    work: Path
    onnx_path: Path | None = None
    net: Any = None
    pool: tuple[np.ndarray, np.ndarray] | None = None  # clips and the CPU provider's answers
    server: subprocess.Popen[bytes] | None = None
    best_ort_clips_per_s: float = 0.0


def batch_of(pool: tuple[np.ndarray, np.ndarray], b: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` clips (the pool repeated) and their expected answers."""
    index = np.arange(b) % len(pool[0])
    return pool[0][index], pool[1][index]


def timed(fn: Callable[[], object], budget_s: float, max_runs: int = 500) -> tuple[float, int]:
    """Median seconds per call over the runs that fit in ``budget_s`` (at least one), after one warm-up."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < max_runs and (not times or time.perf_counter() < end):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


# ---------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------


def versions(device: str) -> dict[str, Any]:
    """What the table must name: GPU, driver, CUDA, cuDNN, ONNX Runtime, torch, Python, date."""
    from importlib import metadata

    import onnxruntime as ort

    found: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "onnxruntime": ort.__version__,
        "onnxruntime_package": "onnxruntime-gpu" if _installed("onnxruntime-gpu") else "onnxruntime",
    }
    with contextlib.suppress(Exception):
        from onnxruntime.capi import build_and_package_info as build

        found["onnxruntime_built_for_cuda"] = getattr(build, "cuda_version", "")
    wheels = {
        d.metadata["Name"]: d.version
        for d in metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith("nvidia-")
    }
    found["nvidia_wheels"] = dict(sorted(wheels.items()))
    if device != "cuda":
        return found
    with contextlib.suppress(Exception):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        name, driver, memory = (s.strip() for s in smi.stdout.splitlines()[0].split(","))
        found.update(gpu=name, driver=driver, gpu_memory=memory)
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
        found["driver_cuda"] = header.split("CUDA Version:")[1].split()[0] if "CUDA Version:" in header else ""
    return found


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def phase_cuda(ctx: Context, box: Box) -> str:
    """ONNX Runtime's and torch's CUDA, or CudaUnavailable naming why not."""
    import onnxruntime as ort

    from service.core.assets import DEFAULT_MODEL
    from service.inference.engine import CUDA, Engine, EngineError

    info = ctx.report.data["versions"]
    info.update(versions(ctx.device))
    info["available_providers"] = ort.get_available_providers()
    if ctx.device == "cpu":
        return "skipped the CUDA checks: --device cpu (dry run); CUDA graphs, the GPU's versions and the targets need CUDA"
    if CUDA not in ort.get_available_providers():
        raise CudaUnavailable(f"CUDA did not load: this onnxruntime has no {CUDA} (install onnxruntime-gpu, see docs/gpu.md)")
    note = ""
    try:
        engine = Engine(DEFAULT_MODEL, "cuda", 1, 1, max_batch_size=1)
    except EngineError as first:
        # once more after torch has loaded its CUDA libraries: if that works, ONNX Runtime's own
        # preload is what fails, which `stlight serve` (no torch) cannot get around; say so, go on
        try:
            import torch
        except ImportError:
            raise CudaUnavailable(
                f"CUDA did not load in ONNX Runtime: {first} (and torch, which the export needs, is missing)"
            ) from None
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")
        try:
            engine = Engine(DEFAULT_MODEL, "cuda", 1, 1, max_batch_size=1)
        except EngineError:
            raise CudaUnavailable(f"CUDA did not load in ONNX Runtime: {first}") from None
        info["onnxruntime_cuda_without_torch"] = str(first)
        note = "; ONNX Runtime loaded CUDA only after torch had loaded its libraries (a process without torch cannot)"
    info["session_providers"] = engine.session.get_providers()
    import torch

    if not torch.cuda.is_available():
        raise CudaUnavailable(
            "CUDA did not load in torch: ONNX Runtime runs on CUDA but this torch has none (install a CUDA build of torch)"
        )
    info.update(
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=str(torch.backends.cudnn.version()),
        gpu=info.get("gpu") or torch.cuda.get_device_name(0),
    )
    return f"sessions run on {', '.join(info['session_providers'])}; {info['gpu']}{note}"


def phase_export(ctx: Context, box: Box) -> str:
    import torch

    from export import export_preset, random_model, validate
    from model.config import preset

    ctx.report.data["versions"].setdefault("torch", torch.__version__)
    path = export_preset(ctx.args.preset, ctx.work / f"{ctx.args.preset}.onnx", seed=0)
    config = preset(ctx.args.preset)
    net = random_model(config, 0)
    report = validate(path, net, config, provider=ctx.device)
    worst = max((c.worst_error for c in report.checks if c.worst_error is not None and math.isfinite(c.worst_error)), default=0.0)
    ctx.report.data["export"] = {
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "checks": len(report.checks),
        "passed": report.passed,
        "max_abs_error": worst,
    }
    if not report.passed:
        print(report.table(), flush=True)
        raise CheckFailed(
            f"{path.name} failed validation on {ctx.device}: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        )
    ctx.onnx_path, ctx.net = path, net
    size = path.stat().st_size / 2**20
    return f"{path.name} ({size:.1f} MiB): {len(report.checks)} checks passed on {report.provider}, max abs error {worst:.2g}"


def phase_engines(ctx: Context, box: Box) -> str:
    import torch

    from service.inference.engine import Engine, bucket_sizes

    assert ctx.onnx_path is not None
    args, cuda = ctx.args, ctx.device == "cuda"
    buckets = bucket_sizes(args.max_batch_size)
    cpus = len(os.sched_getaffinity(0))
    reference = Engine(ctx.onnx_path, "cpu", cpus, 1, max_batch_size=args.max_batch_size)
    rng = np.random.default_rng(0)
    clips = rng.random((POOL, *reference.spec.input_shape), dtype=np.float32)
    ctx.pool = (clips, reference.run(clips))
    # the engine as served: on CUDA its defaults; on CPU buckets and IO binding forced on, the CUDA code path
    engines: dict[str, Any] = {
        "ort": Engine(ctx.onnx_path, ctx.device, 1, 1, max_batch_size=args.max_batch_size, buckets=True, io_binding=True)
    }
    skipped = {}
    if cuda:
        engines["graphs"] = Engine(ctx.onnx_path, "cuda", 1, 1, max_batch_size=args.max_batch_size, cuda_graphs=True)
        engines["tf32"] = Engine(ctx.onnx_path, "cuda", 1, 1, max_batch_size=args.max_batch_size, tf32=True)
    else:
        skipped = {"graphs": "CUDA graphs need CUDA", "tf32": "TF32 is a CUDA setting"}
    for engine in engines.values():
        engine.warm_up(runs=2)
    for name, engine in engines.items():
        if engine.buckets != buckets or not engine.io_binding:
            raise CheckFailed(f"the {name} engine is not on the serving path: {engine.describe()}")
    torch.backends.cudnn.allow_tf32 = False  # the numbers validation compares, and what serving runs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    net = ctx.net.to(ctx.device).eval()
    rows: list[dict[str, Any]] = ctx.report.data["engines"]
    ctx.report.data["engines_skipped"] = skipped
    for i, b in enumerate(buckets):
        x, expected = batch_of(ctx.pool, b)
        for name, engine in engines.items():
            error = float(np.abs(engine.run(x) - expected).max())
            if error > (TF32_TOLERANCE if name == "tf32" else TOLERANCE):
                raise CheckFailed(f"the {name} engine differs from the CPU provider by {error:.3g} at batch {b}")
        cell = min(ctx.args.cell_s, box.share((len(buckets) - i) * (1 + len(engines))))
        if cell <= 0:
            return f"time box reached: batch sizes {', '.join(map(str, buckets[i:]))} not timed"
        xt = torch.from_numpy(x).to(ctx.device)

        def eager(xt: torch.Tensor = xt) -> None:
            with torch.inference_mode():
                net(xt).cpu()  # the host copy included, like the engine's answer

        row: dict[str, Any] = {"batch": b}
        row["torch_ms"], row["torch_runs"] = _ms(timed(eager, cell))
        for name, engine in engines.items():
            row[f"{name}_ms"], row[f"{name}_runs"] = _ms(timed(lambda x=x, engine=engine: engine.run(x), cell))
        rows.append(row)
        ctx.best_ort_clips_per_s = max(ctx.best_ort_clips_per_s, 1000 * b / row["ort_ms"])
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return f"batch sizes {', '.join(map(str, buckets))} timed; answers within {TOLERANCE:g} of the CPU provider"


def _ms(result: tuple[float, int]) -> tuple[float, int]:
    return round(1000 * result[0], 3), result[1]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def phase_serve(ctx: Context, box: Box) -> str:
    import httpx
    from common import start_server

    from service.inference.engine import bucket_sizes

    assert ctx.onnx_path is not None and ctx.pool is not None
    args, cuda = ctx.args, ctx.device == "cuda"
    buckets = bucket_sizes(args.max_batch_size)
    log = ctx.report.out / "serve.log"
    serve_args = [
        "--model",
        str(ctx.onnx_path),
        "--device",
        ctx.device,
        "--max-batch-size",
        str(args.max_batch_size),
        "--no-access-log",
        "--grpc-port",
        "0",  # HTTP is what is measured; no fixed port to collide with
    ]
    try:
        ctx.server, url = start_server(serve_args, log, timeout_s=max(5.0, box.left() - 20))
    except SystemExit as exc:  # start_server's way of saying the server did not start
        raise CheckFailed(f"stlight serve {' '.join(serve_args)} did not start: {str(exc)[-1500:]}") from None
    served = ctx.report.data["served"]
    try:
        info = httpx.get(url + "/v1/model", timeout=30).json()
        served["model"] = {k: info.get(k) for k in ("provider", "tf32", "io_binding", "batch_buckets", "cuda_graphs")}
        want = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        if info.get("provider") != want or info.get("tf32") or (cuda and info.get("batch_buckets") != list(buckets)):
            raise CheckFailed(f"the server is not on the validated path: {served['model']}")
        worst = 0.0
        with httpx.Client(base_url=url, timeout=60) as http:
            for b in (*buckets, 3):  # and one batch that is padded to its bucket
                x, expected = batch_of(ctx.pool, b)
                answer = http.post("/predict", content=npy(x), headers={"Content-Type": "application/x-npy"})
                if answer.status_code != 200:
                    raise CheckFailed(f"POST /predict with {b} clips: HTTP {answer.status_code}: {answer.text[:300]}")
                error = float(np.abs(np.load(io.BytesIO(answer.content), allow_pickle=False) - expected).max())
                worst = max(worst, error)
                if error > TOLERANCE:
                    raise CheckFailed(f"the served answer differs from the CPU provider by {error:.3g} at {b} clips")
        served["max_abs_error"] = worst
        port = int(url.rsplit(":", 1)[1])
        clip = (ctx.pool[0][0] * 255).astype(np.uint8)  # what clients send: uint8 frames
        request = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-npy\r\n"
        payload = npy(clip)
        payload = f"{request}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        measured = load(ctx, box, port, payload)
    finally:
        stop(ctx)
    return f"answers at {len(buckets) + 1} batch sizes within {worst:.2g} of the CPU provider; {measured}"


def load(ctx: Context, box: Box, port: int, payload: bytes) -> str:
    """p50 and clips/s at each client count, from processes enough that the clients are not the limit."""
    rows: list[dict[str, Any]] = ctx.report.data["served"]["load"]
    cpus = len(os.sched_getaffinity(0))
    workers = ctx.args.load_processes or max(1, min(math.ceil(CLIENTS[-1] / 32), cpus // 4))
    seconds = ctx.args.load_s
    warmup = seconds / 6
    spawn = multiprocessing.get_context("spawn")
    pool_or_none = concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else None
    with pool_or_none or contextlib.nullcontext() as pool:
        for i, clients in enumerate(CLIENTS):
            span = min(seconds, box.share(len(CLIENTS) - i, reserve=5) - warmup - 0.5)
            if span < min(0.5, seconds):
                return f"time box reached: {', '.join(map(str, CLIENTS[i:]))} clients not measured"
            procs = max(1, min(workers, clients // 8))  # 8 connections or more per process
            shares = [clients // procs + (k < clients % procs) for k in range(procs)]
            if pool is None or procs == 1:
                results = [drive_once(port, payload, clients, span, warmup)]
            else:
                futures = [pool.submit(drive_once, port, payload, n, span, warmup) for n in shares]
                results = [f.result() for f in futures]
            latencies = sorted(t for r in results for t in r[0])
            row = {
                "clients": clients,
                "processes": procs,
                "p50_ms": round(1000 * statistics.median(latencies), 3) if latencies else None,
                "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 3) if latencies else None,
                "clips_per_s": round(sum(len(r[0]) / r[2] for r in results if r[2]), 1),
                "errors": sum(r[1] for r in results),
            }
            rows.append(row)
            print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return "clients " + ", ".join(f"{r['clients']}: {r['clips_per_s']:.0f} clips/s" for r in rows)


def drive_once(port: int, payload: bytes, clients: int, seconds: float, warmup: float) -> tuple[list[float], int, float]:
    """One process's share of the load (run in a worker process): latencies, errors, seconds."""
    cell = asyncio.run(drive(port, payload, clients, seconds, warmup))
    return cell.latencies, cell.errors, cell.seconds


def stop(ctx: Context, grace_s: float = 30) -> None:
    """The server, stopped as an orchestrator would: SIGTERM (it drains), a kill after ``grace_s``."""
    proc, ctx.server = ctx.server, None
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------
# targets and the table
# ---------------------------------------------------------------------------------------


def targets(data: dict[str, Any], best_ort: float) -> list[dict[str, Any]]:
    """docs/serving-performance.md's targets for one H200 and mmnist-s, measured or why not."""
    rows = {r["batch"]: r for r in data["engines"]}
    load = {r["clients"]: r for r in data["served"]["load"]}
    at128 = load.get(128, {}).get("clips_per_s")
    p50 = load.get(1, {}).get("p50_ms")
    graphs = rows[1]["ort_ms"] / rows[1]["graphs_ms"] if 1 in rows and rows[1].get("graphs_ms") else None
    share = at128 / best_ort if at128 and best_ort else None
    found = [
        ("served clips/s at 128 clients", ">= 5000", at128, at128 is not None and at128 >= 5000),
        ("served at 128 clients / in-process ORT at its best batch size", ">= 0.50", share, share is not None and share >= 0.5),
        ("1-client p50 ms", "<= 2", p50, p50 is not None and p50 <= 2),
        ("CUDA graphs speed-up at batch 1", ">= 1.2x", graphs, graphs is not None and graphs >= 1.2),
    ]
    dry = data["device"] != "cuda"
    return [
        {
            "target": name,
            "wanted": wanted,
            "measured": None if value is None else round(value, 3),
            "met": None if dry or value is None else bool(met),
            "note": "dry run on CPU: not a GPU figure" if dry else ("" if value is not None else "not measured"),
        }
        for name, wanted, value, met in found
    ]


def _cell(ms: float | None, b: int) -> str:
    return "–" if not ms else f"{ms:.2f} ({1000 * b / ms:,.0f})"


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "–"


def render_markdown(data: dict[str, Any]) -> str:
    """The report as Markdown: versions, phases, the in-process table, the served table, targets."""
    v, dev = data["versions"], data["device"]
    where = "CUDA" if dev == "cuda" else "CPU"
    met = {True: "yes", False: "**no**", None: "–"}
    skipped = "; ".join(f"{k}: {why}" for k, why in data.get("engines_skipped", {}).items())
    served = data["served"]
    lines = [
        f"# gpu_check{' --quick' if data['quick'] else ''}: {data['preset']} on "
        f"{v.get('gpu') or ('CPU (dry run)' if dev == 'cpu' else 'no GPU found')}",
        "",
        f"{v.get('date', '')}; GPU {v.get('gpu', '–')} ({v.get('gpu_memory', '–')}), driver {v.get('driver', '–')} "
        f"(CUDA {v.get('driver_cuda', '–')}); torch {v.get('torch', '–')} (CUDA {v.get('torch_cuda', '–')}, "
        f"cuDNN {v.get('cudnn', '–')}); {v.get('onnxruntime_package', 'onnxruntime')} {v.get('onnxruntime', '–')} "
        f"(built for CUDA {v.get('onnxruntime_built_for_cuda') or '–'}); Python {v.get('python', '–')}, "
        f"{v.get('cpus', '–')} CPUs. fp32, TF32 off unless named.",
        "",
        "| phase | status | s | detail |",
        "|---|---|---:|---|",
        *(f"| {name} | {p['status']} | {p['seconds']} | {p['detail']} |" for name, p in data["phases"].items()),
        "",
        "In-process, ms per batch (clips/s); every engine's answers checked against the CPU provider"
        + (f" ({skipped})" if skipped else "")
        + ":",
        "",
        f"| batch | torch {where} eager | ORT {where} (IO binding) | ORT CUDA graphs | ORT CUDA TF32 | eager / ORT "
        "| graphs speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["engines"]:
        b = r["batch"]
        lines.append(
            f"| {b} | {_cell(r['torch_ms'], b)} | {_cell(r['ort_ms'], b)} | {_cell(r.get('graphs_ms'), b)} "
            f"| {_cell(r.get('tf32_ms'), b)} | {_ratio(r['torch_ms'], r['ort_ms'])} | {_ratio(r['ort_ms'], r.get('graphs_ms'))} |"
        )
    if not data["engines"]:
        lines.append("| – | not measured | | | | | |")
    lines += [
        "",
        f"Through `stlight serve --device {dev}` ({served.get('model', {}).get('provider', '–')}), one uint8 clip per "
        f"request on keep-alive connections; answers within {served.get('max_abs_error', '–')} of the CPU provider:",
        "",
        "| clients | load processes | p50 ms | p99 ms | clips/s | errors |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['clients']} | {r['processes']} | {r['p50_ms']} | {r['p99_ms']} | {r['clips_per_s']:,.0f} | {r['errors']} |"
            for r in served["load"]
        ),
        *([] if served["load"] else ["| – | | | | not measured | |"]),
        "",
        "| target | wanted | measured | met |",
        "|---|---|---:|---|",
        *(
            f"| {t['target']} | {t['wanted']} | {'–' if t['measured'] is None else t['measured']} "
            f"| {met[t['met']]}{' (' + t['note'] + ')' if t['note'] else ''} |"
            for t in data.get("targets", [])
        ),
        "",
    ]
    if data.get("stopped"):
        lines += [f"**Stopped early**: {data['stopped']}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------


PHASES: list[tuple[str, Callable[[Context, Box], str]]] = [
    ("cuda", phase_cuda),
    ("export", phase_export),
    ("engines", phase_engines),
    ("serve", phase_serve),
]


@contextlib.contextmanager
def watchdog(ctx: Context, seconds: float) -> Iterator[None]:
    """After ``seconds`` in all: write what was measured, stop the server, exit 3."""
    done = threading.Event()

    def guard() -> None:
        if done.wait(seconds):
            return
        ctx.report.data["stopped"] = f"the whole run's time box ({seconds:.0f} s) ran out"
        with contextlib.suppress(Exception):
            ctx.report.save()
        with contextlib.suppress(Exception):
            stop(ctx, grace_s=3)
        print(f"gpu_check: {ctx.report.data['stopped']}; results so far in {ctx.report.out}", file=sys.stderr, flush=True)
        os._exit(3)

    thread = threading.Thread(target=guard, name="gpu_check-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 2)[2],
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="time boxes for at most 4 minutes in all (default: up to 10 minutes, longer load cells)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "out" / "gpu-check",
        help="folder for gpu_check.json, gpu_check.md and serve.log (default out/gpu-check)",
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda (default); cpu: the dry run of every phase that can run without a GPU",
    )
    parser.add_argument(
        "--preset", default="mmnist-s", help="model preset to export with seeded random weights (default mmnist-s)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="largest bucket: batch sizes 1, 2, 4 ... up to it (default 32)"
    )
    parser.add_argument(
        "--cell-s", type=float, help="most seconds timing one engine at one batch size (default 1, 3 without --quick)"
    )
    parser.add_argument("--load-s", type=float, help="seconds of load per client count (default 3, 8 without --quick)")
    parser.add_argument(
        "--load-processes",
        type=int,
        help="processes generating the load (default: 1 per 32 clients, at most a quarter of the CPUs)",
    )
    parser.add_argument(
        "--total-s",
        type=float,
        help="stop the whole run after this many seconds, writing what it has (default 240, 590 without --quick)",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    args.cell_s = CELL_S[mode] if args.cell_s is None else args.cell_s
    args.load_s = LOAD_S[mode] if args.load_s is None else args.load_s
    args.total_s = TOTAL[mode] if args.total_s is None else args.total_s
    return args


def run_phase(ctx: Context, name: str, run: Callable[[Context, Box], str], seconds: float, status: int) -> int:
    """One phase in its time box, recorded; the exit status so far."""
    box = Box(seconds)
    print(f"[{name}] up to {seconds:.0f} s ...", flush=True)
    try:
        if name == "serve" and ctx.pool is None:
            detail = "skipped: the engines phase did not get as far as the CPU provider's answers"
        else:
            detail = run(ctx, box)
        kind = "partial" if detail.startswith("time box reached") else "skipped" if detail.startswith("skipped") else "passed"
        ctx.report.phase(name, kind, box.seconds - box.left(), detail)
        return status
    except CudaUnavailable as exc:
        ctx.report.phase(name, "failed", box.seconds - box.left(), str(exc))
        print(f"gpu_check: {exc}; nothing was checked (--device cpu runs the dry run)", file=sys.stderr, flush=True)
        return 2
    except CheckFailed as exc:
        ctx.report.phase(name, "failed", box.seconds - box.left(), str(exc))
        print(f"gpu_check: {name}: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # anything unforeseen: this run may be the only one on the GPU, so keep going
        traceback.print_exc()
        ctx.report.phase(name, "failed", box.seconds - box.left(), f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        stop(ctx)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    data: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py",
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "device": args.device,
        "preset": args.preset,
        "max_batch_size": args.max_batch_size,
        "budgets_s": {**BUDGETS[mode], "total": args.total_s},
        "versions": {},
        "phases": {},
        "engines": [],
        "served": {"load": []},
    }
    ctx = Context(args, Report(args.out, data), args.device, Path(tempfile.mkdtemp(prefix="gpu_check_")))
    status, began = 0, time.perf_counter()
    with watchdog(ctx, args.total_s):
        for name, run in PHASES:
            status = run_phase(ctx, name, run, BUDGETS[mode][name], status)
            ctx.report.save()
            if status == 2 or (ctx.onnx_path is None and name != "cuda"):
                break  # what follows needs CUDA or the exported model
        data["targets"] = targets(data, ctx.best_ort_clips_per_s)
        data["best_in_process_clips_per_s"] = round(ctx.best_ort_clips_per_s, 1)
        data["seconds"] = round(time.perf_counter() - began, 1)
        data["exit"] = status
        ctx.report.save()
    shutil.rmtree(ctx.work, ignore_errors=True)  # the exported model (68 MB for mmnist-s)
    print("\n" + render_markdown(data), flush=True)
    print(
        f"gpu_check: {'passed' if status == 0 else 'FAILED'} in {data['seconds']:.0f} s; "
        f"{args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}",
        flush=True,
    )
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Straight out, without the interpreter's teardown: with torch and ONNX Runtime sessions both
    # loaded, a native thread pool destroyed during finalisation sometimes aborts the process
    # ("terminate called without an active exception", SIGABRT) after everything was written.
    os._exit(code)
