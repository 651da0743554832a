"""Video files <-> frames with PyAV (FFmpeg ships in its wheels; no system FFmpeg needed).

Used by the service (video request bodies and answers), ``stlight predict`` (video inputs,
``--video`` outputs) and training (``--dataset videos``), so it imports neither torch nor
onnxruntime nor fastapi: numpy, Pillow and PyAV only. Errors are the typed input errors of
:mod:`service.core.errors` (bytes that are not a readable video of their type; a type that is not
read; a video that does not fit; one beyond the frame or pixel limits); the service answers them
by type, the CLIs print the message.

Videos come from others (request bodies, downloaded clips), so a video is decoded as what it
claims to be and nothing else: its media type (a body's ``Content-Type``, a file's suffix) names
the one FFmpeg demuxer it is opened with, never a format FFmpeg guesses from the bytes (a guess
can be a concat script or a playlist, which make FFmpeg read the files they name), and FFmpeg
may open no file or URL besides the bytes handed to it (docs/security.md).

Frames are taken as stored: no frame-rate conversion, no interpolation of missing frames.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import av.error
import numpy as np
from PIL import Image, ImageOps

from service.core.errors import InputError, LimitExceeded, Unprocessable, UnsupportedMedia
from service.core.limits import DEFAULT_DECODE_LIMITS, DecodeLimits

Resize = Literal["none", "fit", "crop"]
RESIZE_MODES: tuple[Resize, ...] = ("none", "fit", "crop")
# accepted media types -> the FFmpeg demuxer each is opened with (never probed), and its name for users
MEDIA_TYPES = {
    "video/mp4": "mp4",  # FFmpeg's MP4/QuickTime demuxer: .mov and .m4v too
    "video/quicktime": "mp4",  # what browsers and curl's --data-binary users send for a .mov
    "video/webm": "webm",  # FFmpeg's Matroska demuxer, which reads WebM
    "video/x-msvideo": "avi",
    "video/x-matroska": "matroska",
    "image/gif": "gif",
}
FORMAT_NAMES = {
    "video/mp4": "MP4/MOV",
    "video/quicktime": "QuickTime (MOV)",
    "video/webm": "WebM",
    "video/x-msvideo": "AVI",
    "video/x-matroska": "Matroska (MKV)",
    "image/gif": "GIF",
}
# file suffix -> the media type a video file is read (and sent) as
SUFFIX_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/mp4",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
    ".gif": "image/gif",
}
SUFFIXES = tuple(SUFFIX_TYPES)
# Every container is opened with these: no protocol at all (the bytes come through PyAV's own
# I/O, which is no protocol), so a demuxer that would open another file or URL - directly, or
# through a nested demuxer, which inherits the list - fails instead. The format whitelist is set
# per open to the one demuxer asked for, which nested demuxers inherit too.
LOCKED_DOWN = {"protocol_whitelist": "", "enable_drefs": "0"}
DEFAULT_FPS = 10.0  # for frames that never had a rate (arrays, image folders)
# one frame short of what the container promises can be a rounding of its duration; more is a cut-off file
TRUNCATION_SLACK = 1

# container -> (FFmpeg muxer, encoder, pixel format, encoder options)
_ENCODERS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "mp4": ("mp4", "libx264", "yuv420p", {"crf": "17", "preset": "veryfast"}),
    "webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "mkv": ("matroska", "libx264", "yuv420p", {"crf": "17", "preset": "veryfast"}),
    "avi": ("avi", "mjpeg", "yuvj420p", {"q:v": "2"}),
    "gif": ("gif", "gif", "rgb8", {}),
}
CONTAINERS = tuple(_ENCODERS)
# encode_video's containers -> the media type their bytes are read back as
CONTAINER_TYPES = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "gif": "image/gif",
}


@dataclass(frozen=True)
class Video:
    """Decoded frames (N, C, H, W) uint8, the stream's frame rate, and how many frames were
    decoded in all (``decoded`` >= N when a window was kept)."""

    frames: np.ndarray
    fps: float
    decoded: int


@dataclass(frozen=True)
class Probe:
    """A video's stream properties, read without decoding frames."""

    width: int
    height: int
    channels: int  # 1 when the stream's pixel format is grey, else 3
    fps: float
    frames: int  # as the container says; 0 when it does not say


