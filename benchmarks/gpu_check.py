"""The GPU path in one command: export a preset, validate it on CUDA, serve it on CUDA, time it.

On a machine with an NVIDIA GPU, ``onnxruntime-gpu`` and its CUDA libraries (``pip install
'stlight[cuda,train]'``) and a CUDA torch:

    python benchmarks/gpu_check.py                       # mmnist-s, buckets 1..8, < 10 min
    python benchmarks/gpu_check.py --preset kth-s --max-batch-size 16

Steps, each stopping the script with a non-zero exit when it fails:

1. CUDA loads in ONNX Runtime (the serving engine's library preload first) and in torch;
2. the preset (seeded random weights) is exported and validated on the CUDA provider with the
   serving provider options (TF32 off);
3. per bucket size (1, 2, 4, ... ``--max-batch-size``): ms per batch and clips/s of torch CUDA
   eager (fp32, TF32 off), the serving engine on CUDA (IO binding, padded buckets), the same
   with CUDA graphs, and the CPU provider (time-boxed);
4. ``stlight serve --device cuda`` (and ``--cuda-graphs``) on loopback: each bucket size as one
   request, answers checked against the CPU provider, p50 latency and clips/s over HTTP, and 32
   concurrent single-clip clients (what the batcher gathers).

Exit status: 0 all passed; 1 a check failed; 2 CUDA did not load (no GPU here).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def fail(message: str, code: int = 1) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def timed(fn: Callable[[], object], *, runs: int, budget_s: float) -> tuple[float, int]:
    """Median seconds per call over up to ``runs`` calls or ``budget_s`` seconds (after 2 warm-ups)."""
    fn(), fn()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < runs and (time.perf_counter() - began < budget_s or len(times) < 3):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def check_cuda() -> str:
    """ONNX Runtime's and torch's CUDA, or exit 2 naming why not."""
    import onnxruntime as ort

    from service.runtime import CUDA, preload_cuda_libraries

    if CUDA not in ort.get_available_providers():
        fail(f"CUDA did not load: this onnxruntime has no {CUDA} (pip install 'stlight[cuda]'); nothing was checked", 2)
    from export.validation import ProviderUnavailable, check_provider

    preload = preload_cuda_libraries()
    try:
        check_provider("cuda")
    except ProviderUnavailable as exc:
        hint = f" (library preload: {preload[0]})" if preload else ""
        fail(f"CUDA did not load in ONNX Runtime{hint}: {exc}; this script needs an NVIDIA GPU, nothing was checked", 2)
    import torch

    if not torch.cuda.is_available():
        fail("ONNX Runtime runs on CUDA but this torch has no CUDA (install a CUDA build of torch); nothing was checked", 2)
    return torch.cuda.get_device_name(0)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mmnist-s", help="model preset to export (default mmnist-s)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="largest bucket (default 8)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per bucket on CUDA (default 50)")
    parser.add_argument("--cpu-budget-s", type=float, default=3.0, help="seconds per bucket for the CPU provider (default 3)")
    parser.add_argument("--requests", type=int, default=30, help="HTTP requests per bucket size (default 30)")
    args = parser.parse_args()
    began = time.perf_counter()

    # 1. CUDA ---------------------------------------------------------------------------
    gpu = check_cuda()
    import onnxruntime as ort
    import torch

    from export import export_preset, random_model, validate
    from model.config import preset
    from service.engine import CUDA, Engine, bucket_sizes

    print(f"GPU: {gpu}; onnxruntime {ort.__version__}; torch {torch.__version__}", flush=True)

    # 2. export + validate on CUDA --------------------------------------------------------
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    path = export_preset(args.preset, work / f"{args.preset}.onnx", seed=0)
    config = preset(args.preset)
    net = random_model(config, 0)
    report = validate(path, net, config, provider="cuda")
    print(report.table(), flush=True)
    if not report.passed:
        fail(f"{path} failed validation on CUDA")

    # 3. engines per bucket -----------------------------------------------------------------
    buckets = bucket_sizes(args.max_batch_size)
    cpus = len(os.sched_getaffinity(0))
    cuda = Engine(path, "cuda", 1, 1, max_batch_size=args.max_batch_size)
    if cuda.provider != CUDA or not cuda.io_binding or cuda.buckets != buckets:
        fail(f"the CUDA engine is not on the GPU path: {cuda.describe()}")
    graphs = Engine(path, "cuda", 1, 1, max_batch_size=args.max_batch_size, cuda_graphs=True)
    cpu = Engine(path, "cpu", cpus, 1, max_batch_size=args.max_batch_size)
    cuda.warm_up(runs=2)
    graphs.warm_up(runs=2)
    torch.backends.cudnn.allow_tf32 = False  # the numbers validation compares, and what serving runs
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    gpu_net = net.cuda().eval()
    rng = np.random.default_rng(0)
    rows = []
    for b in buckets:
        x = rng.random((b, *cuda.spec.input_shape), dtype=np.float32)
        reference = cpu.run(x)
        for name, engine in (("cuda", cuda), ("cuda graphs", graphs)):
            error = float(np.abs(engine.run(x) - reference).max())
            if error > 1e-3:
                fail(f"{name} engine differs from the CPU provider by {error:.3g} at batch {b}")
        xt = torch.from_numpy(x).cuda()

        def eager(xt: torch.Tensor = xt) -> None:
            with torch.inference_mode():
                gpu_net(xt).cpu()  # host copy included, like the engine's answer

        row = {"batch": b}
        row["torch"], _ = timed(eager, runs=args.runs, budget_s=20)
        row["ort"], _ = timed(lambda x=x: cuda.run(x), runs=args.runs, budget_s=20)
        row["graphs"], _ = timed(lambda x=x: graphs.run(x), runs=args.runs, budget_s=20)
        row["cpu"], row["cpu_runs"] = timed(lambda x=x: cpu.run(x), runs=args.runs, budget_s=args.cpu_budget_s)
        rows.append(row)
        print(
            f"batch {b}: torch eager {1000 * row['torch']:.2f} ms, ORT CUDA {1000 * row['ort']:.2f} ms, "
            f"+graphs {1000 * row['graphs']:.2f} ms, ORT CPU {1000 * row['cpu']:.1f} ms",
            flush=True,
        )

    # 4. served on CUDA ---------------------------------------------------------------------
    served = {flag: serve_and_measure(path, args, buckets, cpu, flag) for flag in ("", "--cuda-graphs")}

    print(f"\n{args.preset} on {gpu}, fp32, TF32 off; ms per batch (clips/s); ratios are torch eager / ORT")
    print(
        "| batch | torch CUDA eager | ORT CUDA | ORT CUDA graphs | ORT CPU | served p50 | served graphs p50 "
        "| eager/ORT | CPU/ORT |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        b = row["batch"]

        def cell(seconds: float, b: int = b) -> str:
            return f"{1000 * seconds:.2f} ({b / seconds:.0f})"

        print(
            f"| {b} | {cell(row['torch'])} | {cell(row['ort'])} | {cell(row['graphs'])} | {cell(row['cpu'])} "
            f"| {cell(served[''][b])} | {cell(served['--cuda-graphs'][b])} "
            f"| {row['torch'] / row['ort']:.2f}x | {row['cpu'] / row['ort']:.1f}x |"
        )
    for flag, result in served.items():
        print(f"served{' ' + flag if flag else ''}: 32 concurrent single-clip clients: {result['concurrent']:.0f} clips/s")
    print(f"\ngpu_check passed in {time.perf_counter() - began:.0f} s")
    return 0


def serve_and_measure(path: Path, args: argparse.Namespace, buckets: tuple[int, ...], cpu, flag: str) -> dict:
    """``stlight serve --device cuda [flag]``: p50 seconds per bucket-sized request, answers
    checked against the CPU provider, and clips/s of 32 concurrent one-clip clients."""
    import httpx

    sys.path.insert(0, str(REPO / "tests"))
    from serving import Server  # the tests' loopback server helper (torch blocked in the server)

    log = Path(tempfile.mkdtemp(prefix="gpu_check_serve_")) / "serve.log"
    extra = [flag] if flag else []
    srv = Server(log, "--model", str(path), "--device", "cuda", "--max-batch-size", str(args.max_batch_size), *extra)
    try:
        srv.wait_listening(120)
        srv.wait_ready(300)
        info = httpx.get(srv.url + "/v1/model").json()
        if info["provider"] != "CUDAExecutionProvider" or info["tf32"] or info["batch_buckets"] != list(buckets):
            fail(f"the server is not on the validated GPU path: {info}")
        rng = np.random.default_rng(1)
        result: dict = {}
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for b in buckets:
                x = rng.random((b, *cpu.spec.input_shape), dtype=np.float32)
                body, expected = npy(x), cpu.run(x)
                latencies = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    answer = http.post("/predict", content=body, headers={"Content-Type": "application/x-npy"})
                    latencies.append(time.perf_counter() - t)
                    if answer.status_code != 200:
                        fail(f"served {flag or 'plain'}: HTTP {answer.status_code}: {answer.text[:300]}")
                error = float(np.abs(np.load(io.BytesIO(answer.content)) - expected).max())
                if error > 1e-3:
                    fail(f"served {flag or 'plain'}: answer differs from the CPU provider by {error:.3g} at batch {b}")
                result[b] = statistics.median(latencies)
        clip = npy(rng.random(cpu.spec.input_shape, dtype=np.float32))

        async def concurrent() -> float:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                done, stop = 0, time.perf_counter() + 5

                async def one() -> None:
                    nonlocal done
                    while time.perf_counter() < stop:
                        r = await http.post("/predict", content=clip, headers={"Content-Type": "application/x-npy"})
                        done += r.status_code == 200

                t = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(32)))
                return done / (time.perf_counter() - t)

        result["concurrent"] = asyncio.run(concurrent())
        return result
    finally:
        if srv.stop() not in (0, None):
            print(srv.text()[-3000:], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
