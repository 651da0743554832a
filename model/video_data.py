"""``--dataset videos``: every video file under a folder, cut into windows of T+T' frames.

Frames are decoded by :mod:`service.core.video` (the same decoding as ``stlight serve`` and
``stlight predict``, so a model trains on what it will be served) once, when the dataset is
built, and held as uint8: an epoch indexes into memory instead of decoding every file again.
Files are split into training and validation as whole files, never window by window, so no
validation window shares frames with a training one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.config import STLightConfig
from service.core import video
from service.core.errors import InputError
from service.core.limits import DecodeLimits

# no per-file frame limit here (the service's bounds a request; training data is the user's own)
UNLIMITED_FRAMES = 2**62
# the user's own files, read once: as long as they are, but each frame no larger than a server takes
TRAINING_LIMITS = DecodeLimits(max_frames=UNLIMITED_FRAMES, max_decoded_pixels=UNLIMITED_FRAMES, timeout_s=None)


def video_files(root: str | Path) -> list[Path]:
    """Video files under ``root`` (walked; hidden entries skipped), sorted by path."""
    from model.data import DataError

    root = Path(root)
    if root.is_file() and root.suffix.lower() in video.SUFFIXES:
        return [root]
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder of video files ({', '.join(video.SUFFIXES)})")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in video.SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"{root} holds no video files ({', '.join(video.SUFFIXES)}), looked for in every sub-folder")
    return files


class VideoWindows(Dataset):
    """Windows of T+T' frames, ``stride`` apart (default T+T': no overlap), from each file.

    Files with fewer than T+T' frames give no window; they are listed in ``skipped`` (the CLI
    says so) and are an error only when no file is long enough."""

    def __init__(
        self,
        files: Sequence[Path],
        config: STLightConfig,
        *,
        stride: int | None = None,
        resize: video.Resize = "none",
        progress: bool | None = None,
    ) -> None:
        from tqdm import tqdm

        from model.data import DataError

        self.in_frames, self.out_frames = config.in_frames, config.out_frames
        need = config.in_frames + config.out_frames
        if stride is not None and stride < 1:
            raise DataError(f"--stride must be at least 1, got {stride}")
        self.stride = stride or need
        self.files = list(files)
        self.videos: list[np.ndarray] = []  # uint8 (N, C, H, W) per usable file
        self.skipped: list[tuple[Path, int]] = []  # files too short, with their frame counts
        windows: list[tuple[int, int]] = []  # (video, first frame)
        for path in tqdm(self.files, desc="decode videos", unit="file", disable=True if progress is False else None):
            try:
                decoded = video.read_video(
                    path,
                    channels=config.channels,
                    height=config.height,
                    width=config.width,
                    resize=resize,
                    limits=TRAINING_LIMITS,
                )
            except InputError as exc:
                raise DataError(f"{path}: {exc.detail}") from None
            frames = decoded.frames
            if len(frames) < need:
                self.skipped.append((path, len(frames)))
                continue
            windows += [(len(self.videos), start) for start in range(0, len(frames) - need + 1, self.stride)]
            self.videos.append(frames)
        if not windows:
            raise DataError(
                f"none of the {len(self.files)} video file(s) has in_frames + out_frames = {need} frames "
                f"(longest: {max((n for _, n in self.skipped), default=0)})"
            )
        self.windows = np.asarray(windows, dtype=np.int64)  # (windows, 2)

    def set_epoch(self, epoch: int) -> None:  # the same windows every epoch
        pass

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        which, start = self.windows[index]
        clip = self.videos[which][start : start + self.in_frames + self.out_frames]  # (T+T', C, H, W) uint8
        frames = torch.from_numpy(clip.astype(np.float32) / np.float32(255))
        return frames[: self.in_frames], frames[self.in_frames :]


def split_files(files: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """(training files, validation files): a seeded choice of whole files."""
    from model.data import _split

    train_idx, val_idx = _split(len(files), fraction, seed)
    return [files[i] for i in train_idx], [files[i] for i in val_idx]


def probe_shape(root: str | Path, resize: video.Resize) -> dict[str, int]:
    """The first file's size and frame count, so the CLI can fit the config to the data (the
    size only with ``resize`` none: else the config's wins). Not its channels: most videos are
    stored in a colour format whatever they show, so the config says grey or colour (grey: 1
    channel, colour converted to grey)."""
    from model.data import DataError

    first = video_files(root)[0]
    try:
        found = video.probe(first)
    except InputError as exc:
        raise DataError(f"{first}: {exc.detail}") from None
    shape = {"frames": found.frames or UNLIMITED_FRAMES}
    if resize == "none":
        shape |= {"height": found.height, "width": found.width}
    return shape
