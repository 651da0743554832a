"""One run in several processes: DistributedDataParallel under ``torchrun``.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] --no-python stlight train ...``
starts one process per GPU (or N on CPU) with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in the environment; ``stlight train`` reads them here. NCCL joins GPUs, gloo
joins CPU processes. Each process trains on its own slice of every global batch, BatchNorm
normalises over the global batch, and DDP averages the gradients, so N processes × batch b
follow one process × batch N·b up to float rounding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the run; one process alone is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics.jsonl, pictures, logs and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``; absent: alone."""

    def number(name: str, default: int) -> int:
        text = environ.get(name)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None

    world = number("WORLD_SIZE", 1)
    ranks = Ranks(number("RANK", 0), world, number("LOCAL_RANK", 0), number("LOCAL_WORLD_SIZE", world))
    if not (world >= 1 and 0 <= ranks.rank < world and 0 <= ranks.local_rank < ranks.local_world):
        raise ValueError(f"inconsistent launcher environment: {ranks}")
    return ranks


def start(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group (NCCL on CUDA, gloo on CPU); True when this call created it."""
    if not ranks.distributed or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world)
    return True


def finish(started: bool) -> None:
    if started and dist.is_initialized():
        dist.barrier()  # nobody leaves while rank 0 still writes the last checkpoint
        dist.destroy_process_group()


def all_reduce_sum(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Element-wise sum over all processes (float64); identity when alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(device)  # NCCL reduces GPU tensors only
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, by rank (all processes call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    objects: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


# ---------------------------------------------------------------------------------------
# BatchNorm over the global batch
# ---------------------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, with the backward every process needs: the gradient of a sum that all
    processes used is the sum of their gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def _all_reduce_sum(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    return _AllReduceSum.apply(tensor, group)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all processes, for gloo (torch's
    ``SyncBatchNorm`` runs on GPUs only). Mean and variance are all-reduced with a backward that
    all-reduces too, so the gradients also sum over processes, as one process holding the whole
    batch would compute them. Same parameters and buffers as ``BatchNorm2d``: checkpoints
    do not change."""

    group: Any = None  # the process group of the statistics; None: ordinary BatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.group is None:
            return super().forward(x)
        c = x.shape[1]
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() // c)])  # (C + 1,): sums and count
        totals = _all_reduce_sum(local, self.group)
        count = totals[c]
        mean = totals[:c] / count
        centered = x - mean.view(1, c, 1, 1)
        var = _all_reduce_sum(centered.square().sum(dim=(0, 2, 3)), self.group) / count  # biased, as BatchNorm normalises
        out = centered * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)  # unbiased, as BatchNorm
        return out


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: torch's SyncBatchNorm on GPUs, :class:`GlobalBatchNorm2d`
    (on a gloo group of its own, apart from DDP's gradient traffic) on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    group = dist.new_group(backend="gloo")
    for module in net.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d  # same parameters and buffers, new forward
            module.group = group
    return net
