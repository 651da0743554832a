"""Reading inputs: one reader per input kind (:data:`READERS`), each turning a path into the
raw, shape-checked :class:`InputClips` of that input. Values (dtype, range) are checked a batch at a
time by :func:`split_checked`, so a ``.npy`` larger than RAM is never loaded whole.

A reader raises :class:`~service.core.errors.InputError` with a message that says what was expected and what came;
the run records it against that input and goes on with the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from service.batch.inputs import FRAME_SUFFIXES, Kind, frame_files
from service.codecs import arrays, media
from service.core import video
from service.core.card import ClipSpec
from service.core.errors import InputError
from service.core.frames import IMAGE_MODES, image_error, load_npy, load_npz_member, npz_member_names, shape_text
from service.core.limits import DEFAULT_DECODE_LIMITS, DecodeLimits

# arrays larger than this are memory-mapped rather than read into RAM
MEMMAP_BYTES = 256 * 2**20
UNUSABLE = "unusable-input"  # the kind of every reader's InputError (the message says the rest)


class _GifFrameCount(InputError):
    """A GIF with other than the frames needed: read again as a video (the last ones, or windows)."""


@dataclass
class InputClips:
    """An input's clips, still raw (memory-mapped for .npy): (N, T, C, H, W) any dtype.
    ``batched``: the input had an N axis (its output keeps one); ``fps``: a video's frame rate."""

    raw: np.ndarray
    batched: bool
    fps: float | None = None


@dataclass(frozen=True)
class VideoReading:
    """How video files become clips: one clip per file (its last frames) by default; with
    ``windows``, every window of T (T + T' with targets) frames, ``stride`` apart (default: the
    window length, so windows do not overlap)."""

    windows: bool = False
    stride: int | None = None
    resize: video.Resize = "none"
    limits: DecodeLimits = DEFAULT_DECODE_LIMITS


def frames_expected(spec: ClipSpec, has_targets: bool) -> int:
    return spec.in_frames + spec.out_frames if has_targets else spec.in_frames


def _frame_count_error(got: int, spec: ClipSpec, has_targets: bool) -> str:
    need = frames_expected(spec, has_targets)
    if has_targets:
        what = f"--has-targets needs T + T' = {spec.in_frames} + {spec.out_frames} = {need} frames (inputs, then the true future)"
    else:
        what = f"the model takes T = {spec.in_frames} input frames"
        if got == spec.in_frames + spec.out_frames:
            what += f" ({got} = T + T': pass --has-targets to score the last {spec.out_frames} against the prediction)"
    return f"{got} frames; {what}"


# ---------------------------------------------------------------------------------------
# arrays: .npy and .npz hold one clip (T, C, H, W) or many (N, T, C, H, W)
# ---------------------------------------------------------------------------------------


def read_npy(path: Path) -> np.ndarray:
    """The array (memory-mapped when large); the header is checked against the file size first."""
    try:
        return load_npy(path, mmap_above=MEMMAP_BYTES)
    except ValueError as exc:
        raise InputError(UNUSABLE, str(exc)) from None


