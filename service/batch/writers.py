"""Writing outputs: the ``.npy`` of predictions (last, through a hidden ``.partial`` file and a
rename, so its presence means the input is complete), PNG frames and GIFs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.batch import readers
from service.batch.inputs import Source
from service.codecs import media
from service.core import video
from service.core.frames import to_image, to_uint8


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def atomic_write(path: Path, data: bytes) -> None:
    partial = partial_path(path)
    partial.write_bytes(data)
    os.replace(partial, path)


def new_output(source: Source, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 array that collects ``source``'s predictions: in memory, or memory-mapped
    onto its ``.partial`` file when larger than ``readers.MEMMAP_BYTES`` (an input larger than RAM works)."""
    source.npy.parent.mkdir(parents=True, exist_ok=True)
    if np.prod(shape) * 4 > readers.MEMMAP_BYTES:  # looked up here so one setting governs reading and writing
        return np.lib.format.open_memmap(partial_path(source.npy), mode="w+", dtype=np.float32, shape=shape)
    return np.empty(shape, np.float32)


def commit_output(source: Source, result: np.ndarray) -> None:
    """Save ``result`` (unless it is already the memory-mapped ``.partial``) and rename it into place."""
    partial = partial_path(source.npy)
    if not isinstance(result, np.memmap):
        with open(partial, "wb") as f:
            np.save(f, result, allow_pickle=False)
    # a memory map needs no flush (msync) first: the rename sees the page cache
    os.replace(partial, source.npy)


def discard_output(source: Source) -> None:
    partial_path(source.npy).unlink(missing_ok=True)


def write_images(
    source: Source,
    batched: bool,
    first: int,
    inputs: np.ndarray,
    prediction: np.ndarray,
    png: bool,
    gif: bool,
    mp4: bool = False,
    fps: float | None = None,
) -> None:
    """PNG frames, GIFs and/or MP4 videos (input then prediction, at ``fps`` or 10 fps) of clips
    ``first ...`` of ``source`` (inputs (n, T, ...), prediction (n, T', ...))."""
    for offset, (clip_in, clip_out) in enumerate(zip(inputs, prediction, strict=True)):
        folder = source.base / f"clip_{first + offset:03d}" if batched else source.base
        if png:
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(to_uint8(clip_out)):
                to_image(frame).save(folder / f"frame_{t:03d}.png")
        if gif:
            target = folder.with_name(folder.name + ".gif") if batched else source.gif
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, media.encode_gif(clip_in, clip_out, batched=False))
        if mp4:
            target = folder.with_name(folder.name + ".mp4") if batched else source.mp4
            target.parent.mkdir(parents=True, exist_ok=True)
            shown = to_uint8(np.concatenate([clip_in, clip_out]))  # (T + T', C, H, W)
            atomic_write(target, video.encode_video(shown, fps or video.DEFAULT_FPS, "mp4"))
