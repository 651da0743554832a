"""The GPU host's training run, time-boxed to one command: Moving MNIST with the GPU recipe, then
export, validation and a test score beside the paper's Table 3, everything written to ``--out``.

    python3 benchmarks/gpu/train_host.py --out "$OUT"                      # on the host: mmnist-s, < 9.5 min
    python3 benchmarks/gpu/train_host.py --out "$OUT" --preset tiny --overrides dim=256 --batch 256
    python benchmarks/gpu/train_host.py --smoke --out /tmp/host             # here, on CPU, in about a minute

Phases (each prints as it goes; results are written as soon as they exist, so a run cut short
still brings back what it did):

1. preflight: versions, the device, the digits; then the whole pipeline at toy size on the device
   (3 training steps, export, ONNX validation, test clips), so a broken piece fails in the first
   minute rather than the ninth;
2. benchmark: ``benchmarks/train_recipe.py``'s rows for the preset (the paper's settings, the
   recipe, the recipe without each piece), and ``torch.compile`` measured once;
3. training: ``stlight train`` with the recipe for the time left (at most ``--train-minutes``):
   compiled only when the measured speed-up outweighs the compile time inside the box; the
   schedule is sized from the measured samples/s so OneCycle ends inside it, and
   ``--time-limit`` stops it there in any case;
4. results: ``best.pt`` exported to ONNX and validated against torch (ONNX Runtime, CPU), scored
   on ``--test-clips`` Moving MNIST clips made with a fixed seed from held-out MNIST digits (the
   last ``--held-out-digits`` of the file, never trained on), beside the trivial baselines and the
   paper's Table 3, with the projection of a 200-epoch run from the measured samples/s;
5. packing: at most 8 files of at most 15.5 MiB in ``--out`` (the host's limits): ``results.md``,
   ``run.tar`` (results.json, the log, metrics.jsonl, pictures, the validation report), then the
   weights checkpoint and the ONNX file, split into parts when larger (rejoin with ``cat``;
   sha256 in results.json); what does not fit is named in results.md.

Needs only what the host has (torch, numpy, onnx, onnxscript, onnxruntime, pillow, tqdm,
scikit-image): no FastAPI, pydantic or PyAV is imported. docs/training.md, "The GPU host run".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # the host runs from a plain checkout, nothing installed

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_recipe import measure, print_table, table_rows  # noqa: E402

from model.cli import add_train, train_from_args  # noqa: E402
from model.config import preset  # noqa: E402
from model.data import DataSpec, build_test_dataset, clip_count, load_mnist_digits  # noqa: E402
from model.metrics import MetricAccumulator  # noqa: E402

MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
OPENSTL_EPOCH = 10_000  # clips per Moving MNIST epoch (OpenSTL): epochs-equivalent = clips trained / this
MAX_FILES, PART_MIB = 8, 15.5  # the host's limits on what comes back: 8 files, each at most 16 MiB
# Table 3 of the paper (200 epochs, mnist_test_seq.npy), as ../shared/PAPER.md restates it: (params M, MSE, MAE, SSIM)
PAPER_TABLE3: dict[str, tuple[float, float, float | None, float | None]] = {
    "STLight-L (paper)": (32.9, 21.80, 66.92, 0.9515),
    "STLight-XS (paper)": (11.1, 24.48, None, None),
    "PredRNN++ (paper)": (38.6, 22.06, None, None),
    "TAU (paper)": (44.7, 24.60, None, None),
    "ConvLSTM (paper)": (math.nan, 29.80, None, None),
    "SimVP (paper)": (58.0, 32.15, None, None),
}


# ---------------------------------------------------------------------------------------
# time and the log
# ---------------------------------------------------------------------------------------


class Clock:
    """Seconds since the script started, against the command's deadline."""

    def __init__(self, minutes: float) -> None:
        self.start, self.deadline = time.monotonic(), minutes * 60

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.deadline - self.elapsed()