def _read_npz(path: Path) -> np.ndarray:
    """Its array 'clips' (or its only array), checked from the zip and .npy headers before any
    data is inflated; large ones memory-mapped (see service.core.frames.load_npz_member)."""
    try:
        names = npz_member_names(path)
        if "clips" in names or len(names) == 1:
            return load_npz_member(path, "clips" if "clips" in names else names[0], mmap_above=MEMMAP_BYTES)
    except ValueError as exc:  # the headers' checks, in words
        raise InputError(UNUSABLE, f"not a usable .npz file: {exc}") from None
    except Exception as exc:
        raise InputError(UNUSABLE, f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    raise InputError(UNUSABLE, f"expected an array named 'clips' (or a single array), found {', '.join(names) or 'none'}")


def _array_clips(array: np.ndarray, spec: ClipSpec, has_targets: bool) -> InputClips:
    """Shape-check an array holding one clip or many."""
    need = frames_expected(spec, has_targets)
    want = f"(T, C, H, W) = {shape_text((need, *spec.input_shape[1:]))} or (N, T, C, H, W)"
    if array.ndim not in (4, 5):
        raise InputError(UNUSABLE, f"expected one clip {want}, got an array of shape {shape_text(array.shape)}")
    clips = array if array.ndim == 5 else array[None]  # (N, T, C, H, W)
    if len(clips) == 0:
        raise InputError(UNUSABLE, f"holds no clips (shape {shape_text(array.shape)})")
    if clips.shape[1] != need:
        raise InputError(
            UNUSABLE, f"shape {shape_text(array.shape)}: clips have {_frame_count_error(clips.shape[1], spec, has_targets)}"
        )
    if clips.shape[2:] != spec.input_shape[1:]:
        c, h, w = spec.input_shape[1:]
        raise InputError(
            UNUSABLE,
            f"shape {shape_text(array.shape)}: expected frames of C x H x W = {c} x {h} x {w}, "
            f"got {' x '.join(map(str, clips.shape[2:]))}",
        )
    return InputClips(clips, batched=array.ndim == 5)


def read_npy_input(path: Path, spec: ClipSpec, has_targets: bool) -> InputClips:
    return _array_clips(read_npy(path), spec, has_targets)


def read_npz_input(path: Path, spec: ClipSpec, has_targets: bool) -> InputClips:
    return _array_clips(_read_npz(path), spec, has_targets)


# ---------------------------------------------------------------------------------------
# one clip each: a folder of frame images, an animated GIF
# ---------------------------------------------------------------------------------------


def read_frames(folder: Path, spec: ClipSpec, has_targets: bool) -> InputClips:
    """One clip from the folder's images in name order (decoded by service.codecs.media, as the
    service decodes uploaded frames)."""
    files = frame_files(folder)
    need = frames_expected(spec, has_targets)
    if len(files) != need:
        raise InputError(
            UNUSABLE, f"holds {_frame_count_error(len(files), spec, has_targets)} (frame images: {'/'.join(FRAME_SUFFIXES)})"
        )
    images = [(p.name, p.read_bytes()) for p in files]
    clip = media.decode_images(images, ClipSpec(need, spec.out_frames, spec.channels, spec.height, spec.width)).frames[0]
    return InputClips(clip[None], batched=False)


def read_gif(path: Path, spec: ClipSpec, has_targets: bool) -> InputClips:
    """One clip (uint8) from an animated GIF. Encoders (Pillow among them) merge identical
    consecutive frames into one shown longer; such a frame is repeated by its duration."""
    mode = IMAGE_MODES.get(spec.channels)
    if mode is None:
        raise InputError(UNUSABLE, f"a GIF gives 1 (grey) or 3 (RGB) channels; this model takes {spec.channels}: use .npy")
    need = frames_expected(spec, has_targets)
    try:
        with Image.open(path, formats=("GIF",)) as image:
            if image.format != "GIF":
                raise InputError(UNUSABLE, f"is not a GIF (Pillow reads it as {image.format})")
            if image.size != (spec.width, spec.height):
                raise InputError(
                    UNUSABLE, f"frames are {image.size[0]}x{image.size[1]} (W x H); the model expects {spec.width}x{spec.height}"
                )
            frames: list[np.ndarray] = []
            durations: list[int] = []
            for frame in ImageSequence.Iterator(image):
                if len(frames) > 4 * need:
                    break  # far too many already; the count check below says so
                frames.append(np.asarray(frame.convert(mode), dtype=np.uint8))
                durations.append(int(frame.info.get("duration", 0) or 0))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        with open(path, "rb") as file:
            head = file.read(12)
        raise InputError(UNUSABLE, f"not a readable GIF ({image_error(exc, head)})") from None
    if len(frames) != need and min(durations) > 0:
        repeats = [max(1, round(d / min(durations))) for d in durations]
        if sum(repeats) == need:
            frames = [f for f, r in zip(frames, repeats, strict=True) for _ in range(r)]
    if len(frames) != need:
        raise _GifFrameCount(UNUSABLE, f"has {_frame_count_error(len(frames), spec, has_targets)}")
    clip = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    clip = clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)  # (T, C, H, W)
    return InputClips(clip[None], batched=False)


# ---------------------------------------------------------------------------------------
# video files (MP4, WebM, AVI, MKV, MOV): decoded by service.core.video, as the service decodes them
# ---------------------------------------------------------------------------------------


def read_video_file(path: Path, spec: ClipSpec, has_targets: bool, reading: VideoReading | None = None) -> InputClips:
    """The last T (T + T' with targets) frames as one clip, or every window of them."""
    reading = reading or VideoReading()
    need = frames_expected(spec, has_targets)
    decoded = video.read_video(
        path,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        resize=reading.resize,
        count=None if reading.windows else need,
        limits=reading.limits,
    )
    if not reading.windows:
        return InputClips(decoded.frames[None], batched=False, fps=decoded.fps)
    if len(decoded.frames) < need:
        raise InputError(UNUSABLE, f"has {_frame_count_error(len(decoded.frames), spec, has_targets)}")
    # windows as a view of the decoded frames, not copies: (N, need, C, H, W)
    windows = np.moveaxis(np.lib.stride_tricks.sliding_window_view(decoded.frames, need, axis=0), -1, 1)
    return InputClips(windows[:: reading.stride or need], batched=True, fps=decoded.fps)


Reader = Callable[[Path, ClipSpec, bool], InputClips]
# one reader per input kind (service/predict/inputs.py says which paths are which kind)
READERS: dict[Kind, Reader] = {
    "npy": read_npy_input,
    "npz": read_npz_input,
    "frames": read_frames,
    "gif": read_gif,
    "video": read_video_file,
}


def read_source(path: Path, kind: Kind, spec: ClipSpec, has_targets: bool, reading: VideoReading | None = None) -> InputClips:
    """Read and shape-check one input with its kind's reader (video files as ``reading`` says).

    A GIF of exactly the frames needed is read by Pillow (frames merged by their encoder are
    repeated by duration); any other GIF, or one to be windowed or resized, is read as a video."""
    if kind == "gif":
        if reading is not None and (reading.windows or reading.resize != "none"):
            return read_video_file(path, spec, has_targets, reading)
        try:
            return read_gif(path, spec, has_targets)
        except _GifFrameCount:
            return read_video_file(path, spec, has_targets, reading)
    if kind == "video" and reading is not None:
        return read_video_file(path, spec, has_targets, reading)
    return READERS[kind](path, spec, has_targets)


def split_checked(raw: np.ndarray, spec: ClipSpec, has_targets: bool, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw (n, T[+T'], C, H, W) -> float32 inputs in [0, 1] and targets (or None); dtype and
    value problems raise :class:`InputError` (via service.codecs.arrays' checks)."""
    raw = np.asarray(raw)
    inputs = arrays.check_array(raw[:, : spec.in_frames], spec, label).frames
    targets = None
    if has_targets:
        target_spec = ClipSpec(spec.out_frames, spec.out_frames, spec.channels, spec.height, spec.width)
        targets = arrays.check_array(raw[:, spec.in_frames :], target_spec, label + " (targets)").frames
    return inputs, targets
