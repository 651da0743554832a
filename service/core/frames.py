"""Frames as files and pixels, for everything that reads or writes them: the ``.npy`` header
check, frames -> uint8, image decoding. Used by the HTTP codecs, ``stlight predict`` and the
training data, so an array or an image means the same thing to all three. Numpy and Pillow
only (no torch, no web framework).

Errors are ``ValueError`` s whose message names what was expected and what came, without
saying where the bytes came from; callers prefix that (a request body, a file name)."""

from __future__ import annotations

import ast
import contextlib
import math
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

NPY_MAGIC = b"\x93NUMPY"
# still-image files that make up a clip of frames
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The Pillow readers frames are opened with, and only these: Pillow left to guess reads some 40
# formats, EPS among them, which it renders by running Ghostscript on the file (a program, sent
# by whoever sent the frame). GIF: a one-frame GIF is a still frame too.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
# Pillow mode for a channel count; other counts have no image form
IMAGE_MODES = {1: "L", 3: "RGB"}


def shape_text(shape: Sequence[int | str]) -> str:
    """``(10, 1, 64, 64)``: a shape in error messages."""
    return "(" + ", ".join(map(str, shape)) + ")"


# ---------------------------------------------------------------------------------------
# .npy
# ---------------------------------------------------------------------------------------


# numpy parses an .npy header with ast.literal_eval, and CPython keeps the AST constructor's
# recursion depth in state that all threads share (gh-95185; see gh-106905): two threads parsing
# at once (the service decodes bodies in worker threads) can fail with a spurious "SystemError: AST
# constructor recursion depth mismatch", which would refuse a valid body. benchmarks/soak.py hit it
# on 3.11.7. One parse takes microseconds, so they go one at a time.
_HEADER_LOCK = threading.Lock()


def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy``, leaving ``stream`` at the first data byte.

    Read before the data, so that a forged shape never makes numpy allocate it; arrays of
    Python objects are refused (loading them would unpickle)."""
    shape, _, dtype = read_npy_layout(stream)
    return shape, dtype


def read_npy_layout(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """:func:`read_npy_header` plus the Fortran-order flag: all a reader needs to view the data
    in place (``np.frombuffer``) instead of parsing the header a second time in ``np.load``.

    The header is parsed here, as numpy's ``read_array_header_*`` do (a Python literal dict of
    ``descr``, ``fortran_order`` and ``shape``, at most 10,000 bytes), so that each way it can be
    wrong gets a message in the terms of the format, not numpy's or the parser's internals."""
    start = stream.read(len(NPY_MAGIC))
    if start != NPY_MAGIC:
        raise ValueError(
            f"not an .npy array: it starts with {start!r}, not the .npy magic {NPY_MAGIC!r}; write it with numpy.save"
        )
    version = tuple(stream.read(2))
    if version not in ((1, 0), (2, 0)):
        shown = ".".join(map(str, version)) or "missing"
        raise ValueError(f"npy format version {shown} is not supported (1.0 and 2.0 are); write it with numpy.save")
    size_field = stream.read(2 if version == (1, 0) else 4)
    header = stream.read(int.from_bytes(size_field, "little")) if len(size_field) in (2, 4) else b""
    if len(size_field) not in (2, 4) or len(header) != int.from_bytes(size_field, "little"):
        raise ValueError("the .npy header is cut short; write it with numpy.save")
    if len(header) > MAX_NPY_HEADER:
        raise ValueError(
            f"the .npy header is {len(header):,} bytes, over the {MAX_NPY_HEADER:,} numpy reads; write it with numpy.save"
        )
    return _npy_fields(header.decode("latin1"))


MAX_NPY_HEADER = 10_000  # bytes: numpy's own limit (max_header_size) on what it parses


def _npy_fields(text: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The header dict's three fields, each checked; ValueError saying which one is wrong."""
    expected = "{'descr': dtype, 'fortran_order': bool, 'shape': tuple of ints}"
    try:
        with _HEADER_LOCK:
            fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"the .npy header is not the dict numpy.save writes, {expected}; write it with numpy.save") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        got = f"keys {sorted(map(str, fields))}" if isinstance(fields, dict) else type(fields).__name__
        raise ValueError(f"the .npy header must be {expected}, got {got}; write it with numpy.save")
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise ValueError(f"the .npy header's shape must be a tuple of integers, got {shape!r}; write it with numpy.save")
    if any(n < 0 for n in shape):
        raise ValueError(f"the .npy header has a negative dimension in its shape {shape_text(shape)}; write it with numpy.save")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"the .npy header's fortran_order must be True or False, got {fortran_order!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except (ValueError, TypeError, KeyError, IndexError):
        raise ValueError(f"the .npy header's descr {fields['descr']!r} is not a numpy dtype; write it with numpy.save") from None
    if dtype.hasobject:
        raise ValueError("an .npy of Python objects (it would need unpickling, which is refused); save uint8 or float arrays")
    if dtype.itemsize == 0:
        raise ValueError(f"the .npy header's dtype {dtype} has items of 0 bytes; save uint8 or float arrays")
    return shape, fortran_order, dtype


