"""Batch prediction over files: find inputs, check them, predict in batches, write outputs.

Inputs (:func:`discover`): ``.npy`` holding one clip (T, C, H, W) or many (N, T, C, H, W);
``.npz`` with an array ``clips`` (or a single array); a folder of frame images (one clip, frames
sorted by name); animated ``.gif`` files; folders holding any of these, walked.

Outputs, for an input ``<stem>``: ``<stem>.npy`` float32 predictions with the input's leading
shape, written last and atomically (so its presence means the input is done); with ``png``,
``<stem>/frame_000.png`` ... (``<stem>/clip_000/frame_000.png`` for many clips); with ``gif``,
``<stem>.gif`` input-then-prediction (``<stem>/clip_000.gif`` for many clips).

Clips of several inputs share batches; a predictor is anything with ``spec`` and
``predict((n, T, C, H, W) float32) -> (n, T', C, H, W)`` (:class:`service.client.Client` or
:class:`~service.client.LocalClient`). Bad inputs are recorded with the reason; the rest go on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from service import codecs
from service.client import ServiceUnreachable
from service.engine import ClipSpec
from service.problems import Problem

ARRAY_SUFFIXES = (".npy", ".npz")
GIF_SUFFIX = ".gif"
# still images that make a frames folder (a .gif is always a clip of its own)
MEMMAP_BYTES = 256 * 2**20  # outputs larger than this are written through a memory map, not held in RAM
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

Kind = Literal["npy", "npz", "frames", "gif"]


class Predictor(Protocol):
    spec: ClipSpec

    def predict(self, frames: np.ndarray) -> np.ndarray: ...


class InputError(ValueError):
    """An input that cannot be used; the message says what was expected and what came."""


# ---------------------------------------------------------------------------------------
# metrics (OpenSTL's, as model/metrics.py; numpy only: the service has no torch or skimage)
# ---------------------------------------------------------------------------------------


@dataclass
class MetricSums:
    """Running sums over predicted frames; MSE/MAE are per-frame sums over C·H·W (before
    clipping) averaged over clips and frames, PSNR per frame on predictions clipped to [0, 1]."""

    frames: int = 0
    squared: float = 0.0
    absolute: float = 0.0
    psnr: float = 0.0

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        """``pred`` and ``true``: (N, T', C, H, W) in [0, 1]."""
        if pred.shape != true.shape or pred.ndim != 5:
            raise ValueError(f"pred and true must both be (N, T', C, H, W); got {pred.shape} and {true.shape}")
        diff = pred.astype(np.float64) - true
        self.squared += float(np.sum(diff**2))
        self.absolute += float(np.sum(np.abs(diff)))
        err = np.mean((np.clip(pred.astype(np.float64), 0, 1) - true) ** 2, axis=(2, 3, 4))  # (N, T')
        with np.errstate(divide="ignore"):
            self.psnr += float(np.sum(20 * np.log10(1 / np.sqrt(err))))  # inf for an exact frame, as OpenSTL
        self.frames += err.size

    def result(self) -> dict[str, float]:
        if not self.frames:
            raise ValueError("no frames were scored")
        return {"mse": self.squared / self.frames, "mae": self.absolute / self.frames, "psnr": self.psnr / self.frames}


# ---------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One input and where its outputs go: ``base`` + ``.npy`` / ``.gif`` / ``/``."""

    path: Path
    kind: Kind
    base: Path

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def npy(self) -> Path:
        return self.base.with_name(self.base.name + ".npy")

    @property
    def gif(self) -> Path:
        return self.base.with_name(self.base.name + ".gif")


def _kind(path: Path) -> Kind | None:
    suffix = path.suffix.lower()
    return {".npy": "npy", ".npz": "npz", GIF_SUFFIX: "gif"}.get(suffix)  # type: ignore[return-value]


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in FRAME_SUFFIXES and p.is_file() and not p.name.startswith(".") for p in folder.iterdir())


