"""Request bodies -> clips, predictions -> response bodies. Knows nothing of ONNX or HTTP
frameworks: only formats, shapes and the :class:`~service.card.ClipSpec` a model expects.

Every bad input raises :class:`~service.problems.Problem` with a 4xx status and a detail
naming what was expected and what came.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from service import video
from service.card import ClipSpec
from service.frames import (
    IMAGE_FORMATS,
    IMAGE_MODES,
    image_pixels,
    npy_data_bytes,
    read_npy_layout,
    shape_text,
    to_image,
    to_uint8,
)
from service.problems import Problem

NPY = "application/x-npy"
JSON = "application/json"
MULTIPART = "multipart/form-data"
ZIP = "application/zip"
GIF = "image/gif"
MP4 = "video/mp4"
WEBM = "video/webm"
VIDEO_TYPES = tuple(video.MEDIA_TYPES)  # request bodies decoded by service.video (image/gif among them)
REQUEST_TYPES = (NPY, JSON, MULTIPART, *(t for t in VIDEO_TYPES if t != GIF), GIF)
RESPONSE_TYPES = (NPY, JSON, ZIP, GIF, MP4, WEBM)
# answers that show the input before the prediction (unless include_input=false)
ANIMATED_TYPES = (GIF, MP4, WEBM)
# the answer's type when the request has no Accept header (or accepts anything): the request's
# family; AVI and Matroska are answered as MP4 (H.264), what every browser and player shows
DEFAULT_ANSWER = {
    NPY: NPY,
    JSON: JSON,
    MULTIPART: ZIP,
    MP4: MP4,
    WEBM: WEBM,
    GIF: GIF,
    "video/x-msvideo": MP4,
    "video/x-matroska": MP4,
}
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
GIF_FRAME_MS = 200


@dataclass(frozen=True)
class Clips:
    """Decoded input: ``frames`` is float32 (B, T, C, H, W) in [0, 1]; ``batched`` says whether
    the request had a batch axis (the answer mirrors it); ``fps``: a video's frame rate (video
    answers keep it), None for arrays and images."""

    frames: np.ndarray
    batched: bool
    fps: float | None = None


def media_type(content_type: str | None) -> str:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


# ---------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------


def check_array(array: np.ndarray, spec: ClipSpec, source: str) -> Clips:
    """Validate rank, shape, dtype and values; return float32 clips in [0, 1]."""
    expected = f"(T, C, H, W) = {shape_text(spec.input_shape)} or (B, T, C, H, W) = {shape_text(('B', *spec.input_shape))}"
    if array.dtype.kind == "f" and not array.dtype.isnative:  # e.g. big-endian '>f4': same numbers, other byte order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype != np.uint8 and array.dtype not in FLOAT_DTYPES:
        raise Problem(
            422,
            "wrong-dtype",
            f"{source}: dtype {array.dtype} is not accepted; send uint8 (0-255) or float16/float32/float64 (0-1)",
        )
    if array.ndim not in (4, 5):
        raise Problem(
            422, "wrong-rank", f"{source}: expected {expected}, got rank {array.ndim} array of shape {shape_text(array.shape)}"
        )
    batched = array.ndim == 5
    clips = array if batched else array[None]  # (B, T, C, H, W)
    if clips.shape[0] == 0:
        raise Problem(
            422, "wrong-shape", f"{source}: the batch is empty (shape {shape_text(array.shape)}); send at least one clip"
        )
    got_t, got_c, got_h, got_w = clips.shape[1:]
    if got_t != spec.in_frames:
        raise Problem(
            422,
            "wrong-frame-count",
            f"{source}: expected {spec.in_frames} input frames (T), got {got_t} (shape {shape_text(array.shape)}; expected "
            f"{expected})",
        )
    if got_c != spec.channels:
        raise Problem(
            422,
            "wrong-channels",
            f"{source}: expected {spec.channels} channel(s) (C), got {got_c} (shape {shape_text(array.shape)}; expected "
            f"{expected})",
        )
    if (got_h, got_w) != (spec.height, spec.width):
        raise Problem(
            422,
            "wrong-size",
            f"{source}: expected frames of {spec.height}x{spec.width} (H x W), got {got_h}x{got_w} (shape "
            f"{shape_text(array.shape)}; expected {expected})",
        )
    if array.dtype == np.uint8:
        scaled = clips.astype(np.float32)  # the one copy; divided in place
        scaled /= np.float32(255.0)
        return Clips(scaled, batched)
    finite = np.isfinite(clips)
    if not finite.all():
        bad = int(clips.size - np.count_nonzero(finite))
        raise Problem(422, "non-finite", f"{source}: {bad} value(s) are NaN or infinite; expected finite values in [0, 1]")
    low, high = float(clips.min()), float(clips.max())
    if low < 0.0 or high > 1.0:
        raise Problem(
            422,
            "out-of-range",
            f"{source}: float frames must lie in [0, 1], got values in [{low:g}, {high:g}]; send uint8 for 0-255 pixels",
        )
    return Clips(clips.astype(np.float32, copy=False), batched)


def decode_npy(body: bytes, spec: ClipSpec) -> Clips:
    """The header is parsed once and the data viewed in place: a float32 body reaches the
    model without a copy, any other dtype with the one conversion to float32."""
    stream = io.BytesIO(body)
    try:
        shape, fortran_order, dtype = read_npy_layout(stream)
    except ValueError as exc:
        raise Problem(400, "undecodable-npy", f"body: {exc}") from None
    promised, present = npy_data_bytes(shape, dtype), len(body) - stream.tell()
    if promised != present:
        raise Problem(
            400,
            "undecodable-npy",
            f".npy header says {shape_text(shape)} {dtype} = {promised:,} bytes of data, the body carries {present:,}",
        )
    try:
        flat = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=stream.tell())  # read-only view
        array = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    except Exception as exc:  # e.g. a zero-size dtype: not a valid .npy of numbers
        raise Problem(
            400, "undecodable-npy", f"body is not a readable .npy array ({type(exc).__name__}: {exc}); write it with numpy.save"
        ) from None
    return check_array(array, spec, "npy body")


def decode_json(body: bytes, spec: ClipSpec) -> Clips:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, integers over 4300 digits
        raise Problem(400, "undecodable-json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "frames" not in document:
        got = f"an object with keys {sorted(document)}" if isinstance(document, dict) else f"a JSON {type(document).__name__}"
        raise Problem(
            422,
            "invalid-json",
            f'expected an object {{"frames": nested list, "dtype": "float32" | "uint8" (optional)}}, got {got}',
        )
    dtype = document.get("dtype", "float32")
    if dtype not in ("float32", "uint8"):
        raise Problem(422, "wrong-dtype", f'"dtype" must be "float32" (values 0-1) or "uint8" (integers 0-255), got {dtype!r}')
    array = json_numbers(document["frames"], '"frames"', '"dtype": "uint8"')
    if dtype == "uint8":
        array = uint8_values(array, '"dtype": "uint8" frames')
    return check_array(array, spec, "JSON frames")


# a clip is at most (B, T, C, H, W): lists nested deeper than this are refused before numpy sees
# them (its own message for 65+ levels names its internal dimension limit, not what was expected)
MAX_NESTING = 5
RECTANGULAR = "a rectangular nested list of numbers (T, C, H, W) or (B, T, C, H, W)"


def _nesting(value: object) -> int:
    """How deep the first elements nest: [[1]] -> 2, 1 -> 0 (stops one past the limit)."""
    depth = 0
    while isinstance(value, list) and depth <= MAX_NESTING:
        depth += 1
        value = value[0] if value else None
    return depth


def _ragged(value: object) -> str:
    """Where a nested list stops being rectangular, in words (for the 422 only: walks every list)."""
    level, lists = 0, [value] if isinstance(value, list) else []
    while lists:
        lengths = sorted({len(item) for item in lists})
        if len(lengths) > 1:
            shown = ", ".join(map(str, lengths[:4])) + (", ..." if len(lengths) > 4 else "")
            return f"the lists at depth {level + 1} differ in length ({shown})"
        entries = [entry for item in lists for entry in item]
        lists = [entry for entry in entries if isinstance(entry, list)]
        if lists and len(lists) != len(entries):
            return f"at depth {level + 2} some entries are lists and others are not"
        level += 1
    return "its values are not all numbers"


def json_numbers(value: object, what: str, uint8_hint: str) -> np.ndarray:
    """A rectangular nested list of JSON numbers as float64 (uint8 values are checked by
    :func:`uint8_values`); ``what`` names it in messages."""
    depth = _nesting(value)
    if depth > MAX_NESTING:
        raise Problem(422, "invalid-json", f"{what} must be {RECTANGULAR}; got lists nested more than {MAX_NESTING} deep")
    try:
        array = np.array(value)
    except (ValueError, TypeError):  # ragged lists
        raise Problem(422, "invalid-json", f"{what} must be {RECTANGULAR}; {_ragged(value)}") from None
    if array.dtype.kind not in "iuf":
        got = {"U": "strings", "b": "true/false", "O": "null, objects or integers beyond 64 bits"}.get(
            array.dtype.kind, f"values of numpy type {array.dtype}"
        )
        raise Problem(
            422,
            "invalid-json",
            f"{what} must hold only numbers (floats 0-1, or integers 0-255 with {uint8_hint}), got {got}",
        )
    return array.astype(np.float64)


def uint8_values(array: np.ndarray, what: str) -> np.ndarray:
    """float64 numbers that must be whole numbers 0-255 -> uint8."""
    if (
        array.ndim
        and array.size
        and (not np.isfinite(array).all() or (array != np.round(array)).any() or array.min() < 0 or array.max() > 255)
    ):
        raise Problem(422, "out-of-range", f"{what} must be integers in 0-255")
    return array.astype(np.uint8)


def decode_images(files: Sequence[tuple[str, bytes]], spec: ClipSpec) -> Clips:
    """One clip from image files in order (multipart ``frames`` parts); converted to grey (C=1)
    or RGB (C=3). Other channel counts have no image form: send npy or JSON."""
    if not files:
        raise Problem(
            422, "missing-frames", f"multipart body has no 'frames' file parts; expected {spec.in_frames} images, in order"
        )
    mode = IMAGE_MODES.get(spec.channels)
    if mode is None:
        raise Problem(
            415,
            "unsupported-media-type",
            f"this model takes {spec.channels}-channel frames, which images cannot carry; send application/x-npy or "
            "application/json",
        )
    if len(files) != spec.in_frames:
        raise Problem(422, "wrong-frame-count", f"expected {spec.in_frames} 'frames' images, got {len(files)}")
    frames = []
    for index, (name, data) in enumerate(files):
        label = f"frame {index} ({name!r})" if name else f"frame {index}"
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                if image.size != (spec.width, spec.height):  # checked before decoding pixels: no decompression bombs
                    raise Problem(
                        422,
                        "wrong-size",
                        f"{label}: expected {spec.width}x{spec.height} (W x H) pixels, got {image.size[0]}x{image.size[1]}",
                    )
                if getattr(image, "n_frames", 1) > 1:  # only the first would be used: refuse rather than lose the rest
                    raise Problem(
                        422,
                        "animated-image",
                        f"{label}: expected one still image per 'frames' part, got an animation of {image.n_frames} frames; "
                        "send each frame as its own part",
                    )
                image.load()
                frames.append(_pixels(image, mode, label))
        except Problem:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise Problem(
                400,
                "undecodable-image",
                f"{label}: not a readable image ({type(exc).__name__}: {exc}); expected {', '.join(IMAGE_FORMATS)}",
            ) from None
    clip = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    clip = clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)  # (T, C, H, W)
    return check_array(clip, spec, "images")


def decode_video(
    data: bytes,
    spec: ClipSpec,
    *,
    media_type: str,
    resize: video.Resize = "none",
    start: int | None = None,
    max_frames: int = video.MAX_FRAMES,
) -> Clips:
    """One clip of T frames from a video file's bytes, read as ``media_type`` (one of
    :data:`VIDEO_TYPES`) and nothing else: the last T, or T from frame ``start``. Colour video is
    converted to grey for a 1-channel model."""
    try:
        clip = video.read_video(
            data,
            media_type=media_type,
            channels=spec.channels,
            height=spec.height,
            width=spec.width,
            resize=resize,
            count=spec.in_frames,
            start=start,
            max_frames=max_frames,
        )
    except video.VideoError as exc:
        raise Problem(exc.status, exc.kind, f"video: {exc.detail}") from None
    checked = check_array(clip.frames, spec, "video")
    return Clips(checked.frames, batched=False, fps=clip.fps)


def _pixels(image: Image.Image, mode: str, label: str) -> np.ndarray:
    try:
        return image_pixels(image, mode)
    except ValueError as exc:  # a 32-bit image: its range cannot be known
        raise Problem(
            422, "wrong-dtype", f"{label}: {exc}; send 8/16-bit images, or the values in [0, 1] as application/x-npy"
        ) from None


# ---------------------------------------------------------------------------------------
# content negotiation
# ---------------------------------------------------------------------------------------


def choose_answer_type(accept: str | None, request_type: str) -> str:
    """Pick the response type from ``Accept`` (with q-values and wildcards); absent or ``*/*``
    answers in the request's family. Raises 406 when nothing offered is acceptable."""
    default = DEFAULT_ANSWER[request_type]
    if not accept or not accept.strip():
        return default
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        kind, q = parts[0].lower(), 1.0
        for param in parts[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = math.nan
                if not 0.0 <= q <= 1.0:  # also NaN
                    raise Problem(
                        400,
                        "invalid-accept",
                        f"Accept: expected q-values from 0 to 1 (e.g. 'application/json;q=0.5'), got {param!r} in "
                        f"{item.strip()!r}",
                    )
        if kind and q > 0:
            ranked.append((-q, position, kind))
    for _, _, kind in sorted(ranked):
        if kind == "*/*":
            return default
        if kind in RESPONSE_TYPES:
            return kind
        if kind.endswith("/*"):
            family = kind[:-1]
            if default.startswith(family):
                return default
            match = next((t for t in RESPONSE_TYPES if t.startswith(family)), None)
            if match:
                return match
    raise Problem(406, "not-acceptable", f"cannot answer in {accept!r}; available: {', '.join(RESPONSE_TYPES)}")