def npy_data_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot overflow


def load_npy(path: str | Path, mmap_above: int = 0) -> np.ndarray:
    """An ``.npy`` file's array, memory-mapped when its data is larger than ``mmap_above``
    bytes (so a file larger than RAM can be read a slice at a time); the header is checked
    against the file's size first, so a truncated file fails here and not mid-run."""
    with open(path, "rb") as f:
        shape, dtype = read_npy_header(f)
        promised, present = npy_data_bytes(shape, dtype), os.fstat(f.fileno()).st_size - f.tell()
        if present < promised:
            raise ValueError(
                f"truncated: its header says {shape_text(shape)} {dtype} = {promised:,} bytes of data, the file holds {present:,}"
            )
        if promised <= mmap_above:  # small: read now, from the open file
            f.seek(0)
            return np.load(f, allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


# A compressed (deflated) .npz member cannot be memory-mapped: it is inflated, into memory when
# small, else into an unnamed temporary file that is then mapped, so a member larger than RAM
# costs disk, not memory. Beyond this it is refused: a 1.6 MB deflated member of zeros can
# declare gigabytes. Stored members (numpy.savez) are mapped in place, whatever their size.
MAX_INFLATED_BYTES = 1 << 30
_CHUNK = 1 << 20


def npz_member_names(path: str | Path) -> list[str]:
    """The arrays of an ``.npz``: its ``.npy`` members' names without the suffix (nothing inflated)."""
    with zipfile.ZipFile(path) as archive:
        return [name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")]


def load_npz_member(path: str | Path, name: str, *, mmap_above: int = 0, max_inflated: int = MAX_INFLATED_BYTES) -> np.ndarray:
    """One array of an ``.npz``, checked from its zip and .npy headers before any of its data is
    inflated: the .npy header's shape and dtype must account for exactly the bytes the zip
    directory says the member holds, and a compressed member may inflate to ``max_inflated``
    bytes at most. Data larger than ``mmap_above`` bytes is memory-mapped (in place when stored;
    from a temporary file when compressed); only the declared bytes are ever inflated."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(name + ".npy")
        except KeyError:
            raise ValueError(f"has no array {name!r}") from None
        with archive.open(info) as member:
            shape, fortran_order, dtype = read_npy_layout(member)  # inflates the header only
            header_bytes = member.tell()
        promised = npy_data_bytes(shape, dtype)
        if info.file_size != header_bytes + promised:
            raise ValueError(
                f"array {name!r}: its .npy header says {shape_text(shape)} {dtype} = {promised:,} bytes of data, the zip "
                f"says the member holds {info.file_size - header_bytes:,}; write it with numpy.savez"
            )
        order: Literal["C", "F"] = "F" if fortran_order else "C"
        if info.compress_type == zipfile.ZIP_STORED and promised > mmap_above:
            offset = _stored_data_offset(path, info) + header_bytes
            return np.memmap(Path(path), dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        if info.compress_type != zipfile.ZIP_STORED and promised > max_inflated:
            raise ValueError(
                f"array {name!r} is compressed and inflates to {promised:,} bytes, beyond the {max_inflated:,} a compressed "
                "array may; save it uncompressed (numpy.savez, not savez_compressed), which is read in place"
            )
        with archive.open(info) as member:
            member.seek(header_bytes)
            return _inflate(member, shape, dtype, order, to_file=promised > mmap_above)


def _stored_data_offset(path: str | Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header, whose name and extra field
    lengths may differ from the central directory's."""
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        local = file.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("the zip's local header is missing or damaged")
    return info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")


def _inflate(
    member: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, order: Literal["C", "F"], *, to_file: bool
) -> np.ndarray:
    """Exactly the declared data, a chunk at a time: into memory, or into a temporary file mapped
    read-only (unlinked at once; the mapping keeps it until the array is gone)."""
    promised = npy_data_bytes(shape, dtype)
    with contextlib.ExitStack() as stack:
        if to_file:
            spill = stack.enter_context(tempfile.TemporaryFile())
            spill.truncate(promised)
            buffer: np.ndarray = np.memmap(spill, dtype=np.uint8, mode="r+", shape=(promised,))
        else:
            buffer = np.empty(promised, dtype=np.uint8)
        done = 0
        while done < promised:
            got = member.readinto(buffer[done : done + _CHUNK].data)  # type: ignore[attr-defined]
            if not got:
                raise ValueError(f"truncated: {promised:,} bytes of data declared, {done:,} inflated")
            done += got
        if to_file:
            buffer.flush()  # type: ignore[attr-defined]
            return np.memmap(spill, dtype=dtype, mode="r", shape=shape, order=order)
    return buffer.view(dtype).reshape(shape, order=order)


# ---------------------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------------------


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 pixels (clipped, rounded)."""
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_image(frame: np.ndarray) -> Image.Image:
    """(C, H, W) uint8, C in {1, 3} -> PIL image."""
    return Image.fromarray(frame[0]) if frame.shape[0] == 1 else Image.fromarray(frame.transpose(1, 2, 0), "RGB")


def image_error(exc: Exception, head: bytes) -> str:
    """Why Pillow could not read an image, in words for the sender: Pillow's own messages name its
    exception types and the in-memory file object ("cannot identify image file <_io.BytesIO
    object at 0x...>"), which mean nothing to whoever sent the bytes; ``head``: their first bytes."""
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image in a format this reads; it starts with {head[:12]!r}"
    reason = _OBJECT_REPR.sub("the image", str(exc)).strip()
    return reason or "it could not be decoded"


_OBJECT_REPR = re.compile(r"<[^<>]*(?: at 0x[0-9a-fA-F]+|name=[^<>]*)>")


def image_pixels(image: Image.Image, mode: str) -> np.ndarray:
    """One decoded image -> float32 (H, W) for mode "L" or (H, W, 3) for "RGB", in [0, 1].

    16-bit grey is scaled by 65535 (Pillow's own conversion to 8 bits would clip it at 255);
    32-bit images are refused: they have no fixed pixel range to scale by."""
    if image.mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.float32) / np.float32(65535)  # (H, W)
        return grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)  # (H, W, 3)
    if image.mode in ("I", "F"):
        kind = "float" if image.mode == "F" else "integer"
        raise ValueError(
            f"expected an 8- or 16-bit image, got a 32-bit {kind} one (mode {image.mode}), which has no fixed pixel range"
        )
    return np.asarray(image.convert(mode), dtype=np.float32) / np.float32(255)
