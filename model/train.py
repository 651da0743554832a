"""Training and evaluation loops behind ``stlight train`` and ``stlight eval``.

Adam on the MSE loss, a OneCycle or cosine learning rate stepped once per optimizer step, periodic
validation with OpenSTL's metrics, and checkpoints that carry everything needed to continue:
``--resume`` after N/2 steps ends with the same weights as an uninterrupted N-step run (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import STLightConfig
from model.data import DataError, DataSpec, build_datasets
from model.metrics import MetricAccumulator
from model.stlight import STLight, count_params

# Table 2 of the paper (App. E); npz gets middle-of-the-road values (documented in the README).
TABLE2: dict[str, dict[str, Any]] = {
    "mmnist": {"lr": 3e-3, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 16, "epochs": 200},
    "taxibj": {"lr": 3e-3, "schedule": "cosine", "final_div_factor": 1e4, "batch_size": 16, "epochs": 50},
    "frames": {"lr": 5e-4, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 12, "epochs": 100},  # KTH
    "npz": {"lr": 1e-3, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 16, "epochs": 100},
}
DEFAULT_PRESET = {"mmnist": "mmnist-xs", "taxibj": "taxibj-s", "frames": "kth-xs", "npz": "tiny"}
COSINE_MIN_LR = 1e-6  # OpenSTL's min_lr for its cosine schedule


class SetupError(ValueError):
    """A run that cannot start as asked (no CUDA for --device cuda, unknown schedule)."""


@dataclass(frozen=True)
class RunSettings:
    """What defines a run: stored in the checkpoint; ``--resume`` must not change it."""

    dataset: str
    preset: str
    lr: float
    schedule: str  # "onecycle" | "cosine"
    final_div_factor: float
    batch_size: int
    total_steps: int
    steps_per_epoch: int
    seed: int
    clips_per_epoch: int
    val_clips: int
    val_fraction: float


@dataclass
class Runtime:
    """How this invocation runs; free to change between a run and its resumption."""

    out: Path
    device: str = "auto"
    workers: int | None = None  # None: 0 on CPU, min(8, cores) on CUDA
    threads: int | None = None  # None: all cores
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + loss scaling)
    val_every: int = 0  # steps; 0 = once per epoch
    stop_after: int | None = None  # leave after this many steps in this invocation (last.pt saved)
    progress: bool = True


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(name)


class EpochBatches(Sampler[list[int]]):
    """Batches of a per-epoch permutation seeded by ``(seed, epoch)``; drops the last partial
    batch. ``start`` skips the batches a resumed run has already trained on."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        for b in range(self.start, self.n // self.batch_size):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: RunSettings) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=settings.total_steps, final_div_factor=settings.final_div_factor
        )
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=settings.total_steps, eta_min=min(COSINE_MIN_LR, settings.lr)
        )
    raise SetupError(f"unknown schedule {settings.schedule!r}; choose onecycle or cosine")


def autocast_for(device: torch.device, amp: bool) -> tuple[Any, torch.dtype | None]:
    """The autocast context and dtype for this device; fp32 off CUDA or with ``amp`` off."""
    if device.type != "cuda" or not amp:
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def loader_for(
    dataset: Dataset, batch_size: int, workers: int, device: torch.device, batch_sampler: Sampler | None = None
) -> DataLoader:
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, generator=torch.Generator().manual_seed(0), **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