# ---------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------


def media_type_of(path: str | Path) -> str:
    """The media type a video file is read as, from its suffix; ``UnsupportedMedia`` for others."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_TYPES:
        raise UnsupportedMedia("unsupported-media-type", f"{Path(path).name}: expected a video file ({', '.join(SUFFIXES)})")
    return SUFFIX_TYPES[suffix]


@contextlib.contextmanager
def _open(source: bytes | str | Path, media_type: str | None = None) -> Iterator[av.container.InputContainer]:
    """The container, opened with the demuxer of ``media_type`` (default: a path's suffix) alone.

    A path is opened here and handed to FFmpeg as a file object, like bytes: FFmpeg never sees a
    name it could read as a URL or a protocol."""
    if not isinstance(source, bytes | bytearray):
        media_type = media_type or media_type_of(source)
    elif media_type is None:
        raise ValueError("video bytes need their media type")
    elif not source:
        raise InputError("undecodable-video", "the video is empty (0 bytes)")
    if media_type not in MEDIA_TYPES:
        raise UnsupportedMedia("unsupported-media-type", f"got {media_type}; expected one of {', '.join(MEDIA_TYPES)}")
    demuxer = MEDIA_TYPES[media_type]
    opened_elsewhere: list[str] = []

    def refuse(url: str, flags: int, options: dict[str, str]) -> Any:
        """Every open FFmpeg asks for besides the bytes (an MP4's data references, a playlist's
        segments) comes here and is refused; raised out of PyAV where FFmpeg does not swallow it."""
        opened_elsewhere.append(url)
        raise _refers_elsewhere(url)

    with contextlib.ExitStack() as stack:
        if isinstance(source, bytes | bytearray):
            file: Any = io.BytesIO(source)
        else:
            try:
                file = stack.enter_context(open(source, "rb"))
            except OSError as exc:
                raise InputError("unreadable-file", f"cannot read {source}: {exc.strerror or exc}") from None
        try:
            container = stack.enter_context(
                av.open(
                    file,
                    mode="r",
                    format=demuxer,
                    container_options={**LOCKED_DOWN, "format_whitelist": demuxer},
                    io_open=refuse,
                    metadata_errors="ignore",
                )
            )
        except av.error.FFmpegError as exc:
            raise _not_a(media_type, source, exc) from None
        if opened_elsewhere:  # the check after opening: FFmpeg asked for nothing but the bytes given
            raise _refers_elsewhere(opened_elsewhere[0])
        yield container
        if opened_elsewhere:  # ... nor while decoding
            raise _refers_elsewhere(opened_elsewhere[0])


def _refers_elsewhere(url: str) -> InputError:
    return InputError(
        "undecodable-video", f"the video refers to another file or URL ({url[:80]!r}); expected a self-contained video"
    )


def _not_a(media_type: str, source: bytes | bytearray | str | Path, exc: Exception) -> InputError:
    """Bytes its demuxer cannot open: what was expected, and what they look like instead."""
    name = FORMAT_NAMES[media_type]
    if isinstance(source, bytes | bytearray):
        head, said = bytes(source[:64]), f"its Content-Type {media_type} says"
    else:
        with open(source, "rb") as file:
            head = file.read(64)
        said = f"its suffix {Path(source).suffix.lower()} says"
    looks, hint = _looks_like(head), ""
    if looks in FORMAT_NAMES and looks != media_type and {looks, media_type} not in _ONE_DEMUXER:
        hint = f"; it looks like {FORMAT_NAMES[looks]}: send it as {looks}"
    elif looks and looks not in FORMAT_NAMES:
        hint = f"; got text starting {looks!r}"
    elif media_type == "video/mp4":
        hint = " (an MP4 cut short loses its index, which MP4 writes at the end)"
    return InputError("undecodable-video", f"not a readable {name} video ({_reason(exc)}); expected {name}, as {said}{hint}")


# the types one FFmpeg demuxer reads alike: no "send it as" hint from one to the other
_ONE_DEMUXER = ({"video/webm", "video/x-matroska"}, {"video/mp4", "video/quicktime"})


def _looks_like(head: bytes) -> str | None:
    """The media type the first bytes of a file announce, or the first line of a text."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    line = text.strip().splitlines()[0][:40] if text.strip() else ""
    return line if line.isprintable() and line else None


def _reason(exc: Exception) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream. A file cut short can still open: an MP4 cut inside its index (which
    MP4 writes at the end) lists no stream, a bare data stream, or a video stream without its
    codec. Those are truncated videos; only a file with audio or subtitles and no video is a
    file that holds no video."""
    videos = container.streams.video
    if videos and videos[0].codec_context is not None:
        return videos[0]
    kinds: list[str] = sorted({s.type for s in container.streams})
    if videos or not {"audio", "subtitle"} & set(kinds):
        hint = " (an MP4 cut short loses its index, which MP4 writes at the end)" if "mp4" in container.format.name else ""
        if videos:
            what = "its video stream has no codec parameters"
        else:
            what = f"its container lists only {', '.join(kinds)} stream(s)" if kinds else "its container lists no stream"
        raise InputError("undecodable-video", f"the video is truncated or corrupt: {what}{hint}")
    raise InputError("no-video-stream", f"the file holds no video stream (streams: {', '.join(kinds)})")


def _fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    return fps if 0 < fps <= 1000 else DEFAULT_FPS


def _promised_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float) -> int:
    """Frames the container says it holds: its frame count (AVI, MP4, GIF), else its duration
    times the frame rate (Matroska/WebM); 0 when it says neither."""
    if stream.frames:
        return int(stream.frames)
    if container.duration and container.duration > 0:
        return round(container.duration / av.time_base * fps)
    return 0


def probe(source: bytes | str | Path, media_type: str | None = None) -> Probe:
    """Size, channels, frame rate and announced frame count, without decoding frames.
    ``media_type``: what ``source`` is (see :func:`read_video`)."""
    with _open(source, media_type) as container:
        stream = _stream(container)
        ctx = stream.codec_context
        fmt = ctx.pix_fmt or ""
        channels = 1 if fmt.startswith(("gray", "ya", "mono")) else 3
        fps = _fps(stream)
        return Probe(ctx.width, ctx.height, channels, fps, _promised_frames(container, stream, fps))


def _frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, max_pixels: int
) -> Iterator[av.VideoFrame]:
    """Decoded frames; a corrupt packet is a 400 naming the frame it broke at. FFmpeg refuses a
    frame beyond the codec's ``max_pixels`` with EINVAL (its other failures are
    AVERROR_INVALIDDATA): that one is a 422 naming the limit."""
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame
            index += 1
    except av.error.ArgumentError:
        raise LimitExceeded(
            "frame-too-large",
            f"frame {index} of the video is larger than the {max_pixels:,}-pixel limit on one decoded frame (or corrupt); "
            "its container announced a smaller size",
        ) from None
    except av.error.FFmpegError as exc:
        raise InputError(
            "undecodable-video",
            f"the video is truncated or corrupt: decoding failed after {index} frame(s) ({_reason(exc)})",
        ) from None


class _Budget:
    """What one decode has cost so far, checked after every frame: frames, the frame's own size,
    pixels decoded in all (a frame counts at its decoded size, whatever was kept of it) and the
    wall clock. One FFmpeg call decodes at most one frame of ``max_frame_pixels``, so none of
    them can overrun by more than a frame."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits, self.frames, self.pixels = limits, 0, 0
        self.deadline = None if limits.timeout_s is None else time.monotonic() + limits.timeout_s

    def charge(self, frame: av.VideoFrame) -> None:
        limits = self.limits
        self.frames += 1
        if self.frames > limits.max_frames:
            raise LimitExceeded(
                "too-many-frames",
                f"the video has more than {limits.max_frames:,} frames, the most decoded per video "
                "(STLIGHT_MAX_VIDEO_FRAMES on a server); cut it shorter",
            )
        pixels = frame.width * frame.height
        if pixels > limits.max_frame_pixels:
            raise _frame_too_large(frame.width, frame.height, limits.max_frame_pixels, f"frame {self.frames - 1}")
        self.pixels += pixels
        if self.pixels > limits.max_decoded_pixels:
            raise LimitExceeded(
                "decode-too-large",
                f"decoding the video passed {limits.max_decoded_pixels:,} pixels at frame {self.frames - 1} "
                f"({frame.width}x{frame.height} each), the most decoded per video (STLIGHT_MAX_DECODED_PIXELS on a "
                "server); send fewer or smaller frames",
            )
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LimitExceeded(
                "decode-too-slow",
                f"decoding the video took more than {limits.timeout_s:g} s ({self.frames} frames so far), the most one "
                "video may take (STLIGHT_DECODE_TIMEOUT_S on a server); send a shorter or smaller video",
            )