def _walk(root: Path, out_dir: Path) -> Iterator[tuple[Path, Kind]]:
    """Inputs under ``root`` in name order; hidden entries and the output folder are left out."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != out_dir)
        if any(Path(f).suffix.lower() in FRAME_SUFFIXES and not f.startswith(".") for f in files):
            yield here, "frames"
        for name in sorted(files):
            kind = _kind(Path(name))
            if kind and not name.startswith("."):
                yield here / name, kind


def discover(inputs: Sequence[str | Path], out_dir: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand the command line's inputs into sources; returns ``(sources, failures)``.

    A file given directly writes to ``out_dir/<stem>``; inputs found inside a given folder keep
    their sub-folder below ``out_dir``. Two inputs that would write the same output fail (the
    first one found wins)."""
    out_resolved = out_dir.resolve()
    sources: list[Source] = []
    failures: list[tuple[str, str]] = []
    taken: dict[Path, str] = {}

    def add(path: Path, kind: Kind, base: Path) -> None:
        if base in taken:
            failures.append(
                (str(path), f"would write {base}.npy, which {taken[base]} also writes; rename one of them or run them separately")
            )
            return
        taken[base] = str(path)
        sources.append(Source(path, kind, base))

    for given in map(Path, inputs):
        if not given.exists():
            failures.append((str(given), "does not exist"))
        elif given.is_file():
            kind = _kind(given)
            if kind is None:
                failures.append(
                    (
                        str(given),
                        f"not a supported input: expected .npy, .npz, .gif, or a folder (of frame images {'/'.join(FRAME_SUFFIXES)}, or of inputs)",
                    )
                )
            else:
                add(given, kind, out_dir / given.stem)
        else:
            found = list(_walk(given, out_resolved))
            if not found:
                failures.append(
                    (str(given), f"folder holds no inputs (.npy, .npz, .gif, or frame images {'/'.join(FRAME_SUFFIXES)})")
                )
            for path, kind in found:
                if path == given:  # the folder itself is a clip of frames
                    add(path, kind, out_dir / (given.resolve().name or "frames"))
                else:
                    relative = path.relative_to(given)
                    add(path, kind, out_dir / relative.parent / (relative.name if kind == "frames" else relative.stem))
    return sources, failures


def finished(source: Source, png: bool, gif: bool) -> bool:
    """Whether every output asked for exists (the .npy is written last, so it marks completion)."""
    if not source.npy.is_file():
        return False
    if png and not (source.base.is_dir() and any(source.base.rglob("frame_*.png"))):
        return False
    return not gif or source.gif.is_file() or (source.base.is_dir() and any(source.base.glob("clip_*.gif")))


# ---------------------------------------------------------------------------------------
# reading inputs
# ---------------------------------------------------------------------------------------


@dataclass
class Clips:
    """An input's clips, still raw (memory-mapped for .npy): (N, T, C, H, W) any dtype.
    ``batched``: the input had an N axis (its output keeps one)."""

    raw: np.ndarray
    batched: bool


def _frames_expected(spec: ClipSpec, has_targets: bool) -> int:
    return spec.in_frames + spec.out_frames if has_targets else spec.in_frames


def _frame_count_error(got: int, spec: ClipSpec, has_targets: bool) -> InputError:
    need = _frames_expected(spec, has_targets)
    if has_targets:
        what = f"--has-targets needs T + T' = {spec.in_frames} + {spec.out_frames} = {need} frames (inputs, then the true future)"
    else:
        what = f"the model takes T = {spec.in_frames} input frames"
        if got == spec.in_frames + spec.out_frames:
            what += f" ({got} = T + T': pass --has-targets to score the last {spec.out_frames} against the prediction)"
    return InputError(f"{got} frames; {what}")


