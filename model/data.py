"""Datasets for training and evaluation, each yielding ``(inputs (T, C, H, W), targets (T', C, H, W))``
float32 in [0, 1].

- ``mmnist``: Moving MNIST generated on the fly from MNIST digits (OpenSTL's rules), with a
  fixed-seed validation set, or the standard ``mnist_test_seq.npy`` for testing.
- ``npz``: the user's own clips, ``(N, T+T', C, H, W)`` in a ``.npz`` (key ``clips``) or ``.npy``.
- ``taxibj``: OpenSTL's ``dataset.npz`` (``X_train, Y_train, X_test, Y_test`` in [-1, 1]).
- ``frames``: a folder of clip folders of image files, sorted by name (KTH-style).
- ``videos``: every video file under a folder, cut into windows of T+T' frames
  (:mod:`model.video_data`; split by file).

Bad data fails at load with a :class:`DataError` that says what was expected. Every clip is a pure
function of ``(seed, epoch, index)``, so runs are reproducible with any number of loader workers
and a resumed run sees the same clips as an uninterrupted one.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import urllib.request
import zipfile
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from model.config import DATASETS, STLightConfig
from service.core.frames import IMAGE_FORMATS, IMAGE_MODES, image_pixels, load_npy, load_npz_member, npz_member_names
from service.core.frames import IMAGE_SUFFIXES as STILL_IMAGE_SUFFIXES
from service.core.hashing import file_digest

IMAGE_SUFFIXES = (*STILL_IMAGE_SUFFIXES, ".gif")  # a training frame may be a still GIF

# The standard MNIST training images (LeCun, Cortes and Burges); checksums of the gzipped file.
MNIST_TRAIN_FILE = "train-images-idx3-ubyte.gz"
MNIST_TRAIN_MD5 = "f68b3c2dcbeaaa9fbdd348bbdeb94873"
MNIST_TRAIN_SHA256 = "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/" + MNIST_TRAIN_FILE,
    "https://storage.googleapis.com/cvdf-datasets/mnist/" + MNIST_TRAIN_FILE,
)
MMNIST_TEST_FILE = "mnist_test_seq.npy"
# .npz arrays larger than this are memory-mapped (a compressed one from a temporary file), not held in RAM
MEMMAP_BYTES = 256 * 2**20
TAXIBJ_ARRAYS = ("X_train", "Y_train", "X_test", "Y_test")  # OpenSTL's dataset.npz
VAL_SEED = 20_240_000  # the Moving MNIST validation clips: the same every run, on every machine
TEST_SEED = 20_240_001  # test clips made from held-out digits (--held-out-digits): likewise fixed


class DataError(ValueError):
    """Data that cannot be used as given; the message says what was expected."""


# ---------------------------------------------------------------------------------------
# MNIST digits (idx format) and their download
# ---------------------------------------------------------------------------------------


def read_idx_images(path: str | Path) -> np.ndarray:
    """Images of an idx3 file (gzipped or not) as ``(N, rows, cols)`` uint8."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read MNIST images from {path}: {exc}") from None
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise DataError(f"{path} is not an idx3 image file (expected magic number 2051 at the start)")
    n, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * rows * cols:
        raise DataError(
            f"{path} is truncated: header says {n} images of {rows}x{cols} ({16 + n * rows * cols} bytes), file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)  # (N, 28, 28)


def find_mnist_images(data_dir: str | Path) -> Path | None:
    """``train-images-idx3-ubyte(.gz)`` in ``data_dir``, else any ``*-images-idx3-ubyte(.gz)``."""
    data_dir = Path(data_dir)
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"):
        if (data_dir / name).is_file():
            return data_dir / name
    found = sorted(p for p in data_dir.glob("*-images*idx3-ubyte*") if p.is_file() and not p.name.endswith(".tmp"))
    return found[0] if found else None


def download_mnist(
    data_dir: str | Path,
    urls: Sequence[str] = MNIST_MIRRORS,
    md5: str = MNIST_TRAIN_MD5,
    sha256: str = MNIST_TRAIN_SHA256,
    timeout: float = 30.0,
) -> Path:
    """Fetch the standard MNIST training images into ``data_dir`` and verify both checksums.

    Tries each URL in turn; bytes whose checksums differ are discarded. Raises
    :class:`DataError` saying which file to put where when no URL gives the right bytes.
    """
    data_dir = Path(data_dir)
    target = data_dir / MNIST_TRAIN_FILE
    problems = []
    for url in urls:
        tmp_path = data_dir / (MNIST_TRAIN_FILE + ".tmp")
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            # the MNIST mirrors, or URLs the user gave (theirs to choose); the checksums judge what comes
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp_path, "wb") as tmp:  # noqa: S310
                shutil.copyfileobj(response, tmp)
        except (OSError, ValueError) as exc:
            problems.append(f"{url}: {exc}")
            tmp_path.unlink(missing_ok=True)
            continue
        got_md5, got_sha = file_digest(tmp_path, "md5"), file_digest(tmp_path, "sha256")
        if got_md5 != md5 or got_sha != sha256:
            tmp_path.unlink()
            problems.append(f"{url}: checksum mismatch (md5 {got_md5}, expected {md5})")
            continue
        tmp_path.replace(target)
        return target
    raise DataError(
        f"no MNIST images in {data_dir} and the download failed ({'; '.join(problems) or 'no URL'}). "
        f"Put the standard MNIST training images {MNIST_TRAIN_FILE} (md5 {md5}) - or any *-images-idx3-ubyte(.gz) "
        f"file - into {data_dir}"
    )


