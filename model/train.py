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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from model import distributed
from model.checkpoint import read_checkpoint, save_checkpoint
from model.config import STLightConfig
from model.data import DataError, DataSpec, MovingMNIST, build_datasets, clip_count
from model.device_data import DeviceBatches, TensorMovingMNIST
from model.distributed import Ranks, ranks_from_env
from model.metrics import MetricAccumulator
from model.stlight import STLight, count_params
from service.core.frames import to_uint8

# Table 2 of the paper (App. E); npz gets middle-of-the-road values (documented in the README).
TABLE2: dict[str, dict[str, Any]] = {
    "mmnist": {"lr": 3e-3, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 16, "epochs": 200},
    "taxibj": {"lr": 3e-3, "schedule": "cosine", "final_div_factor": 1e4, "batch_size": 16, "epochs": 50},
    "frames": {"lr": 5e-4, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 12, "epochs": 100},  # KTH
    "npz": {"lr": 1e-3, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 16, "epochs": 100},
    "videos": {"lr": 5e-4, "schedule": "onecycle", "final_div_factor": 1e4, "batch_size": 12, "epochs": 100},  # as frames (KTH)
}
DEFAULT_PRESET = {"mmnist": "mmnist-xs", "taxibj": "taxibj-s", "frames": "kth-xs", "npz": "tiny", "videos": "kth-xs"}
COSINE_MIN_LR = 1e-6  # OpenSTL's min_lr for its cosine schedule
# The loss is summed on the device and read (a host sync) this often: reading it every step
# would stall the GPU's queue once per step. A NaN is therefore noticed up to this many steps
# late, but always before a checkpoint is written.
LOSS_READ_EVERY = 20
# Steps of each invocation left out of its steady samples/s: the first compiles (torch.compile)
# and searches cuDNN's algorithms; the next may still settle the allocator.
WARMUP_STEPS = 3


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
    batch_size: int  # per process; a step trains on batch_size × world_size clips
    total_steps: int
    steps_per_epoch: int
    seed: int
    clips_per_epoch: int
    val_clips: int
    val_fraction: float
    world_size: int = 1  # processes (torchrun); older checkpoints were all single-process
    clips_on_device: bool = False  # mmnist: clips made on the training device (model.device_data), not by loader workers

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size


@dataclass
class Runtime:
    """How this invocation runs; free to change between a run and its resumption."""

    out: Path
    device: str = "auto"
    workers: int | None = None  # None: 0 on CPU, min(8, cores) on CUDA
    threads: int | None = None  # None: all cores
    amp: bool = True  # mixed precision on CUDA (bf16 where native, else fp16 + loss scaling); off: strict fp32, no TF32
    val_every: int = 0  # steps; 0 = once per epoch
    stop_after: int | None = None  # leave after this many steps in this invocation (last.pt saved)
    time_limit: float | None = None  # seconds: leave at the next loss read past it (last.pt saved)
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool = False  # torch.compile the training model (its first steps compile)
    progress: bool = True


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def resolve_device(name: str, ranks: Ranks | None = None) -> torch.device:
    """``auto``/``cuda``/``cpu`` as a device; under torchrun, a GPU is this process's local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    if name != "cuda" or ranks is None or not ranks.distributed:
        return torch.device(name)
    visible = torch.cuda.device_count()
    if ranks.local_rank >= visible:
        raise SetupError(
            f"torchrun started {ranks.local_world} processes on this node but PyTorch sees {visible} GPU(s); "
            f"use --nproc-per-node {visible} (one process per GPU), or --device cpu"
        )
    torch.cuda.set_device(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys from a per-epoch permutation seeded by ``(seed, epoch)``;
    drops the last partial batch. ``start`` skips the batches a resumed run has already trained on.

    With ``world`` processes a global batch is ``batch_size × world`` clips and process ``rank``
    takes its ``rank``-th slice, so the clips of a step do not depend on how many processes share it."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        size = self.batch_size * self.world
        for b in range(self.start, self.n // size):
            first = b * size + self.rank * self.batch_size
            yield [(self.epoch, i) for i in order[first : first + self.batch_size]]


class EpochClips(Dataset):
    """``clips[(epoch, i)]`` is clip ``i`` of that epoch. The epoch travels with the index because
    persistent loader workers hold their own copy of the dataset: a ``set_epoch`` in the main
    process would never reach them."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return clip_count(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        return self.dataset[index]