@torch.no_grad()
def evaluate(
    net: STLight,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    amp: bool = True,
    progress: bool = False,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """OpenSTL metrics of ``net`` on every clip of ``dataset``, and the first clip's
    ``(inputs, truth, prediction)`` for a picture."""
    was_training = net.training
    net.eval()
    acc = MetricAccumulator()
    autocast, _ = autocast_for(device, amp)
    first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    loader = loader_for(dataset, batch_size, workers, device)
    for inputs, targets in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        inputs = inputs.to(device, non_blocking=True)
        with autocast:
            pred = net(inputs)
        pred_np = pred.float().cpu().numpy()
        acc.update(pred_np, targets.numpy())
        if first is None:
            first = (inputs[0].float().cpu().numpy(), targets[0].numpy(), pred_np[0])
    net.train(was_training)
    assert first is not None, "empty dataset"
    return acc.result(), first


def save_strip(path: Path, inputs: np.ndarray, truth: np.ndarray, pred: np.ndarray, scale: int = 1) -> Path:
    """A PNG with rows input, truth, prediction (frames left to right, 2-pixel gaps).

    Grey for 1 channel, RGB for 3; other channel counts show their first channel."""
    from PIL import Image

    def frame_image(frame: np.ndarray) -> np.ndarray:  # (C, H, W) -> (H, W, 3) uint8
        pixels = np.clip(frame, 0, 1)
        pixels = pixels.transpose(1, 2, 0) if frame.shape[0] == 3 else np.repeat(pixels[0][..., None], 3, axis=2)
        return (pixels * 255 + 0.5).astype(np.uint8)

    rows = [inputs, truth, pred]
    _, h, w = inputs.shape[1:]
    cols = max(len(r) for r in rows)
    gap = 2
    canvas = np.full((3 * h + 2 * gap, cols * w + (cols - 1) * gap, 3), 64, dtype=np.uint8)
    for r, frames in enumerate(rows):
        for c, frame in enumerate(frames):
            top, left = r * (h + gap), c * (w + gap)
            canvas[top : top + h, left : left + w] = frame_image(frame)
    image = Image.fromarray(canvas)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def train(
    settings: RunSettings,
    config: STLightConfig,
    spec: DataSpec,
    runtime: Runtime,
    resume: dict[str, Any] | None = None,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> dict[str, Any]:
    """Train (or continue ``resume``, a checkpoint dict) and return a summary.

    Writes ``last.pt`` (each epoch, each validation, at the end), ``best.pt`` (best validation
    MSE), ``metrics.jsonl`` and ``val_step*.png`` under ``runtime.out``."""
    out = runtime.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(runtime.threads or os.cpu_count() or 1)
    device = resolve_device(runtime.device)
    workers = runtime.workers if runtime.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    log = tqdm.write

    # data
    train_set, val_set = datasets if datasets is not None else build_datasets(spec, config)
    steps_per_epoch = len(train_set) // settings.batch_size
    if steps_per_epoch != settings.steps_per_epoch:
        raise DataError(
            f"the training data now gives {steps_per_epoch} batches per epoch, the run was made with {settings.steps_per_epoch}; "
            "resume with the same data, or start a new run"
        )
    sampler = EpochBatches(len(train_set), settings.batch_size, settings.seed)
    loader = loader_for(train_set, settings.batch_size, workers, device, batch_sampler=sampler)

    # model and optimizer
    seed_everything(settings.seed)
    net = STLight(config).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = make_scheduler(optimizer, settings)
    autocast, amp_dtype = autocast_for(device, runtime.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, best_mse, last_metrics = 0, math.inf, None
    if resume is not None:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        step, best_mse, last_metrics = resume["step"], resume.get("best_mse", math.inf), resume.get("metrics")
        set_rng_states(resume["rng"])
        log(f"resumed {out / 'last.pt'} at step {step}/{settings.total_steps}")
    net.train()

    def state(epoch_float: float) -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step,
            "epoch": epoch_float,
            "rng": rng_states(),  # the data is a function of (seed, epoch, index): no loader state needed
            "metrics": last_metrics,
            "best_mse": best_mse,
            "preset": settings.preset,
            "dataset": settings.dataset,
            "run": dataclasses.asdict(settings),
            "data": dataclasses.asdict(spec),
        }

    def validate() -> None:
        nonlocal best_mse, last_metrics
        metrics, (inp, truth, pred) = evaluate(
            net, val_set, device, batch_size=max(settings.batch_size, 32), workers=workers, amp=runtime.amp
        )
        last_metrics = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "lr": scheduler.get_last_lr()[0],
            "train_loss": window_loss(),
            **metrics,
        }
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(last_metrics) + "\n")
        save_strip(out / f"val_step{step:07d}.png", inp, truth, pred, scale=2 if config.height <= 64 else 1)
        log(
            f"step {step}: val mse {metrics['mse']:.2f}  mae {metrics['mae']:.2f}  ssim {metrics['ssim']:.4f}  psnr {metrics['psnr']:.2f}"
        )
        if metrics["mse"] < best_mse:
            best_mse = metrics["mse"]
            save_checkpoint(out / "best.pt", net, config, **state(step / steps_per_epoch))

    losses: list[float] = []

    def window_loss() -> float | None:
        value = float(np.mean(losses)) if losses else None
        losses.clear()
        return value

    # loop
    start_step, started = step, time.perf_counter()
    end_step = settings.total_steps if runtime.stop_after is None else min(settings.total_steps, step + runtime.stop_after)
    interactive = sys.stderr.isatty()
    bar = tqdm(
        total=settings.total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not runtime.progress,
        mininterval=0.5 if interactive else 30,
        dynamic_ncols=True,
    )
    ema, validated_at = None, -1
    while step < end_step:
        epoch, offset = divmod(step, steps_per_epoch)
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, offset)
        for inputs, targets in loader:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast:
                loss = F.mse_loss(net(inputs).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {step}; lower --lr")
            losses.append(value)
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            rate = (step - start_step) * settings.batch_size / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.5f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", samples_s=f"{rate:.1f}", refresh=False)
            if runtime.val_every and step % runtime.val_every == 0:
                validate()
                validated_at = step
                save_checkpoint(out / "last.pt", net, config, **state(step / steps_per_epoch))
            if step >= end_step:
                break
        if step % steps_per_epoch == 0 and validated_at != step:  # an epoch ended
            if not runtime.val_every:
                validate()
                validated_at = step
            save_checkpoint(out / "last.pt", net, config, **state(step / steps_per_epoch))
    bar.close()
    loop_seconds = time.perf_counter() - started  # training only: before the final validation
    if validated_at != step:
        validate()
    save_checkpoint(out / "last.pt", net, config, **state(step / steps_per_epoch))
    elapsed = time.perf_counter() - started
    return {
        "step": step,
        "total_steps": settings.total_steps,
        "finished": step >= settings.total_steps,
        "best_mse": best_mse,
        "metrics": last_metrics,
        "params": count_params(net),
        "seconds": elapsed,
        "samples_per_s": (step - start_step) * settings.batch_size / elapsed if elapsed > 0 else None,
        "loop_seconds": loop_seconds,
        "out": str(out),
    }


def load_resume(out: Path) -> dict[str, Any]:
    """The checkpoint ``out/last.pt`` with its run settings, for ``--resume``."""
    payload = read_checkpoint(out / "last.pt")
    if "run" not in payload or "optimizer" not in payload:
        raise ValueError(f"{out / 'last.pt'} is not a training checkpoint (no optimizer or run settings); it cannot be resumed")
    return payload