class Tee(io.TextIOBase):
    """Writes to the terminal (what ``run`` shows) and to the log that comes back in run.tar."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def logged(path: Path) -> Iterator[None]:
    with (
        open(path, "a", buffering=1) as log,
        contextlib.redirect_stdout(Tee(sys.stdout, log)),  # type: ignore[type-var]
        contextlib.redirect_stderr(Tee(sys.stderr, log)),  # type: ignore[type-var]
    ):
        yield


def phase(clock: Clock, name: str) -> None:
    print(f"\n=== [{clock.elapsed():6.1f} s, {clock.left():6.1f} s left] {name}", flush=True)


@dataclass
class Results:
    """Everything results.json holds; written after every phase."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------


def host_facts(device: torch.device) -> dict[str, Any]:
    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(),
    }
    for module in ("onnx", "onnxruntime", "onnxscript", "skimage"):
        try:
            facts[module] = __import__(module).__version__
        except ImportError as exc:
            facts[module] = f"missing ({exc})"
    if hasattr(os, "getloadavg"):
        facts["load_average"] = os.getloadavg()[0]
    return facts


def train_command(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    """``stlight train`` flags shared by the toy run and the real one."""
    command = [
        "--data-dir", str(args.data_dir), "--held-out-digits", str(args.held_out_digits),
        "--device", args.device, "--no-progress", "--out", str(out),
    ]  # fmt: skip
    return command + list(extra)


def stlight_train(argv: list[str]) -> dict[str, Any]:
    """``stlight train ARGV`` in this process, through its own parser; returns its summary."""
    parser = argparse.ArgumentParser(prog="stlight")
    add_train(parser.add_subparsers())
    print("stlight train " + " ".join(argv), flush=True)
    summary = train_from_args(parser.parse_args(["train", *argv]))
    assert summary is not None  # one process: rank 0
    return summary


def preflight(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The pipeline at toy size: 3 steps with the recipe (no compile), export, validation, test clips."""
    toy = work / "preflight"
    toy_flags = ["--preset", "tiny", "--dim", "32", "--depth", "2", "--batch-size", "8", "--clips-per-epoch", "24"]
    summary = stlight_train(train_command(args, toy, *toy_flags, "--max-steps", "3", "--val-clips", "8"))
    report, _ = export_and_validate(toy / "best.pt", toy / "toy.onnx")
    scores = test_scores(args, toy / "best.pt", clips=8)
    if not report["passed"]:
        raise SystemExit(f"preflight: the toy model's ONNX export failed validation:\n{report['table']}")
    return {"train_steps": summary["step"], "onnx_validation_passed": report["passed"], "toy_test_mse": scores["model"]["mse"]}


def benchmark(args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    """The recipe's rows for the preset, then the recipe compiled (when time allows)."""
    config, device = model_config(args), torch.device(args.device)
    pieces = [piece for piece in args.pieces if piece != "bf16" or device.type == "cuda"]
    rows = [row for row in table_rows(pieces) if not row[0].startswith("+ ")]  # the host's minutes: no single-piece rows
    results = []
    for label, recipe in sorted(rows, key=lambda row: not row[0].startswith("recipe (")):  # the recipe settles the batch
        while True:
            try:
                result = measure(
                    config, recipe, device=args.device, batch=args.batch, steps=args.bench_steps, data_dir=args.data_dir
                )
                break
            except torch.OutOfMemoryError:
                if not recipe.batch or args.batch <= 16:
                    raise
                args.batch //= 2
                print(f"out of memory: --batch {args.batch} from now on", flush=True)
                torch.cuda.empty_cache()
        results.append((label, recipe, result))
        print(
            f"{label}: {result['samples_per_s'] or 0:.1f} samples/s (warm-up {result['warmup_seconds'] or 0:.1f} s)", flush=True
        )
    results.sort(key=lambda r: [label for label, _ in rows].index(r[0]))
    full = next(recipe for label, recipe, _ in results if label.startswith("recipe ("))
    eager = next(result for label, _, result in results if label.startswith("recipe ("))
    compiled = None
    if args.compile_probe and clock.left() > args.compile_budget + args.reserve + 120:
        compiled = measure(
            config,
            full.with_("compile", True),
            device=args.device,
            batch=args.batch,
            steps=args.bench_steps,
            data_dir=args.data_dir,
        )
        results.append(("recipe + compile", full.with_("compile", True), compiled))
        print(
            f"recipe + compile: {compiled['samples_per_s'] or 0:.1f} samples/s (compile {compiled['warmup_seconds'] or 0:.1f} s)"
        )
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        print_table(results, args.batch)
    print(table.getvalue())
    return {"table": table.getvalue(), "eager": eager, "compiled": compiled, "recipe": full}


def plan_training(args: argparse.Namespace, bench: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """Training seconds, compile or not, and the steps that fit: OneCycle must end inside the box."""
    seconds = min(args.train_minutes * 60, clock.left() - args.reserve)
    eager, compiled = bench["eager"], bench["compiled"]
    options = [("eager", eager["samples_per_s"] or 0.0, eager["warmup_seconds"] or 0.0)]
    if compiled and compiled["samples_per_s"]:
        options.append(("compiled", compiled["samples_per_s"], compiled["warmup_seconds"] or 0.0))
    # clips trained in the box: (time - warm-up) × rate; 10 % kept for validation and checkpoints
    name, rate, warm = max(options, key=lambda o: max(0.0, seconds * 0.9 - o[2]) * o[1])
    steps = int(max(0.0, seconds * 0.9 - warm) * rate / args.batch)
    if steps < args.min_steps:
        raise SystemExit(f"only {steps} steps fit in {seconds:.0f} s at {rate:.0f} samples/s; give more --minutes")
    epoch_clips = max(1, round(rate * args.epoch_seconds / args.batch)) * args.batch  # validate about once a minute
    return {
        "seconds": seconds,
        "compile": name == "compiled",
        "rate": rate,
        "warmup_seconds": warm,
        "steps": steps,
        "clips_per_epoch": epoch_clips,
        "why": f"{name}: {', '.join(f'{n} {r:.0f} samples/s after {w:.0f} s warm-up' for n, r, w in options)}",
    }


def train_run(args: argparse.Namespace, plan: dict[str, Any], run: Path) -> dict[str, Any]:
    extra = ["--preset", args.preset, *overrides_flags(args), "--batch-size", str(args.batch)]
    extra += ["--max-steps", str(plan["steps"]), "--clips-per-epoch", str(plan["clips_per_epoch"])]
    extra += ["--val-clips", str(args.val_clips), "--time-limit", f"{plan['seconds'] / 60:.3f}"]
    return stlight_train(train_command(args, run, *extra, *(["--compile"] if plan["compile"] else [])))


# ---------------------------------------------------------------------------------------
# results: export, validation, test scores, the table beside the paper's
# ---------------------------------------------------------------------------------------


def export_and_validate(ckpt: Path, onnx_path: Path) -> tuple[dict[str, Any], float]:
    from export.onnx_export import export_checkpoint
    from export.validation import validate
    from model.checkpoint import load_checkpoint

    started = time.perf_counter()
    export_checkpoint(ckpt, onnx_path)
    net, config = load_checkpoint(ckpt)
    report = validate(onnx_path, net, config)
    print(report.table(), flush=True)
    return {**report.to_dict(), "table": report.table()}, time.perf_counter() - started


def test_scores(args: argparse.Namespace, ckpt: Path, clips: int) -> dict[str, Any]:
    """OpenSTL metrics of the checkpoint and of the two trivial predictors on the same test clips."""
    from model.checkpoint import load_checkpoint
    from model.train import evaluate

    net, config = load_checkpoint(ckpt)
    spec = DataSpec("mmnist", data_dir=str(args.data_dir), val_clips=clips, held_out_digits=args.held_out_digits)
    dataset = build_test_dataset(spec, config)
    device = torch.device(args.device)
    workers = min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
    metrics, first = evaluate(net.to(device), dataset, device, batch_size=32, workers=workers)
    zeros, last = MetricAccumulator(), MetricAccumulator()
    for start in range(0, clip_count(dataset), 100):
        pairs = [dataset[i] for i in range(start, min(start + 100, clip_count(dataset)))]
        inputs, truth = (np.stack([pair[k].numpy() for pair in pairs]) for k in (0, 1))
        zeros.update(np.zeros_like(truth), truth)
        last.update(np.repeat(inputs[:, -1:], truth.shape[1], axis=1), truth)
    return {"model": metrics, "all zeros": zeros.result(), "repeat last input frame": last.result(), "first": first}


def results_table(args: argparse.Namespace, facts: dict[str, Any], summary: dict[str, Any], scores: dict[str, Any]) -> str:
    clips = summary["step"] * args.batch
    epochs = clips / OPENSTL_EPOCH
    params = summary["params"] / 1e6
    rows = [
        (f"**this run**: {args.preset}, {summary['loop_seconds'] / 60:.1f} min on {facts['device']}", params, epochs,
         scores["model"]),
        ("all-zero frames (same clips)", None, None, scores["all zeros"]),
        ("repeat the last input frame (same clips)", None, None, scores["repeat last input frame"]),
    ]  # fmt: skip
    lines = [
        f"Test: {args.test_clips} Moving MNIST clips made with a fixed seed from the last {args.held_out_digits} digits of "
        f"{args.data_dir.name} (never trained on); the paper's rows are Table 3 (200 epochs, mnist_test_seq.npy).",
        "",
        "| model | params (M) | epochs | MSE | MAE | SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for name, p, e, m in rows:
        lines.append(
            f"| {name} | {'' if p is None else f'{p:.2f}'} | {'' if e is None else f'{e:.2f} (equivalent)'} | "
            f"{m['mse']:.2f} | {m['mae']:.2f} | {m['ssim']:.4f} |"
        )
    for name, (p, mse, mae, ssim) in PAPER_TABLE3.items():
        size = "" if math.isnan(p) else f"{p:.1f}"
        lines.append(f"| {name} | {size} | 200 | {mse:.2f} | {'—' if mae is None else mae} | {'—' if ssim is None else ssim} |")
    return "\n".join(lines)


def projection(summary: dict[str, Any], plan: dict[str, Any], batch: int, epochs: int = 200) -> dict[str, Any]:
    """Time for ``epochs`` OpenSTL epochs at this run's measured rates: the steady one (training
    alone) plus one warm-up, and the overall one (validation and checkpoints included)."""
    clips = epochs * OPENSTL_EPOCH
    steady = summary.get("steady_samples_per_s") or plan["rate"]
    overall = summary["step"] * batch / summary["loop_seconds"] if summary["loop_seconds"] else steady
    return {
        "epochs": epochs,
        "clips": clips,
        "steady_samples_per_s": steady,
        "hours_at_steady_rate": (clips / steady + plan["warmup_seconds"]) / 3600,
        "hours_as_run": clips / overall / 3600,
    }


def weights_only(run: Path, path: Path) -> Path:
    """``best.pt`` without optimiser, scheduler and RNG states: what eval, export and packaging need."""
    from model.checkpoint import build_model, read_checkpoint, save_checkpoint

    payload = read_checkpoint(run / "best.pt")
    net, config = build_model(payload)
    keep = {k: payload[k] for k in ("step", "epoch", "metrics", "best_mse", "preset", "dataset", "run", "data") if k in payload}
    return save_checkpoint(path, net, config, **keep)


# ---------------------------------------------------------------------------------------
# packing: what comes back from the host
# ---------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parts_of(size: int, part_bytes: int) -> int:
    return max(1, math.ceil(size / part_bytes))


def pack(out: Path, small: list[Path], large: list[Path], part_mib: float, max_files: int = MAX_FILES) -> dict[str, Any]:
    """``results.md`` stays as it is; ``small`` files go into run.tar; each ``large`` file, in
    order, is copied whole or in ``.partN`` pieces when its pieces fit in the files left."""
    part_bytes = int(part_mib * 2**20)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "run.tar", "w") as tar:
        for path in small:
            if path.is_file():
                tar.add(path, arcname=path.name)
    used = len([p for p in out.iterdir() if p.is_file()])
    packed: dict[str, Any] = {}
    for path in large:
        if not path.is_file():
            continue
        size, count = path.stat().st_size, parts_of(path.stat().st_size, part_bytes)
        entry = {"bytes": size, "sha256": sha256(path), "parts": count}
        if used + count > max_files:
            packed[path.name] = {**entry, "left_out": f"needs {count} file(s), {max_files - used} left"}
            continue
        with open(path, "rb") as source:
            for index in range(count):
                name = path.name if count == 1 else f"{path.name}.part{index:02d}"  # sorted as cat's glob sorts
                (out / name).write_bytes(source.read(part_bytes))
        used += count
        packed[path.name] = entry
    return packed


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def model_config(args: argparse.Namespace) -> Any:
    return preset(args.preset).replace(**dict(overrides(args)))


def overrides(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(k, int(v)) for k, v in (item.split("=") for item in args.overrides.split(",") if item)]


def overrides_flags(args: argparse.Namespace) -> list[str]:
    return [text for k, v in overrides(args) for text in ("--" + k.replace("_", "-"), str(v))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where results go ($OUT on the host)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a folder beside --out)")
    parser.add_argument("--preset", default="mmnist-s", help="model preset (default mmnist-s, the paper's STLight-S)")
    parser.add_argument("--overrides", default="", help="config overrides, e.g. dim=256,depth=8")
    parser.add_argument("--batch", type=int, default=128, help="clips per step (default 128; lr by the square-root rule)")
    parser.add_argument("--minutes", type=float, default=9.5, help="the whole command's wall time (default 9.5)")
    parser.add_argument("--train-minutes", type=float, default=8.0, help="training's cap inside it (default 8)")
    parser.add_argument("--reserve", type=float, default=75.0, help="seconds kept for the results phase (default 75)")
    parser.add_argument("--bench-steps", type=int, default=12, help="timed steps per benchmark row (default 12)")
    parser.add_argument(
        "--pieces", nargs="+", default=["clips", "layout", "batch", "bf16"], help="recipe pieces the benchmark switches off"
    )
    parser.add_argument("--min-steps", type=int, default=50, help="fewer training steps than this in the time: stop (50)")
    parser.add_argument("--compile-budget", type=float, default=150.0, help="seconds a compile probe may take (default 150)")
    parser.add_argument("--no-compile-probe", dest="compile_probe", action="store_false", help="train eager, measure no compile")
    parser.add_argument("--epoch-seconds", type=float, default=60.0, help="validate about this often (default 60 s)")
    parser.add_argument("--val-clips", type=int, default=1000, help="validation clips (default 1000)")
    parser.add_argument("--test-clips", type=int, default=2000, help="test clips from the held-out digits (default 2000)")
    parser.add_argument("--held-out-digits", type=int, default=1000, help="digits kept for the test (default 1000)")
    parser.add_argument("--data-dir", type=Path, default=MNIST_DIR, help=f"MNIST digits (default {MNIST_DIR})")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default cuda")
    parser.add_argument("--part-mib", type=float, default=PART_MIB, help=f"largest file brought back (default {PART_MIB})")
    parser.add_argument("--smoke", action="store_true", help="CPU, a toy model, about a minute: tests the script itself")
    args = parser.parse_args(argv)
    if args.smoke:  # every phase, each as small as it goes: the time box is loose, training's stays short
        args.device, args.preset, args.overrides, args.batch = "cpu", "tiny", "dim=32,depth=2", 24
        args.bench_steps, args.pieces, args.val_clips, args.test_clips = 2, ["layout"], 16, 32
        args.compile_probe, args.reserve, args.epoch_seconds, args.min_steps = False, 60.0, 5.0, 3
        args.minutes, args.train_minutes = min(args.minutes, 4.0), min(args.train_minutes, 0.25)
    args.work = args.work or args.out.parent / (args.out.name + "-work")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.minutes)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.work / "results.json")
    with logged(args.work / "run.log"):
        run_phases(args, clock, results)
    return 0


def run_phases(args: argparse.Namespace, clock: Clock, results: Results) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no GPU")
    phase(clock, "preflight")
    facts = host_facts(device)
    results.put("host", facts)
    print(json.dumps(facts), flush=True)
    digits = load_mnist_digits(args.data_dir, download=False)
    if not 0 < args.held_out_digits < len(digits) // 2:
        raise SystemExit(f"--held-out-digits {args.held_out_digits}: {args.data_dir} has {len(digits)} digits")
    results.put("digits", {"file": str(args.data_dir), "count": len(digits), "held_out": args.held_out_digits})
    results.put("preflight", preflight(args, args.work))

    phase(clock, "benchmark")
    bench = benchmark(args, clock)
    results.put("benchmark", {k: v for k, v in bench.items() if k != "recipe"})

    phase(clock, "training")
    plan = plan_training(args, bench, clock)
    print(f"plan: {plan['steps']} steps of {args.batch} in {plan['seconds']:.0f} s; {plan['why']}", flush=True)
    results.put("plan", plan)
    run = args.work / "run"
    summary = train_run(args, plan, run)
    results.put("training", summary)

    phase(clock, "results")
    finish(args, clock, results, facts, plan, summary, run)


def finish(
    args: argparse.Namespace,
    clock: Clock,
    results: Results,
    facts: dict[str, Any],
    plan: dict[str, Any],
    summary: dict[str, Any],
    run: Path,
) -> None:
    from model.train import save_strip

    weights = weights_only(run, args.work / f"{args.preset}.pt")
    report, export_seconds = export_and_validate(weights, args.work / f"{args.preset}.onnx")
    results.put("onnx_validation", {k: v for k, v in report.items() if k != "table"} | {"seconds": export_seconds})
    scores = test_scores(args, weights, args.test_clips)
    save_strip(args.work / "test_clip0.png", *scores.pop("first"), scale=2)
    results.put("test", scores)
    table = results_table(args, facts, summary, scores)
    results.put("projection", projection(summary, plan, args.batch))
    write_markdown(args, results, table)
    small = [results.path, args.work / "run.log", run / "metrics.jsonl", args.work / "test_clip0.png"]
    small += sorted(run.glob("val_step*.png"))[-1:]
    packed = pack(args.out, small, [weights, args.work / f"{args.preset}.onnx"], args.part_mib)
    results.put("packed", packed)
    write_markdown(args, results, table)  # again, with what was packed
    pack(args.out, small, [], args.part_mib)  # run.tar with the final results.json
    print(f"done in {clock.elapsed():.0f} s; {args.out}: {sorted(p.name for p in args.out.iterdir())}", flush=True)


def write_markdown(args: argparse.Namespace, results: Results, table: str) -> None:
    data = results.data
    training, plan, proj = data["training"], data["plan"], data["projection"]
    lines = [
        f"# GPU host run: {args.preset} on Moving MNIST",
        "",
        f"Host: {data['host']['device']}, torch {data['host']['torch']} (CUDA {data['host']['cuda']}).",
        f"Training: {training['step']} steps of {args.batch} clips ({training['step'] * args.batch:,} clips, "
        f"{training['step'] * args.batch / OPENSTL_EPOCH:.2f} epochs-equivalent) in {training['loop_seconds'] / 60:.1f} min, "
        f"{'compiled' if plan['compile'] else 'eager'} ({plan['why']}); steady "
        f"{training.get('steady_samples_per_s') or 0:.0f} samples/s; "
        f"{'finished its schedule' if training['finished'] else 'stopped by the time limit'}.",
        "",
        table,
        "",
        f"200 epochs ({proj['clips']:,} clips) would take {proj['hours_at_steady_rate']:.2f} h at the steady rate "
        f"({proj['steady_samples_per_s']:.0f} samples/s, no validation), {proj['hours_as_run']:.2f} h at this run's "
        "overall rate.",
        "",
        f"ONNX export validated against torch: {'passed' if data['onnx_validation']['passed'] else 'FAILED'}.",
        "",
        "## Benchmark (samples/s, this host)",
        "",
        data["benchmark"]["table"],
    ]
    for name, entry in data.get("packed", {}).items():
        state = entry.get("left_out") or (
            f"in {entry['parts']} parts: cat {name}.part* > {name}" if entry["parts"] > 1 else "whole"
        )
        lines.append(f"- `{name}`: {entry['bytes'] / 2**20:.1f} MiB, sha256 {entry['sha256'][:16]}…, {state}")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
