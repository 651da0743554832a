"""Hostile files, built small and fast in the tests that send them: what an attacker would send to
make decoding cost far more than the bytes sent (tests/test_decode_limits.py, tests/test_attacks.py)."""

from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def growing_mkv(big: int = 6000, big_frames: int = 4) -> bytes:
    """Matroska/MJPEG whose header and first two frames say 64x64; then ``big`` x ``big`` frames
    (a uniform JPEG stays small whatever its size)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuvj420p"
        small, large = jpeg(64, 64), jpeg(big, big)
        for index, data in enumerate([small, small] + [large] * big_frames):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, index, index, Fraction(1, 10)
            out.mux(packet)
    return buffer.getvalue()


def canvas_gif(side: int, frames: int) -> bytes:
    """An animated GIF of a ``side`` x ``side`` canvas, each frame one pixel (23 bytes a frame:
    FFmpeg hands every frame over as the whole canvas)."""
    parts = [b"GIF89a", struct.pack("<HHBBB", side, side, 0x80, 0, 0), b"\x00\x00\x00\xff\xff\xff"]
    control = b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control: keep the canvas, 10 ms
    pixel = b"\x2c" + struct.pack("<HHHHB", side - 1, side - 1, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # one pixel
    parts += [(control + pixel) * frames, b"\x3b"]
    return b"".join(parts)


def deflate_bomb(path: Path, shape: tuple[int, ...], name: str = "clips") -> None:
    """An .npz whose one deflated member, about 1 MB, inflates to ``shape`` uint8 zeros, honest in
    both its zip and .npy headers. Written by hand: deflated byte-aligned pieces of 16 MiB of zeros,
    each from a fresh compressor, concatenate into one valid stream (zipfile would compress every
    byte: a minute for a gigabyte). The CRC is left 0: a reader that trusts nothing never gets to it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    chunk = 1 << 24
    data_bytes = int(np.prod(shape))
    assert data_bytes % chunk == 0

    def piece(data: bytes, mode: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(mode)

    zeros = piece(bytes(chunk), zlib.Z_FULL_FLUSH)
    body = piece(header.getvalue(), zlib.Z_FULL_FLUSH) + zeros * (data_bytes // chunk) + piece(b"", zlib.Z_FINISH)
    size = len(header.getvalue()) + data_bytes
    assert size < 1 << 32  # no zip64 records needed
    member = (name + ".npy").encode()
    local = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0, 8, 0, 0, 0, len(body), size, len(member), 0) + member
    central = (
        b"PK\x01\x02"
        + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 8, 0, 0, 0, len(body), size, len(member), 0, 0, 0, 0, 0, 0)
        + member
    )
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), len(local) + len(body), 0)
    path.write_bytes(local + body + central + end)