# ---------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------


def check_answerable(answer_type: str, channels: int, clip_count: int, batched: bool) -> None:
    """Raise 406 before inference when the chosen answer cannot carry this prediction."""
    if answer_type in (ZIP, *ANIMATED_TYPES) and channels not in (1, 3):
        raise Problem(
            406,
            "not-acceptable",
            f"{answer_type} needs 1- or 3-channel frames, this model predicts {channels}; ask for application/x-npy or "
            "application/json",
        )
    if answer_type in ANIMATED_TYPES and batched and clip_count != 1:
        raise Problem(
            406,
            "not-acceptable",
            f"{answer_type} animates one clip, the request has {clip_count}; send (T, C, H, W) or ask for application/zip",
        )


def encode_npy(prediction: np.ndarray) -> bytes:
    """The bytes ``np.save`` writes, built with one copy of the data (``np.save`` into a
    ``BytesIO`` copies it in chunks, then again into the buffer)."""
    array = np.ascontiguousarray(prediction, dtype=np.float32)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return b"".join((header.getvalue(), array.reshape(-1).view(np.uint8).data))


def encode_json(prediction: np.ndarray) -> bytes:
    prediction = np.asarray(prediction, dtype=np.float32)
    # float32 -> Python float is exact, and json writes the shortest repr that round-trips
    return json.dumps({"frames": prediction.tolist(), "shape": list(prediction.shape)}, separators=(",", ":")).encode()