def _frame_too_large(width: int, height: int, limit: int, what: str) -> LimitExceeded:
    return LimitExceeded(
        "frame-too-large",
        f"{what} is {width}x{height} = {width * height:,} pixels; at most {limit:,} pixels per frame are decoded "
        "(STLIGHT_MAX_FRAME_PIXELS on a server)",
    )


def _convert(frame: av.VideoFrame, mode: str, resize: Resize, height: int, width: int) -> np.ndarray:
    """One decoded frame -> (H, W) grey or (H, W, 3) RGB uint8 at the model's size."""
    pixels = frame.to_ndarray(format="gray" if mode == "L" else "rgb24")
    if resize == "none" or pixels.shape[:2] == (height, width):
        if pixels.shape[:2] != (height, width):
            raise _size_error(pixels.shape[1], pixels.shape[0], width, height)
        return pixels
    image = Image.fromarray(pixels, mode)
    if resize == "fit":  # the whole frame, stretched when the aspect ratio differs
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    else:  # crop: scaled to cover, then the centre cut out
        image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _size_error(got_w: int, got_h: int, width: int, height: int) -> Unprocessable:
    return Unprocessable(
        "wrong-size",
        f"video frames are {got_w}x{got_h} (W x H); the model expects {width}x{height}. Scale them with resize=fit "
        "(the whole frame) or resize=crop (the centre): ?resize=fit on /predict, --resize fit for stlight predict and train",
    )