def _read_npy(path: Path) -> np.ndarray:
    """The array (memory-mapped when large); the header is checked against the file size first."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version} is not supported")
            shape, _, dtype = read_header(f)
        except Exception as exc:
            raise InputError(f"not a readable .npy file ({type(exc).__name__}: {exc}); write it with numpy.save") from None
        offset = f.tell()
        if dtype.hasobject:
            raise InputError(
                "is an .npy of Python objects (it would need unpickling, which is refused); save uint8 or float arrays"
            )
        promised, present = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, os.fstat(f.fileno()).st_size - offset
        if present < promised:
            raise InputError(
                f"is truncated: its header says {codecs.shape_text(shape)} {dtype} = {promised:,} bytes of data, the file holds {present:,}"
            )
        if promised <= MEMMAP_BYTES:  # small: read now, from the open file
            f.seek(0)
            return np.load(f, allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "clips" in keys:
                return archive["clips"]
            if len(keys) == 1:
                return archive[keys[0]]
    except Exception as exc:
        raise InputError(f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    raise InputError(f"expected an array named 'clips' (or a single array), found {', '.join(keys) or 'none'}")


def _read_frames(folder: Path, spec: ClipSpec, has_targets: bool) -> np.ndarray:
    """(T, C, H, W) float32 from the folder's images in name order (decoded by service.codecs)."""
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    need = _frames_expected(spec, has_targets)
    if len(files) != need:
        raise InputError(f"holds {_frame_count_error(len(files), spec, has_targets)} (frame images: {'/'.join(FRAME_SUFFIXES)})")
    images = [(p.name, p.read_bytes()) for p in files]
    try:
        return codecs.decode_images(images, ClipSpec(need, spec.out_frames, spec.channels, spec.height, spec.width)).frames[0]
    except Problem as exc:
        raise InputError(exc.detail) from None


def _read_gif(path: Path, spec: ClipSpec, has_targets: bool) -> np.ndarray:
    """(T, C, H, W) uint8 of an animated GIF. Encoders (Pillow among them) merge identical
    consecutive frames into one shown longer; such a frame is repeated by its duration."""
    mode = {1: "L", 3: "RGB"}.get(spec.channels)
    if mode is None:
        raise InputError(f"a GIF gives 1 (grey) or 3 (RGB) channels; this model takes {spec.channels}: use .npy")
    need = _frames_expected(spec, has_targets)
    try:
        with Image.open(path) as image:
            if image.format != "GIF":
                raise InputError(f"is not a GIF (Pillow reads it as {image.format})")
            if image.size != (spec.width, spec.height):
                raise InputError(
                    f"frames are {image.size[0]}x{image.size[1]} (W x H); the model expects {spec.width}x{spec.height}"
                )
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                if len(frames) > 4 * need:
                    break  # far too many already; the count check below says so
                frames.append(np.asarray(frame.convert(mode), dtype=np.uint8))
                durations.append(int(frame.info.get("duration", 0) or 0))
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InputError(f"not a readable GIF ({type(exc).__name__}: {exc})") from None
    if len(frames) != need and min(durations) > 0:
        repeats = [max(1, round(d / min(durations))) for d in durations]
        if sum(repeats) == need:
            frames = [f for f, r in zip(frames, repeats) for _ in range(r)]
    if len(frames) != need:
        raise InputError(f"has {_frame_count_error(len(frames), spec, has_targets)}")
    clip = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    return clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)  # (T, C, H, W)


def read_source(source: Source, spec: ClipSpec, has_targets: bool) -> Clips:
    """Read and shape-check one input (values are checked per batch, in :func:`split_checked`)."""
    if source.kind == "frames":
        return Clips(_read_frames(source.path, spec, has_targets)[None], batched=False)
    if source.kind == "gif":
        return Clips(_read_gif(source.path, spec, has_targets)[None], batched=False)
    array = _read_npy(source.path) if source.kind == "npy" else _read_npz(source.path)
    need = _frames_expected(spec, has_targets)
    want = f"(T, C, H, W) = {codecs.shape_text((need, *spec.input_shape[1:]))} or (N, T, C, H, W)"
    if array.ndim not in (4, 5):
        raise InputError(f"expected one clip {want}, got an array of shape {codecs.shape_text(array.shape)}")
    clips = array if array.ndim == 5 else array[None]  # (N, T, C, H, W)
    if len(clips) == 0:
        raise InputError(f"holds no clips (shape {codecs.shape_text(array.shape)})")
    if clips.shape[1] != need:
        raise InputError(
            f"shape {codecs.shape_text(array.shape)}: clips have {_frame_count_error(clips.shape[1], spec, has_targets)}"
        )
    if clips.shape[2:] != spec.input_shape[1:]:
        c, h, w = spec.input_shape[1:]
        raise InputError(
            f"shape {codecs.shape_text(array.shape)}: expected frames of C x H x W = {c} x {h} x {w}, got {' x '.join(map(str, clips.shape[2:]))}"
        )
    return Clips(clips, batched=array.ndim == 5)