def encode_zip(prediction: np.ndarray, batched: bool) -> bytes:
    """One PNG per predicted frame: ``frame_000.png`` ... or ``clip_000/frame_000.png`` for a batch."""
    clips = prediction if batched else prediction[None]  # (B, T', C, H, W)
    check_answerable(ZIP, clips.shape[2], len(clips), batched)
    pixels = to_uint8(clips)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for b, clip in enumerate(pixels):
            for t, frame in enumerate(clip):
                png = io.BytesIO()
                to_image(frame).save(png, format="PNG")
                name = f"clip_{b:03d}/frame_{t:03d}.png" if batched else f"frame_{t:03d}.png"
                archive.writestr(name, png.getvalue())
    return buffer.getvalue()


def _shown(inputs: np.ndarray, prediction: np.ndarray, include_input: bool) -> np.ndarray:
    """The frames an animated answer shows: (T + T', C, H, W), or (T', C, H, W) without the input."""
    clip_out = prediction[0] if prediction.ndim == 5 else prediction  # (T', C, H, W)
    if not include_input:
        return clip_out
    clip_in = inputs[0] if inputs.ndim == 5 else inputs  # (T, C, H, W)
    return np.concatenate([clip_in, clip_out])


def encode_gif(
    inputs: np.ndarray, prediction: np.ndarray, batched: bool, *, include_input: bool = True, fps: float | None = None
) -> bytes:
    """Animated GIF of one clip: the input frames, then the predicted ones (looping); at a
    video's frame rate, else GIF_FRAME_MS per frame."""
    check_answerable(GIF, prediction.shape[-3], len(prediction) if prediction.ndim == 5 else 1, batched)
    images = [to_image(frame) for frame in to_uint8(_shown(inputs, prediction, include_input))]
    duration = round(1000 / fps) if fps else GIF_FRAME_MS
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