def load_mnist_digits(data_dir: str | Path, download: bool = True, urls: Sequence[str] = MNIST_MIRRORS) -> np.ndarray:
    """MNIST digits from ``data_dir`` as ``(N, 28, 28)`` uint8, downloading them if absent."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is a file; expected a folder holding {MNIST_TRAIN_FILE}")
    path = find_mnist_images(data_dir) if data_dir.is_dir() else None
    if path is None:
        if not download:
            raise DataError(f"no *-images-idx3-ubyte(.gz) file in {data_dir}; put {MNIST_TRAIN_FILE} there")
        path = download_mnist(data_dir, urls)
    digits = read_idx_images(path)
    if len(digits) == 0:
        raise DataError(f"{path} holds no images")
    return digits


# ---------------------------------------------------------------------------------------
# Moving MNIST (OpenSTL's generator)
# ---------------------------------------------------------------------------------------


def random_trajectory(rng: np.random.Generator, frames: int, canvas: int, step: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """OpenSTL's trajectory: start uniform in [0, 1)², uniform direction, ``step`` per frame,
    reflect at 0 and 1; returns top-left pixel rows and columns, ``int(canvas · pos)``."""
    y, x = rng.random(), rng.random()
    theta = rng.random() * 2 * np.pi
    v_y, v_x = np.sin(theta), np.cos(theta)
    ys, xs = np.zeros(frames), np.zeros(frames)
    for i in range(frames):
        y += v_y * step
        x += v_x * step
        if x <= 0:
            x, v_x = 0.0, -v_x
        if x >= 1.0:
            x, v_x = 1.0, -v_x
        if y <= 0:
            y, v_y = 0.0, -v_y
        if y >= 1.0:
            y, v_y = 1.0, -v_y
        ys[i], xs[i] = y, x
    return (canvas * ys).astype(np.int64), (canvas * xs).astype(np.int64)


def moving_mnist_clip(
    rng: np.random.Generator, digits: np.ndarray, frames: int, size: int = 64, num_digits: int = 2
) -> np.ndarray:
    """One clip ``(frames, size, size)`` uint8: ``num_digits`` bouncing digits combined by max."""
    digit_size = digits.shape[-1]
    canvas = size - digit_size
    clip = np.zeros((frames, size, size), dtype=np.uint8)
    for _ in range(num_digits):
        rows, cols = random_trajectory(rng, frames, canvas)
        digit = digits[rng.integers(0, len(digits))]
        for t in range(frames):
            window = clip[t, rows[t] : rows[t] + digit_size, cols[t] : cols[t] + digit_size]
            np.maximum(window, digit, out=window)
    return clip


class MovingMNIST(Dataset):
    """``length`` clips made on the fly; clip ``i`` is a pure function of ``(seed, epoch, i)``.

    Training sets call :meth:`set_epoch` so every epoch sees new clips; a validation set keeps
    a fixed seed and epoch, so it is the same clips every run.
    """

    def __init__(
        self,
        digits: np.ndarray,
        length: int,
        in_frames: int = 10,
        out_frames: int = 10,
        size: int = 64,
        seed: int = 0,
        num_digits: int = 2,
    ) -> None:
        if digits.ndim != 3 or digits.shape[1] != digits.shape[2]:
            raise DataError(f"MNIST digits must be (N, S, S) square images, got shape {digits.shape}")
        if size < digits.shape[-1]:
            raise DataError(
                f"Moving MNIST frames of {size}x{size} cannot hold {digits.shape[-1]}x{digits.shape[-1]} digits; use "
                f"--height/--width >= {digits.shape[-1]}"
            )
        self.digits = digits
        self.length, self.in_frames, self.out_frames = length, in_frames, out_frames
        self.size, self.seed, self.num_digits = size, seed, num_digits
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip = moving_mnist_clip(rng, self.digits, self.in_frames + self.out_frames, self.size, self.num_digits)
        frames = torch.from_numpy(clip).unsqueeze(1).float().div_(255.0)  # (T+T', 1, H, W)
        return frames[: self.in_frames], frames[self.in_frames :]


# ---------------------------------------------------------------------------------------
# clips held in an array: npz / npy, TaxiBJ, mnist_test_seq.npy
# ---------------------------------------------------------------------------------------


class ClipArray(Dataset):
    """Clips from an array ``(N, T+T', C, H, W)``: uint8 is scaled by 1/255, floats are used as is.

    A memory-mapped ``.npy`` is held by its path: pickling (how loader workers receive the
    dataset where they start by spawn: macOS, Windows, Python 3.14) carries the path, and each
    process maps the file itself on first use instead of receiving a copy of the whole array."""

    def __init__(self, clips: np.ndarray, in_frames: int, out_frames: int, indices: np.ndarray | None = None) -> None:
        self._clips: np.ndarray | None = clips
        self.path = clips.filename if isinstance(clips, np.memmap) and clips.filename else None
        self.in_frames, self.out_frames = in_frames, out_frames
        self.indices = np.arange(len(clips)) if indices is None else np.asarray(indices)
        self.scale = 1 / 255.0 if clips.dtype == np.uint8 else 1.0

    @property
    def clips(self) -> np.ndarray:
        if self._clips is None:
            assert self.path is not None
            self._clips = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._clips

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_clips"] = None  # reopened lazily where it lands
        return state

    def set_epoch(self, epoch: int) -> None:  # same clips every epoch
        pass

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = np.asarray(self.clips[self.indices[index]], dtype=np.float32) * np.float32(self.scale)  # (T+T', C, H, W)
        frames = torch.from_numpy(clip)
        return frames[: self.in_frames], frames[self.in_frames : self.in_frames + self.out_frames]


def check_clips(clips: np.ndarray, config: STLightConfig, source: str) -> None:
    """Raise a :class:`DataError` unless ``clips`` is ``(N, >= T+T', C, H, W)`` with finite values in range."""
    t_need = config.in_frames + config.out_frames
    want = f"(N, {t_need}, {config.channels}, {config.height}, {config.width})"
    if clips.ndim != 5:
        raise DataError(
            f"{source}: expected clips shaped (N, T+T', C, H, W) = {want}, got rank {clips.ndim} shape {tuple(clips.shape)}"
        )
    n, t, c, h, w = clips.shape
    if n == 0:
        raise DataError(f"{source}: holds no clips; expected {want}")
    if t < t_need:
        raise DataError(
            f"{source}: clips have {t} frames, the model needs in_frames + out_frames = {config.in_frames} + "
            f"{config.out_frames} = {t_need}"
        )
    if (c, h, w) != (config.channels, config.height, config.width):
        raise DataError(
            f"{source}: frames are C×H×W = {c}×{h}×{w}, the model config expects "
            f"{config.channels}×{config.height}×{config.width}; "
            f"pass --channels {c} --height {h} --width {w} (or resize the data)"
        )
    if clips.dtype == np.uint8:
        return
    if not np.issubdtype(clips.dtype, np.floating):
        raise DataError(f"{source}: dtype {clips.dtype} is not supported; expected uint8 (0-255) or float (0-1)")
    sample = np.asarray(clips[: min(n, 2048)])
    if not np.isfinite(sample).all():
        raise DataError(f"{source}: contains NaN or infinite values")
    lo, hi = float(sample.min()), float(sample.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(f"{source}: float values span [{lo:.3g}, {hi:.3g}]; expected [0, 1] (or uint8 0-255)")


def load_clip_file(path: str | Path) -> np.ndarray:
    """The clip array of a ``.npy`` (memory-mapped), or of a ``.npz`` (key ``clips``, or its only
    array); the last two files read are cached, so inferring a shape and loading cost one read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data-path {path} does not exist; expected a .npz (key 'clips') or .npy of shape (N, T+T', C, H, W)")
    return _load_clip_file(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _load_clip_file(name: str, mtime_ns: int) -> np.ndarray:
    path = Path(name)
    if not path.is_file():
        raise DataError(f"--data-path {path} does not exist; expected a .npz (key 'clips') or .npy of shape (N, T+T', C, H, W)")
    try:
        if path.suffix == ".npy":
            return load_npy(path)
        # checked from its zip and .npy headers before any data is inflated; large ones mapped
        keys = npz_member_names(path)
        if "clips" not in keys and len(keys) != 1:
            raise DataError(f"{path}: expected an array named 'clips', found {', '.join(keys) or 'none'}")
        clips = load_npz_member(path, "clips" if "clips" in keys else keys[0], mmap_above=MEMMAP_BYTES)
        clips.setflags(write=False)  # shared through the cache
        return clips
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npz/.npy file ({type(exc).__name__}: {exc})") from None


def load_mmnist_test_seq(path: str | Path, config: STLightConfig) -> ClipArray:
    """The standard ``mnist_test_seq.npy`` (20, N, 64, 64) uint8 as clips ``(N, 20, 1, 64, 64)``."""
    try:
        seq = load_npy(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npy file ({type(exc).__name__}: {exc})") from None
    if seq.ndim != 4:
        raise DataError(f"{path}: expected mnist_test_seq.npy shaped (frames, N, 64, 64), got {tuple(seq.shape)}")
    clips = np.ascontiguousarray(np.asarray(seq).transpose(1, 0, 2, 3))[:, :, None]  # (N, 20, 1, 64, 64)
    check_clips(clips, config, str(path))
    return ClipArray(clips, config.in_frames, config.out_frames)


def infer_dataset(data_path: str | Path) -> str:
    """The dataset kind of a ``--data-path`` file, for a command given no ``--dataset``:
    ``mnist_test_seq.npy`` is Moving MNIST's test set, a ``.npz`` holding ``X_train, Y_train,
    X_test, Y_test`` is TaxiBJ, any other ``.npz`` or ``.npy`` is the user's clips (``npz``)."""
    path = Path(data_path)
    suffix = path.suffix.lower()
    if path.name == MMNIST_TEST_FILE:
        return "mmnist"
    if suffix == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = set(archive.files)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"--data-path {path} is not a readable .npz archive: {exc}") from None
        return "taxibj" if set(TAXIBJ_ARRAYS) <= names else "npz"
    if suffix in (".npz", ".npy"):
        return "npz"  # a missing file: the npz loader says so
    raise DataError(
        f"cannot tell the dataset of --data-path {path} from its name (expected a .npz or .npy of clips); "
        "add --dataset (npz, taxibj or mmnist; a folder of frames or videos is --dataset frames/videos --data-dir DIR)"
    )


def load_taxibj(path: str | Path, config: STLightConfig) -> tuple[ClipArray, ClipArray]:
    """OpenSTL's TaxiBJ ``dataset.npz``: ``X_*`` inputs and ``Y_*`` targets in [-1, 1] -> [0, 1]."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.npz"
    if not path.is_file():
        raise DataError(
            f"TaxiBJ file {path} does not exist; expected OpenSTL's dataset.npz with X_train, Y_train, X_test, Y_test"
        )
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in TAXIBJ_ARRAYS if k not in archive]
        if missing:
            raise DataError(f"{path}: missing {', '.join(missing)}; expected X_train, Y_train, X_test, Y_test")
        splits = []
        for part in ("train", "test"):
            x, y = (load_npz_member(path, f"{a}_{part}", mmap_above=MEMMAP_BYTES) for a in "XY")
            if x.ndim != 5 or y.ndim != 5 or len(x) != len(y):
                raise DataError(f"{path}: X_{part} {x.shape} and Y_{part} {y.shape} must both be (N, T, C, H, W) with the same N")
            clips = (np.concatenate([x, y], axis=1).astype(np.float32) + 1) / 2  # (N, T+T', C, H, W), [-1, 1] -> [0, 1]
            if x.shape[1] != config.in_frames or y.shape[1] != config.out_frames:
                raise DataError(
                    f"{path}: {x.shape[1]} -> {y.shape[1]} frames, the model config is {config.in_frames} -> "
                    f"{config.out_frames}; use --preset taxibj-s"
                )
            check_clips(np.clip(clips, 0, 1) if np.isfinite(clips).all() else clips, config, f"{path} ({part})")
            splits.append(ClipArray(np.clip(clips, 0, 1), config.in_frames, config.out_frames))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------
# frames: a folder of clip folders of images
# ---------------------------------------------------------------------------------------


class FrameFolders(Dataset):
    """Clips from ``root/<clip>/<frame image>`` (frames sorted by name); the first T+T' frames are used."""

    def __init__(self, clip_dirs: Sequence[Path], config: STLightConfig) -> None:
        self.config = config
        mode = IMAGE_MODES.get(config.channels)
        if mode is None:
            raise DataError(f"image folders give 1 (grey) or 3 (RGB) channels; the model config has channels={config.channels}")
        self.mode = mode
        self.clips = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for d in clip_dirs]
        self._check()

    def _check(self) -> None:
        from PIL import Image

        need = self.config.in_frames + self.config.out_frames
        size = (self.config.width, self.config.height)
        for frames in self.clips:
            if len(frames) < need:
                where = frames[0].parent if frames else "a clip folder"
                raise DataError(f"{where}: has {len(frames)} image files, the model needs in_frames + out_frames = {need}")
            for frame in frames[:need]:
                try:
                    with Image.open(frame, formats=IMAGE_FORMATS) as image:
                        got = image.size
                except Exception as exc:
                    raise DataError(f"{frame} is not a readable image ({exc})") from None
                if got != size:
                    raise DataError(
                        f"{frame} is {got[0]}x{got[1]} (W×H); the model config expects {size[0]}x{size[1]}; pass --width "
                        f"{got[0]} --height {got[1]} or resize"
                    )

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        cfg = self.config
        arrays = []
        for path in self.clips[index][: cfg.in_frames + cfg.out_frames]:
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                arrays.append(image_pixels(image, self.mode))  # decoded as the service decodes frames
        clip = np.stack(arrays).reshape(len(arrays), cfg.height, cfg.width, cfg.channels)  # (T+T', H, W, C)
        tensor = torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()  # (T+T', C, H, W) float32 in [0, 1]
        return tensor[: cfg.in_frames], tensor[cfg.in_frames :]


def frame_clip_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder of clip folders holding image files")
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not dirs:
        raise DataError(f"{root} has no clip folders; expected {root}/<clip>/<frame>.png ...")
    return dirs


# ---------------------------------------------------------------------------------------
# one entry point for the CLI
# ---------------------------------------------------------------------------------------


@dataclass
class DataSpec:
    """Where the data is and how to split it; the same for ``train`` and ``eval``."""

    name: str
    data_dir: str | None = None
    data_path: str | None = None
    val_path: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    clips_per_epoch: int = 10_000  # OpenSTL's Moving MNIST epoch
    val_clips: int = 1000
    stride: int | None = None  # videos: frames between window starts (None: T+T', no overlap)
    resize: str = "none"  # videos: none, fit or crop (service.video.RESIZE_MODES)
    held_out_digits: int = 0  # mmnist: the file's last N digits make only test clips, never training or validation


def split_digits(digits: np.ndarray, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(training digits, held-out digits)``: the last ``held_out`` of the file are held out."""
    if not 0 <= held_out < len(digits):
        raise DataError(
            f"--held-out-digits {held_out}: the MNIST file has {len(digits)} digits; hold out between 0 and {len(digits) - 1}"
        )
    return digits[: len(digits) - held_out], digits[len(digits) - held_out :]


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise DataError(f"{n} clips are too few to split off a validation set; give --val-path or more clips")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _mmnist_checks(config: STLightConfig) -> None:
    if config.channels != 1 or config.height != config.width:
        raise DataError(
            "Moving MNIST is grey and square: the config needs channels=1 and height == width, got "
            f"{config.channels}×{config.height}×{config.width}"
        )


def data_shape(spec: DataSpec) -> dict[str, int] | None:
    """``{"frames", "channels", "height", "width"}`` of the user's data (npz: the array; frames:
    the first clip folder and its first image), so the CLI can fit the model config to it."""
    if spec.name == "npz" and spec.data_path:
        clips = load_clip_file(spec.data_path)
        if clips.ndim != 5:
            return None  # check_clips explains
        _, t, c, h, w = clips.shape
        return {"frames": t, "channels": c, "height": h, "width": w}
    root = spec.data_dir or spec.data_path
    if spec.name == "videos" and root:
        from model.video_data import probe_shape

        return probe_shape(root, _resize(spec))
    if spec.name == "frames" and root:
        from PIL import Image

        first = frame_clip_dirs(root)[0]
        images = sorted(p for p in first.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{first} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        try:
            with Image.open(images[0], formats=IMAGE_FORMATS) as image:
                w, h = image.size
                c = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3  # grey modes, else RGB
        except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise DataError(f"{images[0]} is not a readable image ({exc}); expected {', '.join(IMAGE_FORMATS)}") from None
        return {"frames": len(images), "channels": c, "height": h, "width": w}
    return None


def _resize(spec: DataSpec) -> Any:
    from service.core.video import RESIZE_MODES

    if spec.resize not in RESIZE_MODES:
        raise DataError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {spec.resize!r}")
    return spec.resize


def _videos(spec: DataSpec, config: STLightConfig, files: Sequence[Path]) -> Dataset:
    from model.video_data import VideoWindows

    return VideoWindows(files, config, stride=spec.stride, resize=_resize(spec))


def build_datasets(spec: DataSpec, config: STLightConfig) -> tuple[Dataset, Dataset]:
    """``(train, validation)`` datasets for ``spec`` checked against ``config``."""
    name = spec.name
    if name == "mmnist":
        _mmnist_checks(config)
        digits, _ = split_digits(load_mnist_digits(spec.data_dir or "data/mnist"), spec.held_out_digits)
        train = MovingMNIST(digits, spec.clips_per_epoch, config.in_frames, config.out_frames, config.height, seed=spec.seed)
        val = MovingMNIST(digits, spec.val_clips, config.in_frames, config.out_frames, config.height, seed=VAL_SEED)
        return train, val
    if name == "npz":
        if not spec.data_path:
            raise DataError("--dataset npz needs --data-path FILE (.npz with 'clips' or .npy, shaped (N, T+T', C, H, W))")
        clips = load_clip_file(spec.data_path)
        check_clips(clips, config, spec.data_path)
        if spec.val_path:
            val_clips = load_clip_file(spec.val_path)
            check_clips(val_clips, config, spec.val_path)
            return ClipArray(clips, config.in_frames, config.out_frames), ClipArray(
                val_clips, config.in_frames, config.out_frames
            )
        train_idx, val_idx = _split(len(clips), spec.val_fraction, spec.seed)
        return ClipArray(clips, config.in_frames, config.out_frames, train_idx), ClipArray(
            clips, config.in_frames, config.out_frames, val_idx
        )
    if name == "taxibj":
        return load_taxibj(spec.data_path or spec.data_dir or "dataset.npz", config)
    if name == "frames":
        root = spec.data_dir or spec.data_path
        if not root:
            raise DataError("--dataset frames needs --data-dir ROOT holding one folder of image files per clip")
        dirs = frame_clip_dirs(root)
        if spec.val_path:
            return FrameFolders(dirs, config), FrameFolders(frame_clip_dirs(spec.val_path), config)
        train_idx, val_idx = _split(len(dirs), spec.val_fraction, spec.seed)
        return FrameFolders([dirs[i] for i in train_idx], config), FrameFolders([dirs[i] for i in val_idx], config)
    if name == "videos":
        from model.video_data import split_files, video_files

        root = spec.data_dir or spec.data_path
        if not root:
            raise DataError("--dataset videos needs --data-dir DIR holding video files (.mp4, .webm, .avi, .mkv, .gif, ...)")
        files = video_files(root)
        if spec.val_path:
            return _videos(spec, config, files), _videos(spec, config, video_files(spec.val_path))
        train_files, val_files = split_files(files, spec.val_fraction, spec.seed)  # whole files: no shared frames
        return _videos(spec, config, train_files), _videos(spec, config, val_files)
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def build_test_dataset(spec: DataSpec, config: STLightConfig) -> Dataset:
    """The test split: every clip of an npz/npy file; for Moving MNIST ``mnist_test_seq.npy`` (given,
    or in the data folder), else fixed-seed clips made from the held-out digits when the run held
    some out (``TEST_SEED``), else the validation clips; TaxiBJ's ``X_test/Y_test``; every clip
    folder of ``frames``."""
    name = spec.name
    if name == "mmnist":
        _mmnist_checks(config)
        for candidate in (spec.data_path, spec.data_dir and Path(spec.data_dir) / MMNIST_TEST_FILE):
            if candidate and Path(candidate).is_file() and Path(candidate).suffix == ".npy":
                return load_mmnist_test_seq(candidate, config)
        digits = load_mnist_digits(spec.data_dir or "data/mnist")
        if spec.held_out_digits:
            _, unseen = split_digits(digits, spec.held_out_digits)
            return MovingMNIST(unseen, spec.val_clips, config.in_frames, config.out_frames, config.height, seed=TEST_SEED)
        return MovingMNIST(digits, spec.val_clips, config.in_frames, config.out_frames, config.height, seed=VAL_SEED)
    if name == "npz":
        if not spec.data_path:
            raise DataError("--dataset npz needs --data-path FILE (.npz with 'clips' or .npy, shaped (N, T+T', C, H, W))")
        clips = load_clip_file(spec.data_path)
        check_clips(clips, config, spec.data_path)
        return ClipArray(clips, config.in_frames, config.out_frames)
    if name == "taxibj":
        return load_taxibj(spec.data_path or spec.data_dir or "dataset.npz", config)[1]
    if name == "frames":
        root = spec.data_dir or spec.data_path
        if not root:
            raise DataError("--dataset frames needs --data-dir ROOT holding one folder of image files per clip")
        return FrameFolders(frame_clip_dirs(root), config)
    if name == "videos":
        from model.video_data import video_files

        root = spec.data_dir or spec.data_path
        if not root:
            raise DataError("--dataset videos needs --data-dir DIR holding video files (.mp4, .webm, .avi, .mkv, .gif, ...)")
        return _videos(spec, config, video_files(root))
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def clip_count(dataset: Dataset) -> int:
    """Clips in a dataset. Every dataset here has ``__len__``; torch's ``Dataset`` type does not declare it."""
    return len(cast(Sized, dataset))