def rng_states(device: torch.device) -> dict[str, Any]:
    """Python, numpy and torch RNG states, plus the CUDA state of ``device`` alone when it is a GPU:
    a resumption may see another number of GPUs (a smaller ``CUDA_VISIBLE_DEVICES``), so states of
    devices this process does not use are not kept. Numbers, tuples and tensors only (numpy's key
    as an int64 tensor), so the checkpoint loads with ``weights_only``."""
    kind, key, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    numpy_state = {
        "kind": kind,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }
    states: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def rng_of_rank(payload: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG states a process of rank ``rank`` resumes with: its own when the checkpoint has them
    (``rng_ranks``, one per process of a torchrun run), else rank 0's (``rng``)."""
    per_rank = payload.get("rng_ranks") or []
    return per_rank[rank] if rank < len(per_rank) else payload["rng"]


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_states`; a CUDA state is restored only onto a GPU in use. Older checkpoints
    hold numpy's state as numpy's own tuple, and every visible device's CUDA state as a list: the
    run used its current device, the first one."""
    random.setstate(states["python"])
    saved = states["numpy"]
    if isinstance(saved, dict):
        key = saved["key"].numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], key, saved["pos"], saved["has_gauss"], saved["gauss"]))
    else:
        np.random.set_state(saved)
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, (list, tuple)):
        if not cuda:
            return
        cuda = cuda[0]
    torch.cuda.set_rng_state(cuda, device)


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


def training_precision(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of training steps: bf16 on GPUs that compute it natively (compute
    capability >= 8.0: A100, H100, L4, RTX 30xx/40xx), fp16 with loss scaling on older ones (T4,
    V100, RTX 20xx, which only emulate bf16, slowly); None (fp32) on CPU or with ``amp`` off."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast_for(device: torch.device, amp: bool) -> tuple[Any, torch.dtype | None]:
    """The autocast context and dtype of training steps (see :func:`training_precision`)."""
    dtype = training_precision(device, amp)
    if dtype is None:
        return nullcontext(), None
    return torch.autocast("cuda", dtype=dtype), dtype


def configure_cuda(amp: bool) -> None:
    """cudnn.benchmark: every training batch has the same shape, so the per-shape algorithm search
    is paid once. TF32: torch lets cuDNN convolutions use it by default (Ampere and newer), which
    would make ``--no-amp``'s fp32 a 10-bit-mantissa fp32; off then, left to torch otherwise."""
    torch.backends.cudnn.benchmark = True
    if not amp:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


@contextmanager
def strict_fp32() -> Iterator[None]:
    """No TF32 inside: metrics are computed in true fp32, whatever training used."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def loader_for(
    dataset: Dataset, batch_size: int, workers: int, device: torch.device, batch_sampler: Sampler | None = None
) -> DataLoader:
    """Workers persist across epochs and validations (no re-spawn, no dataset re-pickling);
    the training clips still follow the epoch because the sampler's keys carry it."""
    kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, generator=torch.Generator().manual_seed(0), **kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


@torch.no_grad()
def evaluate(
    net: STLight,
    data: Dataset | DataLoader,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """OpenSTL metrics of ``net`` on every clip of ``data`` (a dataset, or a loader to reuse),
    and the first clip's ``(inputs, truth, prediction)`` for a picture.

    Always fp32 without TF32, whatever precision training uses: these numbers choose
    ``best.pt`` and go into ``metrics.jsonl`` and model cards."""
    was_training = net.training
    net.eval()
    acc = MetricAccumulator()
    first: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    loader = data if isinstance(data, DataLoader) else loader_for(data, batch_size, workers, device)
    for inputs, targets in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        inputs = inputs.to(device, non_blocking=True)
        with strict_fp32():
            pred = net(inputs)
        pred_np = pred.float().cpu().numpy()
        acc.update(pred_np, targets.numpy())
        if first is None:
            first = (inputs[0].float().cpu().numpy(), targets[0].numpy(), pred_np[0])
    net.train(was_training)
    assert first is not None, "empty dataset"
    acc.reduce(lambda sums: distributed.all_reduce_sum(sums, device))  # each process saw its share of the clips
    return acc.result(), first


def save_strip(path: Path, inputs: np.ndarray, truth: np.ndarray, pred: np.ndarray, scale: int = 1) -> Path:
    """A PNG with rows input, truth, prediction (frames left to right, 2-pixel gaps).

    Grey for 1 channel, RGB for 3; other channel counts show their first channel."""
    from PIL import Image

    def frame_image(frame: np.ndarray) -> np.ndarray:  # (C, H, W) -> (H, W, 3) uint8
        pixels = to_uint8(frame)
        return pixels.transpose(1, 2, 0) if frame.shape[0] == 3 else np.repeat(pixels[0][..., None], 3, axis=2)

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
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------
# set-up: threads, batches, model, optimiser, a resumed state
# ---------------------------------------------------------------------------------------


class OnDevice:
    """A loader's batches, copied to ``device`` (asynchronously from pinned memory on a GPU)."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets in self.loader:
            yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


@dataclass
class Parts:
    """What set-up hands the trainer, built once per invocation."""

    device: torch.device
    ranks: Ranks
    net: STLight  # what is saved and validated
    model: torch.nn.Module  # what trains: net, or net in DDP, compiled or not
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Any
    sampler: EpochBatches  # set_epoch() chooses the epoch (and its first batch) that ``batches`` yields
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) on the device
    val_loader: DataLoader
    steps_per_epoch: int
    step: int = 0
    best_mse: float = math.inf
    last_metrics: dict[str, Any] | None = None


def uses_channels_last(runtime: Runtime, device: torch.device) -> bool:
    """``Runtime.channels_last``, or by default on CUDA only (see docs/training.md, the GPU recipe)."""
    return runtime.channels_last if runtime.channels_last is not None else device.type == "cuda"


def training_batches(
    settings: RunSettings, train_set: Dataset, ranks: Ranks, device: torch.device, workers: int
) -> tuple[EpochBatches, Iterable[tuple[torch.Tensor, torch.Tensor]], int]:
    """The sampler of ``(epoch, index)`` keys, the batches made from them, and steps per epoch.
    Both data paths share the sampler, so batches, resumption and process slices work alike."""
    steps_per_epoch = clip_count(train_set) // settings.global_batch
    if steps_per_epoch != settings.steps_per_epoch:
        raise DataError(
            f"the training data now gives {steps_per_epoch} batches per epoch, the run was made with {settings.steps_per_epoch}; "
            "resume with the same data, or start a new run"
        )
    sampler = EpochBatches(clip_count(train_set), settings.batch_size, settings.seed, ranks.rank, ranks.world)
    if settings.clips_on_device:
        if not isinstance(train_set, MovingMNIST):
            raise SetupError("clips made on the device are Moving MNIST's (--dataset mmnist); use --no-clips-on-device")
        return sampler, DeviceBatches(TensorMovingMNIST.like(train_set, device), sampler), steps_per_epoch
    loader = loader_for(EpochClips(train_set), settings.batch_size, workers, device, batch_sampler=sampler)
    return sampler, OnDevice(loader, device), steps_per_epoch


def networks(
    settings: RunSettings, config: STLightConfig, runtime: Runtime, ranks: Ranks, device: torch.device
) -> tuple[STLight, torch.nn.Module]:
    """``(net, model)``: the seeded network, and what trains (net in channels_last, DDP, compiled,
    as the runtime asks). Layout and compilation change speed, not the weights' values."""
    seed_everything(settings.seed)
    net = STLight(config).to(device)
    if uses_channels_last(runtime, device):
        # NHWC: tensor-core convolutions without transposes (torch's stubs lack the keyword)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model: torch.nn.Module = net
    if ranks.distributed:
        distributed.sync_batchnorm(net, device)  # N processes × batch b normalise as one process × batch N·b
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if runtime.compile:
        model = cast(torch.nn.Module, torch.compile(model))
    return net, model


def set_up(
    settings: RunSettings,
    config: STLightConfig,
    spec: DataSpec,
    runtime: Runtime,
    resume: dict[str, Any] | None,
    datasets: tuple[Dataset, Dataset] | None,
    ranks: Ranks,
    device: torch.device,
) -> Parts:
    """Everything the loop needs; a ``resume`` payload restores weights, optimiser, step and RNGs."""
    if ranks.main:
        runtime.out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    torch.set_num_threads(runtime.threads or max(1, cores // ranks.local_world))  # the node's cores, shared
    workers = runtime.workers if runtime.workers is not None else (0 if device.type == "cpu" else min(8, cores))

    # data: each process takes its slice of every global batch, and every world-th validation clip
    train_set, val_set = datasets if datasets is not None else build_datasets(spec, config)
    sampler, batches, steps_per_epoch = training_batches(settings, train_set, ranks, device, workers)
    n_val = clip_count(val_set)
    if n_val < ranks.world:
        raise SetupError(f"{n_val} validation clips cannot be shared by {ranks.world} processes; use more")
    val_share = Subset(val_set, range(ranks.rank, n_val, ranks.world)) if ranks.distributed else val_set
    val_loader = loader_for(val_share, max(settings.batch_size, 32), workers, device)
    if device.type == "cuda":
        configure_cuda(runtime.amp)

    # model and optimiser
    net, model = networks(settings, config, runtime, ranks, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    autocast, amp_dtype = autocast_for(device, runtime.amp)
    parts = Parts(
        device=device,
        ranks=ranks,
        net=net,
        model=model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, settings),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        autocast=autocast,
        sampler=sampler,
        batches=batches,
        val_loader=val_loader,
        steps_per_epoch=steps_per_epoch,
    )
    if resume is not None:
        restore(parts, resume)
    return parts


def restore(parts: Parts, resume: dict[str, Any]) -> None:
    """Continue where ``resume`` (a checkpoint payload) left off."""
    parts.net.load_state_dict(resume["model"])
    parts.optimizer.load_state_dict(resume["optimizer"])
    parts.scheduler.load_state_dict(resume["scheduler"])
    if resume.get("scaler"):
        parts.scaler.load_state_dict(resume["scaler"])
    parts.step, parts.best_mse = resume["step"], resume.get("best_mse", math.inf)
    parts.last_metrics = resume.get("metrics")
    set_rng_states(rng_of_rank(resume, parts.ranks.rank), parts.device)


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
    MSE), ``metrics.jsonl`` and ``val_step*.png`` under ``runtime.out``. Under torchrun every
    process calls this; they train together (DDP) and rank 0 alone writes."""
    ranks = ranks_from_env()
    if ranks.world != settings.world_size:
        raise SetupError(
            f"the run has {settings.world_size} process(es) × batch {settings.batch_size}, this launch has {ranks.world}; "
            f"start {settings.world_size} (torchrun --nproc-per-node ... with {settings.world_size} in all)"
        )
    device = resolve_device(runtime.device, ranks)
    started = distributed.start(ranks, device)
    try:
        parts = set_up(settings, config, spec, runtime, resume, datasets, ranks, device)
        if resume is not None:
            Trainer.say(ranks, f"resumed {runtime.out / 'last.pt'} at step {parts.step}/{settings.total_steps}")
        summary = Trainer(settings, config, spec, runtime, parts).run()
    except BaseException:
        if started:
            dist.destroy_process_group()
        raise
    distributed.finish(started)
    return summary


class Trainer:
    """The loop over set-up's parts: optimiser steps, the loss read every ``LOSS_READ_EVERY``
    steps, validation (each epoch or ``val_every``), checkpoints, and the three ways to stop:
    the last step, ``stop_after`` steps, ``time_limit`` seconds (the last two resumable)."""

    def __init__(self, settings: RunSettings, config: STLightConfig, spec: DataSpec, runtime: Runtime, parts: Parts) -> None:
        self.settings, self.config, self.spec, self.runtime, self.p = settings, config, spec, runtime, parts
        self.losses = LossMeter(parts.device, parts.ranks)
        self.validated_at = -1
        self.out_of_time = False
        self.start_step = parts.step
        self.end_step = (
            settings.total_steps if runtime.stop_after is None else min(settings.total_steps, parts.step + runtime.stop_after)
        )
        self.clock = StepClock(parts.device, parts.step)

    @staticmethod
    def say(ranks: Ranks, message: str) -> None:
        if ranks.main:
            tqdm.write(message)

    def run(self) -> dict[str, Any]:
        p = self.p
        bar = tqdm(
            total=self.settings.total_steps,
            initial=p.step,
            desc="train",
            unit="step",
            disable=not (self.runtime.progress and p.ranks.main),
            mininterval=0.5 if sys.stderr.isatty() else 30,
            dynamic_ncols=True,
        )
        while p.step < self.end_step and not self.out_of_time:
            epoch, offset = divmod(p.step, p.steps_per_epoch)
            p.sampler.set_epoch(epoch, offset)
            self.epoch(bar)
            if p.step % p.steps_per_epoch == 0 and self.validated_at != p.step:  # an epoch ended
                with self.clock.paused():
                    if not self.runtime.val_every:
                        self.validate()
                    self.losses.read(p.step)  # a NaN stops the run before it reaches a checkpoint
                    self.save("last.pt")
        bar.close()
        self.losses.read(p.step)
        self.clock.finish(p.step)
        loop_seconds = self.clock.elapsed()  # training only: before the final validation
        if self.validated_at != p.step:
            self.validate()
        self.save("last.pt")
        return self.summary(loop_seconds)

    def epoch(self, bar: tqdm) -> None:
        """Steps through the sampler's epoch until it ends, the run's end step, or the time limit."""
        p = self.p
        for inputs, targets in p.batches:
            self.train_step(inputs, targets)
            bar.update(1)
            if p.step % LOSS_READ_EVERY == 0 or p.step >= self.end_step:
                self.losses.read(p.step)
                rate = (p.step - self.start_step) * self.settings.global_batch / self.clock.elapsed()
                lr = p.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{self.losses.ema:.5f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", refresh=False)
                self.out_of_time = self.time_is_up()
            if self.runtime.val_every and p.step % self.runtime.val_every == 0:
                with self.clock.paused():
                    self.validate()
                    self.save("last.pt")
            if p.step >= self.end_step or self.out_of_time:
                return

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        p = self.p
        with p.autocast:
            loss = F.mse_loss(p.model(inputs).float(), targets)
        p.optimizer.zero_grad(set_to_none=True)
        p.scaler.scale(loss).backward()
        p.scaler.step(p.optimizer)
        p.scaler.update()
        p.scheduler.step()
        p.step += 1
        self.losses.add(loss)
        self.clock.stepped(p.step)

    def time_is_up(self) -> bool:
        """Past ``time_limit``; under DDP rank 0's clock decides for all (one verdict, no deadlock)."""
        if self.runtime.time_limit is None:
            return False
        verdict = torch.tensor(float(self.clock.elapsed() >= self.runtime.time_limit), device=self.p.device)
        if self.p.ranks.distributed:
            dist.broadcast(verdict, src=0)
        if verdict.item():
            self.say(self.p.ranks, f"time limit of {self.runtime.time_limit:g} s reached at step {self.p.step}")
            return True
        return False

    def validate(self) -> None:
        p = self.p
        metrics, (inp, truth, pred) = evaluate(p.net, p.val_loader, p.device)  # reduced over processes
        p.last_metrics = {
            "step": p.step,
            "epoch": round(p.step / p.steps_per_epoch, 4),
            "lr": p.scheduler.get_last_lr()[0],
            "train_loss": self.losses.window_mean(p.step),
            **metrics,
        }
        self.validated_at = p.step
        out = self.runtime.out
        if p.ranks.main:
            with open(out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(p.last_metrics) + "\n")
            save_strip(out / f"val_step{p.step:07d}.png", inp, truth, pred, scale=2 if self.config.height <= 64 else 1)
        self.say(
            p.ranks,
            f"step {p.step}: val mse {metrics['mse']:.2f}  mae {metrics['mae']:.2f}  ssim {metrics['ssim']:.4f}  psnr "
            f"{metrics['psnr']:.2f}",
        )
        if metrics["mse"] < p.best_mse:
            p.best_mse = metrics["mse"]
            self.save("best.pt")

    def save(self, name: str) -> None:
        """Every process calls this (their RNG states are gathered); rank 0 writes."""
        p = self.p
        rng = rng_states(p.device)  # the data is a function of (seed, epoch, index): no loader state needed
        per_rank = distributed.gather(rng) if p.ranks.distributed else None
        if not p.ranks.main:
            return
        save_checkpoint(
            self.runtime.out / name,
            p.net,
            self.config,
            optimizer=p.optimizer.state_dict(),
            scheduler=p.scheduler.state_dict(),
            scaler=p.scaler.state_dict() if p.scaler.is_enabled() else None,
            step=p.step,
            epoch=p.step / p.steps_per_epoch,
            rng=rng,
            rng_ranks=per_rank,
            metrics=p.last_metrics,
            best_mse=p.best_mse,
            preset=self.settings.preset,
            dataset=self.settings.dataset,
            run=dataclasses.asdict(self.settings),
            data=dataclasses.asdict(self.spec),
        )

    def summary(self, loop_seconds: float) -> dict[str, Any]:
        p, elapsed = self.p, self.clock.elapsed()
        trained = (p.step - self.start_step) * self.settings.global_batch
        return {
            "step": p.step,
            "total_steps": self.settings.total_steps,
            "finished": p.step >= self.settings.total_steps,
            "stopped_by_time": self.out_of_time and p.step < self.settings.total_steps,
            "best_mse": p.best_mse,
            "metrics": p.last_metrics,
            "params": count_params(p.net),
            "seconds": elapsed,
            "samples_per_s": trained / elapsed if elapsed > 0 else None,
            "loop_seconds": loop_seconds,
            "warmup_seconds": self.clock.warmup_seconds,
            "steady_samples_per_s": self.clock.steady_rate(self.settings.global_batch),
            "out": str(self.runtime.out),
        }


class StepClock:
    """Wall time of the loop, and its steady rate: the steps after the first ``WARMUP_STEPS``
    (compilation, cuDNN's algorithm search), validation and checkpoints left out. The device is
    synchronised at the two ends of that window only."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device, self.first_step = device, step
        self.started = time.perf_counter()
        self.warm: tuple[int, float] | None = None  # (step, time) when the warm-up ended
        self.end: tuple[int, float] | None = None
        self.warmup_seconds: float | None = None
        self.paused_seconds = 0.0  # in validation and checkpoints since the warm-up ended

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stepped(self, step: int) -> None:
        if self.warm is None and step - self.first_step == WARMUP_STEPS:
            now = self._sync()
            self.warm, self.warmup_seconds = (step, now), now - self.started

    def finish(self, step: int) -> None:
        self.end = (step, self._sync())

    @contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.warm is not None:
                self.paused_seconds += time.perf_counter() - begin

    def steady_rate(self, global_batch: int) -> float | None:
        """Samples/s of the steady window; None when the run ended within its warm-up."""
        if self.warm is None or self.end is None or self.end[0] <= self.warm[0]:
            return None
        seconds = self.end[1] - self.warm[1] - self.paused_seconds
        return (self.end[0] - self.warm[0]) * global_batch / seconds if seconds > 0 else None


class LossMeter:
    """The training loss, summed on the device and read (a host sync) only when asked: every
    ``LOSS_READ_EVERY`` steps, before a validation and before a checkpoint."""

    def __init__(self, device: torch.device, ranks: Ranks) -> None:
        self.ranks = ranks
        self.pending = torch.zeros((), device=device)
        self.pending_steps = 0
        self.window_sum, self.window_steps = 0.0, 0  # read since the last validation
        self.ema: float | None = None  # for the progress bar

    def add(self, loss: torch.Tensor) -> None:
        self.pending.add_(loss.detach())  # queued on the device: no sync
        self.pending_steps += 1

    def read(self, step: int) -> None:
        """Fetch the pending sum; raise FloatingPointError on NaN or infinity."""
        if not self.pending_steps:
            return
        if self.ranks.distributed:  # the mean over processes: the loss of the global batch, and one verdict on NaN
            dist.all_reduce(self.pending)
            self.pending.div_(self.ranks.world)
        total = float(self.pending.item())
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} by step {step}; lower --lr")
        mean = total / self.pending_steps
        keep = 0.98**self.pending_steps  # the per-step EMA of the loss, applied to the window's mean
        self.ema = mean if self.ema is None else keep * self.ema + (1 - keep) * mean
        self.window_sum, self.window_steps = self.window_sum + total, self.window_steps + self.pending_steps
        self.pending.zero_()
        self.pending_steps = 0

    def window_mean(self, step: int) -> float | None:
        """The mean loss per step since the last call (``metrics.jsonl``'s train_loss)."""
        self.read(step)
        value = self.window_sum / self.window_steps if self.window_steps else None
        self.window_sum, self.window_steps = 0.0, 0
        return value


def load_resume(out: Path, *, trust: bool = False) -> dict[str, Any]:
    """The checkpoint ``out/last.pt`` with its run settings, for ``--resume`` (``trust``: unpickled fully)."""
    payload = read_checkpoint(out / "last.pt", trust=trust)
    if "run" not in payload or "optimizer" not in payload:
        raise ValueError(f"{out / 'last.pt'} is not a training checkpoint (no optimizer or run settings); it cannot be resumed")
    return payload