def read_video(
    source: bytes | str | Path,
    *,
    media_type: str | None = None,
    channels: int,
    height: int,
    width: int,
    resize: Resize = "none",
    count: int | None = None,
    start: int | None = None,
    limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
) -> Video:
    """Decode a video to (N, C, H, W) uint8 frames at the model's channels and size.

    ``media_type`` (one of :data:`MEDIA_TYPES`; bytes need it, a path's suffix gives it) says
    which demuxer reads ``source``; bytes that are not that format are a 400.

    ``count=None`` keeps every frame; ``count=k`` keeps ``k`` frames: the last ``k`` (the whole
    file is decoded, keeping a ring of ``k``), or frames ``start ... start + k - 1`` (decoding
    stops there). Colour becomes grey for ``channels=1`` (FFmpeg's BT.601 luma), grey becomes
    RGB for ``channels=3``. Each frame is converted to the model's size as it arrives (a ring of
    native 4K frames would not fit), and ``limits`` are checked frame by frame: going past one
    is a 422 (it bounds the work one request can ask for)."""
    if channels not in (1, 3):
        raise Unprocessable(
            "wrong-channels", f"video frames are grey (1 channel) or RGB (3); this model takes {channels}: send .npy"
        )
    if resize not in RESIZE_MODES:
        raise Unprocessable("invalid-resize", f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if count is not None and count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    mode = "L" if channels == 1 else "RGB"
    with _open(source, media_type) as container:
        stream = _stream(container)
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        if ctx.width * ctx.height > limits.max_frame_pixels:
            raise _frame_too_large(ctx.width, ctx.height, limits.max_frame_pixels, "each video frame (as its container says)")
        # FFmpeg refuses to allocate a larger frame, whatever the container said
        ctx.options = {**ctx.options, "max_pixels": str(limits.max_frame_pixels)}
        if resize == "none" and ctx.width and (ctx.width, ctx.height) != (width, height):
            raise _size_error(ctx.width, ctx.height, width, height)
        fps = _fps(stream)
        promised = _promised_frames(container, stream, fps)
        first = start or 0
        kept: collections.deque[np.ndarray] | list[np.ndarray]
        kept = collections.deque(maxlen=count) if count is not None and start is None else []
        budget = _Budget(limits)
        for frame in _frames(container, stream, limits.max_frame_pixels):
            budget.charge(frame)
            if isinstance(kept, collections.deque) or budget.frames > first:
                kept.append(_convert(frame, mode, resize, height, width))
                if count is not None and start is not None and len(kept) == count:
                    break
        decoded = budget.frames
        complete = start is None or count is None or len(kept) < count
        if complete and promised and decoded < promised - TRUNCATION_SLACK:
            raise InputError(
                "truncated-video",
                f"the video is truncated or corrupt: its container announces {promised} frames, only {decoded} could be decoded",
            )
    if count is not None and len(kept) < count:
        if start is None:
            raise Unprocessable("wrong-frame-count", f"the video has {decoded} frame(s); {count} are needed")
        raise Unprocessable(
            "wrong-frame-count",
            f"the video has {decoded} frame(s); start={first} needs frames {first} to {first + count - 1}",
        )
    if not kept:
        raise Unprocessable("wrong-frame-count", "the video has no frames")
    clip = np.stack(list(kept))  # (N, H, W) or (N, H, W, 3)
    clip = clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)  # (N, C, H, W)
    return Video(np.ascontiguousarray(clip), fps, decoded)