def encode_video(
    answer_type: str, inputs: np.ndarray, prediction: np.ndarray, batched: bool, *, include_input: bool, fps: float | None
) -> bytes:
    """MP4 (H.264) or WebM (VP9) of one clip: the input, then the prediction, at the input
    video's frame rate (video.DEFAULT_FPS for arrays and images)."""
    check_answerable(answer_type, prediction.shape[-3], len(prediction) if prediction.ndim == 5 else 1, batched)
    container = "mp4" if answer_type == MP4 else "webm"
    return video.encode_video(to_uint8(_shown(inputs, prediction, include_input)), fps or video.DEFAULT_FPS, container)


def encode(answer_type: str, clips: Clips, prediction: np.ndarray, *, include_input: bool = True) -> bytes:
    """``prediction`` is (B, T', C, H, W); the answer drops B when the request had no batch axis.
    ``include_input``: animated answers (GIF, MP4, WebM) show the input frames first."""
    out = prediction if clips.batched else prediction[0]
    if answer_type == NPY:
        return encode_npy(out)
    if answer_type == JSON:
        return encode_json(out)
    if answer_type == ZIP:
        return encode_zip(out, clips.batched)
    if answer_type == GIF:
        return encode_gif(clips.frames, prediction, clips.batched, include_input=include_input, fps=clips.fps)
    if answer_type in (MP4, WEBM):
        return encode_video(answer_type, clips.frames, prediction, clips.batched, include_input=include_input, fps=clips.fps)
    raise ValueError(f"unknown answer type {answer_type!r}")  # pragma: no cover - choose_answer_type prevents it