def split_checked(raw: np.ndarray, spec: ClipSpec, has_targets: bool, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw (n, T[+T'], C, H, W) -> float32 inputs in [0, 1] and targets (or None); dtype and
    value problems raise :class:`InputError` (via service.codecs' checks)."""
    raw = np.asarray(raw)
    try:
        inputs = codecs.check_array(raw[:, : spec.in_frames], spec, label).frames
        targets = None
        if has_targets:
            target_spec = ClipSpec(spec.out_frames, spec.out_frames, spec.channels, spec.height, spec.width)
            targets = codecs.check_array(raw[:, spec.in_frames :], target_spec, label + " (targets)").frames
    except Problem as exc:
        raise InputError(exc.detail) from None
    return inputs, targets


# ---------------------------------------------------------------------------------------
# writing outputs
# ---------------------------------------------------------------------------------------


def _image(frame: np.ndarray) -> Image.Image:
    """(C, H, W) uint8, C in {1, 3} -> PIL image."""
    return Image.fromarray(frame[0]) if frame.shape[0] == 1 else Image.fromarray(frame.transpose(1, 2, 0), "RGB")


def write_images(
    source: Source, batched: bool, first: int, inputs: np.ndarray, prediction: np.ndarray, png: bool, gif: bool
) -> None:
    """PNG frames and/or GIFs of clips ``first ...`` of ``source`` (inputs (n, T, ...), prediction (n, T', ...))."""
    for offset, (clip_in, clip_out) in enumerate(zip(inputs, prediction)):
        folder = source.base / f"clip_{first + offset:03d}" if batched else source.base
        if png:
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(codecs.to_uint8(clip_out)):
                _image(frame).save(folder / f"frame_{t:03d}.png")
        if gif:
            target = folder.with_name(folder.name + ".gif") if batched else source.gif
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, codecs.encode_gif(clip_in, clip_out, batched=False))


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------


@dataclass
class Job:
    """One input in flight: its raw clips, the output being filled, clips still to come."""

    source: Source
    clips: Clips
    output: np.ndarray  # (N, T', C, H, W) float32 view of ``result``
    result: np.ndarray  # the input's leading shape; in memory, or memory-mapped onto ``partial`` when large
    partial: Path
    remaining: int
    error: str = ""


@dataclass
class Segment:
    job: Job
    start: int
    inputs: np.ndarray  # (n, T, C, H, W) float32
    targets: np.ndarray | None


@dataclass
class Summary:
    inputs: int = 0
    done: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    scored_clips: int = 0
    stopped: str = ""  # why the run stopped early (the service became unreachable), else ""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"{self.clips} clip(s) from {self.done} input(s) in {self.seconds:.2f} s ({self.clips_per_s:.1f} clips/s); "
            f"{self.skipped} skipped (outputs exist; --overwrite redoes them); {len(self.failures)} failed"
        ]
        if self.metrics is not None:
            m = self.metrics
            out.append(
                f"metrics over {self.scored_clips} clip(s): MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  PSNR {m['psnr']:.4f} dB"
            )
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        return out


class _Run:
    """State of one :func:`predict_files` call."""

    def __init__(
        self,
        predictor: Predictor,
        total: int,
        *,
        png: bool,
        gif: bool,
        has_targets: bool,
        batch_size: int,
        concurrency: int,
        progress: bool,
    ) -> None:
        from tqdm import tqdm

        self.predictor, self.spec = predictor, predictor.spec
        self.png, self.gif, self.has_targets = png, gif, has_targets
        self.batch_size, self.concurrency = batch_size, concurrency
        self.summary = Summary()
        self.scores = MetricSums()
        self.bar = tqdm(total=total, unit="input", desc="predict", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="stlight-predict")
        self.in_flight: dict[Future[np.ndarray], list[Segment]] = {}
        self.pending: list[Segment] = []
        self.pending_clips = 0

    # bookkeeping ---------------------------------------------------------------------
    def fail(self, name: str, reason: str) -> None:
        self.summary.failures.append((name, reason))
        self.bar.write(f"stlight predict: {name}: {reason}", file=sys.stderr)

    def finish(self, job: Job) -> None:
        result, job.output, job.result = job.result, np.empty(0), np.empty(0)
        if not job.error:
            try:
                if not isinstance(result, np.memmap):
                    with open(job.partial, "wb") as f:
                        np.save(f, result, allow_pickle=False)
                # a memory map needs no flush (msync) first: the rename sees the page cache
                del result
                os.replace(job.partial, job.source.npy)
                self.summary.done += 1
            except OSError as exc:
                job.error = f"cannot write {job.source.npy}: {exc}"
        if job.error:
            job.partial.unlink(missing_ok=True)
            self.fail(job.source.name, job.error)
        self.bar.update(1)

    # batches -------------------------------------------------------------------------
    def add(self, job: Job) -> None:
        """Queue ``job``'s clips, checked and converted a batch at a time."""
        raw = job.clips.raw
        for start in range(0, len(raw), self.batch_size):
            if job.error:
                job.remaining -= len(raw) - start  # the rest of a failed input is not sent
                break
            chunk = raw[start : start + self.batch_size]
            label = f"clips {start}-{start + len(chunk) - 1}" if job.clips.batched else "clip"
            try:
                inputs, targets = split_checked(chunk, self.spec, self.has_targets, label)
            except (InputError, OSError) as exc:
                job.error, job.remaining = str(exc), job.remaining - (len(raw) - start)
                break
            self._queue(Segment(job, start, inputs, targets))
        if job.remaining == 0:
            self.finish(job)

    def _queue(self, segment: Segment) -> None:
        """Append to the batch being built; full batches go to the pool. A segment may be split
        across two batches (one input's clips in several batches, several inputs in one)."""
        while len(segment.inputs):
            room = self.batch_size - self.pending_clips
            head = Segment(
                segment.job, segment.start, segment.inputs[:room], None if segment.targets is None else segment.targets[:room]
            )
            self.pending.append(head)
            self.pending_clips += len(head.inputs)
            segment = Segment(
                segment.job,
                segment.start + room,
                segment.inputs[room:],
                None if segment.targets is None else segment.targets[room:],
            )
            if self.pending_clips == self.batch_size:
                self.submit()

    def submit(self) -> None:
        if not self.pending:
            return
        while len(self.in_flight) >= 2 * self.concurrency:  # bounded: never more than this in memory
            self.collect(block=True)
        segments, self.pending, self.pending_clips = self.pending, [], 0
        batch = np.concatenate([s.inputs for s in segments])  # (n, T, C, H, W)
        self.in_flight[self.pool.submit(self.predictor.predict, batch)] = segments

    def collect(self, block: bool) -> None:
        if not self.in_flight:
            return
        done, _ = wait(list(self.in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            segments = self.in_flight.pop(future)
            try:
                prediction = future.result()
                error = ""
            except ServiceUnreachable as exc:
                self.summary.stopped = str(exc)
                prediction, error = None, f"not predicted: {exc}"
            except Exception as exc:
                prediction, error = None, f"prediction failed: {type(exc).__name__}: {exc}"
            offset = 0
            for segment in segments:
                job, n = segment.job, len(segment.inputs)
                if prediction is not None and not job.error:
                    part = prediction[offset : offset + n]  # (n, T', C, H, W)
                    try:
                        job.output[segment.start : segment.start + n] = part
                        write_images(job.source, job.clips.batched, segment.start, segment.inputs, part, self.png, self.gif)
                    except OSError as exc:
                        job.error = f"cannot write outputs: {exc}"
                    else:
                        self.summary.clips += n
                        if segment.targets is not None:
                            self.scores.update(part, segment.targets)
                            self.summary.scored_clips += n
                elif not job.error:
                    job.error = error
                offset += n
                job.remaining -= n
                if job.remaining == 0:
                    self.finish(job)
            self.bar.set_postfix(clips=self.summary.clips, refresh=False)

    def drain(self) -> None:
        if self.summary.stopped:  # the service is gone: do not send what is still waiting
            segments, self.pending, self.pending_clips = self.pending, [], 0
            for segment in segments:
                job = segment.job
                job.error = job.error or "not predicted: the run stopped early"
                job.remaining -= len(segment.inputs)
                if job.remaining == 0:
                    self.finish(job)
        self.submit()
        while self.in_flight:
            self.collect(block=True)

    # skipped inputs still count in the metrics -----------------------------------------
    def score_existing(self, source: Source) -> None:
        clips = read_source(source, self.spec, has_targets=True)
        prediction = _read_npy(source.npy)
        expected = (len(clips.raw), *self.spec.output_shape)
        got = prediction.shape if clips.batched else (1, *prediction.shape)
        if tuple(got) != expected:
            raise InputError(
                f"its existing output {source.npy} has shape {codecs.shape_text(prediction.shape)}, not the model's; pass --overwrite"
            )
        prediction = prediction.reshape(expected)
        for start in range(0, len(clips.raw), self.batch_size):
            _, targets = split_checked(clips.raw[start : start + self.batch_size], self.spec, True, "clips")
            assert targets is not None
            self.scores.update(np.asarray(prediction[start : start + self.batch_size], dtype=np.float32), targets)
            self.summary.scored_clips += len(targets)


def predict_files(
    sources: Sequence[Source],
    predictor: Predictor,
    *,
    png: bool = False,
    gif: bool = False,
    overwrite: bool = False,
    has_targets: bool = False,
    batch_size: int = 8,
    concurrency: int = 1,
    progress: bool = True,
) -> Summary:
    """Predict every source and write its outputs; failures are recorded in the summary.

    ``concurrency`` batches run at once (remote: requests in flight; local: 1 is best, ONNX
    Runtime already uses every core). With ``has_targets`` the metrics cover skipped inputs too
    (read back from their outputs), so a resumed run reports the whole set."""
    if (png or gif) and predictor.spec.channels not in (1, 3):
        raise ValueError(f"--png/--gif need 1- or 3-channel frames; this model predicts {predictor.spec.channels}")
    run = _Run(
        predictor,
        len(sources),
        png=png,
        gif=gif,
        has_targets=has_targets,
        batch_size=batch_size,
        concurrency=concurrency,
        progress=progress,
    )
    run.summary.inputs = len(sources)
    began = time.perf_counter()
    try:
        for source in sources:
            if run.summary.stopped:
                break
            run.collect(block=False)
            if not overwrite and finished(source, png, gif):
                run.summary.skipped += 1
                if has_targets:
                    try:
                        run.score_existing(source)
                    except (InputError, OSError) as exc:
                        run.fail(source.name, str(exc))
                run.bar.update(1)
                continue
            try:
                clips = read_source(source, run.spec, has_targets)
                source.npy.parent.mkdir(parents=True, exist_ok=True)
                partial = source.npy.with_name(f".{source.npy.name}.partial")
                shape = (len(clips.raw), *run.spec.output_shape) if clips.batched else run.spec.output_shape
                if np.prod(shape) * 4 > MEMMAP_BYTES:
                    output = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
                else:
                    output = np.empty(shape, np.float32)
            except InputError as exc:
                run.fail(source.name, str(exc))
                run.bar.update(1)
                continue
            except OSError as exc:
                run.fail(source.name, f"cannot read it or write its output: {exc}")
                run.bar.update(1)
                continue
            except Exception as exc:
                run.fail(source.name, f"unreadable ({type(exc).__name__}: {exc})")
                run.bar.update(1)
                continue
            view = output if clips.batched else output[None]  # (N, T', C, H, W)
            run.add(Job(source, clips, view, output, partial, remaining=len(clips.raw)))
        run.drain()
    finally:
        run.pool.shutdown(cancel_futures=True)
        run.bar.close()
    run.summary.seconds = time.perf_counter() - began
    if run.summary.stopped:
        done = {name for name, _ in run.summary.failures}
        not_reached = [s for s in sources if s.name not in done and not s.npy.is_file()]
        for source in not_reached:
            run.summary.failures.append((source.name, "not attempted: the run stopped early"))
    if run.scores.frames:
        run.summary.metrics = run.scores.result()
    return run.summary