# ---------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------


def encode_video(frames: np.ndarray, fps: float = DEFAULT_FPS, container: str = "mp4") -> bytes:
    """(N, C, H, W) uint8, C in {1, 3} -> the bytes of a video file.

    mp4: H.264 (yuv420p, CRF 17: what browsers and players take), webm: VP9, mkv: H.264,
    avi: MJPEG, gif: GIF. 4:2:0 needs even sides, so an odd height or width is padded by
    repeating the last row or column."""
    if container not in _ENCODERS:
        raise ValueError(f"container must be one of {', '.join(CONTAINERS)}, got {container!r}")
    if frames.ndim != 4 or frames.shape[1] not in (1, 3) or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"expected (N, C, H, W) uint8 frames with C 1 or 3 and N >= 1, got {frames.dtype} {frames.shape}")
    muxer, codec, pix_fmt, options = _ENCODERS[container]
    pixels = frames.transpose(0, 2, 3, 1)  # (N, H, W, C)
    if pix_fmt.endswith("420p"):
        pad_h, pad_w = pixels.shape[1] % 2, pixels.shape[2] % 2
        if pad_h or pad_w:
            pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS).limit_denominator(1001)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate)
        if container == "gif" and pixels.shape[3] == 1:
            pix_fmt = "gray"  # GIF's colour format has 3-3-2 bits: grey would lose levels
        stream.width, stream.height, stream.pix_fmt = pixels.shape[2], pixels.shape[1], pix_fmt
        stream.options = dict(options)
        for frame in pixels:
            if frame.shape[2] == 1:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:, :, 0]), format="gray")
            else:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return buffer.getvalue()
