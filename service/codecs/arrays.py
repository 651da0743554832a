"""Arrays in and out: npy and JSON bodies -> clips checked against the model's
:class:`~service.core.card.ClipSpec`, predictions -> npy and JSON answers. Every check a clip
passes (rank, frame count, channels, size, dtype, value range) is :func:`check_array`'s, which
the image, video and Open Inference Protocol decoders call too, so every route answers the same
mistake with the same message. Knows nothing of ONNX Runtime or HTTP frameworks; bad input
raises the typed errors of :mod:`service.core.errors`.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np

from service.core.card import ClipSpec
from service.core.errors import InputError, Unprocessable
from service.core.frames import npy_data_bytes, read_npy_layout, shape_text

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Clips:
    """Decoded input: ``frames`` is float32 (B, T, C, H, W) in [0, 1]; ``batched`` says whether
    the request had a batch axis (the answer mirrors it); ``fps``: a video's frame rate (video
    answers keep it), None for arrays and images."""

    frames: np.ndarray
    batched: bool
    fps: float | None = None


def check_array(array: np.ndarray, spec: ClipSpec, source: str) -> Clips:
    """Validate rank, shape, dtype and values; return float32 clips in [0, 1]."""
    expected = f"(T, C, H, W) = {shape_text(spec.input_shape)} or (B, T, C, H, W) = {shape_text(('B', *spec.input_shape))}"
    if array.dtype.kind == "f" and not array.dtype.isnative:  # e.g. big-endian '>f4': same numbers, other byte order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype != np.uint8 and array.dtype not in FLOAT_DTYPES:
        raise Unprocessable(
            "wrong-dtype",
            f"{source}: dtype {array.dtype} is not accepted; send uint8 (0-255) or float16/float32/float64 (0-1)",
        )
    if array.ndim not in (4, 5):
        raise Unprocessable(
            "wrong-rank", f"{source}: expected {expected}, got rank {array.ndim} array of shape {shape_text(array.shape)}"
        )
    batched = array.ndim == 5
    clips = array if batched else array[None]  # (B, T, C, H, W)
    if clips.shape[0] == 0:
        raise Unprocessable(
            "wrong-shape", f"{source}: the batch is empty (shape {shape_text(array.shape)}); send at least one clip"
        )
    got_t, got_c, got_h, got_w = clips.shape[1:]
    if got_t != spec.in_frames:
        raise Unprocessable(
            "wrong-frame-count",
            f"{source}: expected {spec.in_frames} input frames (T), got {got_t} (shape {shape_text(array.shape)}; expected "
            f"{expected})",
        )
    if got_c != spec.channels:
        raise Unprocessable(
            "wrong-channels",
            f"{source}: expected {spec.channels} channel(s) (C), got {got_c} (shape {shape_text(array.shape)}; expected "
            f"{expected})",
        )
    if (got_h, got_w) != (spec.height, spec.width):
        raise Unprocessable(
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
        raise Unprocessable("non-finite", f"{source}: {bad} value(s) are NaN or infinite; expected finite values in [0, 1]")
    low, high = float(clips.min()), float(clips.max())
    if low < 0.0 or high > 1.0:
        raise Unprocessable(
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
        raise InputError("undecodable-npy", f"body: {exc}") from None
    promised, present = npy_data_bytes(shape, dtype), len(body) - stream.tell()
    if promised != present:
        raise InputError(
            "undecodable-npy",
            f".npy header says {shape_text(shape)} {dtype} = {promised:,} bytes of data, the body carries {present:,}",
        )
    try:
        flat = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=stream.tell())  # read-only view
        array = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    except Exception as exc:  # e.g. a zero-size dtype: not a valid .npy of numbers
        raise InputError(
            "undecodable-npy", f"body is not a readable .npy array ({type(exc).__name__}: {exc}); write it with numpy.save"
        ) from None
    return check_array(array, spec, "npy body")


def json_type(value: object) -> str:
    """What a parsed JSON value is, in JSON's words (a caller never wrote a Python type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def decode_json(body: bytes, spec: ClipSpec) -> Clips:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, integers over 4300 digits
        raise InputError("undecodable-json", f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or "frames" not in document:
        got = f"an object with keys {sorted(document)}" if isinstance(document, dict) else json_type(document)
        raise Unprocessable(
            "invalid-json",
            f'expected an object {{"frames": nested list, "dtype": "float32" | "uint8" (optional)}}, got {got}',
        )
    dtype = document.get("dtype", "float32")
    if dtype not in ("float32", "uint8"):
        raise Unprocessable("wrong-dtype", f'"dtype" must be "float32" (values 0-1) or "uint8" (integers 0-255), got {dtype!r}')
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
        raise Unprocessable("invalid-json", f"{what} must be {RECTANGULAR}; got lists nested more than {MAX_NESTING} deep")
    try:
        array = np.array(value)
    except (ValueError, TypeError):  # ragged lists
        raise Unprocessable("invalid-json", f"{what} must be {RECTANGULAR}; {_ragged(value)}") from None
    if array.dtype.kind not in "iuf":
        got = {"U": "strings", "b": "true/false", "O": "null, objects or integers beyond 64 bits"}.get(
            array.dtype.kind, f"values of numpy type {array.dtype}"
        )
        raise Unprocessable(
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
        raise Unprocessable("out-of-range", f"{what} must be integers in 0-255")
    return array.astype(np.uint8)


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
