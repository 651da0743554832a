"""Moving MNIST made on the training device: a whole batch of clips from a few tensor operations,
so a GPU never waits for CPU data-loader workers.

The rules are OpenSTL's (as :func:`model.data.moving_mnist_clip`): start uniform in [0, 1)², a
uniform direction, step 0.1 per frame, reflect at 0 and 1, top-left pixel ``int(36 · pos)``,
digits combined by per-pixel max, values / 255. Only the random numbers differ: each clip's draws
come from a counter-based hash of ``(seed, epoch, index, draw)`` in exact integer arithmetic, so a
clip is a pure function of those four numbers, whatever batch it is made in, on any device. (The
trajectory uses float64 ``sin``/``cos``, whose last bit may differ between CPU and CUDA libraries;
a pixel would move only for a position within ~1e-14 of a pixel boundary.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.data import DataError, MovingMNIST

MASK32 = 0xFFFFFFFF
STEP = 0.1  # OpenSTL's distance per frame in unit coordinates
DRAWS_PER_DIGIT = 4  # start row, start column, direction, which digit


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x · constant mod 2³²`` for ``0 <= x < 2³²`` in int64 without overflow: the constant is
    split in 16-bit halves, so no product exceeds 2⁴⁸ (torch has no unsigned 32-bit multiply)."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' ``lowbias32`` integer hash on int64 tensors holding values in [0, 2³²)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def fold32(value: int) -> int:
    """Any Python int (a negative or large seed) as a 32-bit key."""
    value &= (1 << 64) - 1
    return (value ^ (value >> 32)) & MASK32


def clip_draws(seed: int, epoch: int, indices: torch.Tensor, count: int) -> torch.Tensor:
    """``(len(indices), count)`` uniform numbers in [0, 1) (float64, 32 random bits each): draw
    ``j`` of clip ``indices[i]`` of ``epoch`` under ``seed``, the same on every device."""
    key = hash32(torch.full_like(indices, fold32(seed)) ^ fold32(epoch))
    key = hash32(key ^ (indices & MASK32))  # (N,)
    slots = torch.arange(count, device=indices.device, dtype=torch.int64)
    bits = hash32(key[:, None] ^ _mul32(slots + 1, 0x9E3779B9)[None, :])  # (N, count)
    return bits.double() / 2.0**32


@dataclass(frozen=True)
class Placements:
    """Where each digit of each clip is: ``rows``/``cols`` ``(N, K, T)`` top-left pixels, ``digit``
    ``(N, K)`` indices into the digit set."""

    rows: torch.Tensor
    cols: torch.Tensor
    digit: torch.Tensor


def bounce(start: torch.Tensor, velocity: torch.Tensor, frames: int) -> torch.Tensor:
    """Positions ``(..., frames)`` in [0, 1] after each step, reflecting at 0 and 1 exactly as
    :func:`model.data.random_trajectory` does (clamped to the wall, velocity reversed)."""
    position, velocity = start.clone(), velocity.clone()
    out = []
    for _ in range(frames):
        position = position + velocity * STEP
        low, high = position <= 0, position >= 1.0
        position = torch.where(low, torch.zeros_like(position), position)
        velocity = torch.where(low, -velocity, velocity)
        position = torch.where(high, torch.ones_like(position), position)
        velocity = torch.where(high, -velocity, velocity)
        out.append(position)
    return torch.stack(out, dim=-1)


class TensorMovingMNIST:
    """Batches of Moving MNIST clips made on ``device`` from MNIST digits held there as uint8.

    ``clips(epoch, indices)`` returns ``(inputs (N, T, 1, S, S), targets (N, T', 1, S, S))``
    float32 in [0, 1] on the device; clip ``i`` of an epoch depends only on ``(seed, epoch, i)``."""

    def __init__(
        self,
        digits: np.ndarray,
        device: torch.device,
        in_frames: int = 10,
        out_frames: int = 10,
        size: int = 64,
        seed: int = 0,
        num_digits: int = 2,
    ) -> None:
        if digits.ndim != 3 or digits.shape[1] != digits.shape[2] or len(digits) == 0:
            raise DataError(f"MNIST digits must be (N, S, S) square images, got shape {digits.shape}")
        if size < digits.shape[-1]:
            raise DataError(f"Moving MNIST frames of {size}x{size} cannot hold {digits.shape[-1]}x{digits.shape[-1]} digits")
        self.digits = torch.tensor(digits, dtype=torch.uint8, device=device)  # (D, s, s)
        self.device, self.seed, self.num_digits = device, seed, num_digits
        self.in_frames, self.out_frames, self.size = in_frames, out_frames, size

    @classmethod
    def like(cls, dataset: MovingMNIST, device: torch.device) -> TensorMovingMNIST:
        """The same digits, shapes and seed as a (CPU) training dataset, made on ``device``."""
        return cls(dataset.digits, device, dataset.in_frames, dataset.out_frames, dataset.size, dataset.seed, dataset.num_digits)

    @property
    def frames(self) -> int:
        return self.in_frames + self.out_frames

    def placements(self, epoch: int, indices: torch.Tensor) -> Placements:
        """The trajectories and digit choices of clips ``indices`` of ``epoch``."""
        indices = indices.to(self.device, torch.int64)
        k = self.num_digits
        draws = clip_draws(self.seed, epoch, indices, k * DRAWS_PER_DIGIT).view(-1, k, DRAWS_PER_DIGIT)
        theta = draws[..., 2] * (2 * np.pi)
        rows = bounce(draws[..., 0], torch.sin(theta), self.frames)  # (N, K, T) in [0, 1]
        cols = bounce(draws[..., 1], torch.cos(theta), self.frames)
        canvas = self.size - self.digits.shape[-1]
        digit = ((draws[..., 3] * 2.0**32).to(torch.int64) * len(self.digits)) >> 32  # (N, K), exact multiply-shift
        return Placements((canvas * rows).to(torch.int64), (canvas * cols).to(torch.int64), digit)

    def render(self, where: Placements) -> torch.Tensor:
        """Clips ``(N, T, S, S)`` uint8: each digit at its place in every frame, max-combined.

        A frame holding a digit at ``(r, c)`` is the ``S × S`` window at ``(m - r, m - c)`` of the
        digit padded by ``m = S - s`` on every side; those windows are a strided view of the padded
        digit, so every frame is one gather (no scatter, no per-frame loop)."""
        n, k, _ = where.rows.shape  # (N, K, T)
        margin = self.size - self.digits.shape[-1]
        padded = F.pad(self.digits[where.digit], (margin, margin, margin, margin))  # (N, K, s + 2m, s + 2m)
        st = padded.stride()
        windows = padded.as_strided(
            (n, k, margin + 1, margin + 1, self.size, self.size), (st[0], st[1], st[2], st[3], st[2], st[3])
        )  # (N, K, window row, window col, S, S)
        clip_index = torch.arange(n, device=self.device)[:, None, None]
        digit_index = torch.arange(k, device=self.device)[None, :, None]
        layers = windows[clip_index, digit_index, margin - where.rows, margin - where.cols]  # (N, K, T, S, S)
        return layers.amax(dim=1)

    def clips(self, epoch: int, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.render(self.placements(epoch, indices)).unsqueeze(2).float().div_(255.0)  # (N, T+T', 1, S, S)
        return frames[:, : self.in_frames], frames[:, self.in_frames :]


class DeviceBatches:
    """The training batches of a run whose clips are made on the device: the same ``(epoch, index)``
    keys as the loader path (:class:`model.train.EpochBatches` orders them), made into tensors here."""

    def __init__(self, maker: TensorMovingMNIST, sampler: Iterable[list[tuple[int, int]]]) -> None:
        self.maker, self.sampler = maker, sampler

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for keys in self.sampler:
            epoch = keys[0][0]
            indices = torch.tensor([index for _, index in keys], dtype=torch.int64)
            yield self.maker.clips(epoch, indices)
