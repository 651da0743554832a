"""Where an ONNX file's external data lives, checked before ONNX Runtime reads it.

A tensor of an ONNX file may keep its bytes in another file, named by a path relative to the
model's folder. ONNX Runtime 1.20 (the oldest this package accepts) follows any such path: an
absolute one, ``..``, a symlink to elsewhere. A model file from someone else could then make the
server read any file it can, as weights whose effect on the answers shows the bytes. So before a
session is created, every external-data path is checked: relative, no ``..``, and resolved
(symlinks followed) inside the model's folder (docs/security.md).

The serving install has no ``onnx`` package, so this reads the protobuf wire format itself,
walking only the messages that can hold tensors (graphs, nodes, attributes, functions, sparse
tensors, training info) and skipping every other field by its length. The field numbers are
onnx.proto's; tests/test_security.py holds them to the ``onnx`` package's own descriptors.
"""

from __future__ import annotations

import mmap
from pathlib import Path, PurePosixPath, PureWindowsPath

# message -> {field number: the message it holds}; fields not listed are skipped
SCHEMA: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {
        5: "TensorProto",
        6: "GraphProto",
        10: "TensorProto",
        11: "GraphProto",
        22: "SparseTensorProto",
        23: "SparseTensorProto",
    },
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
    "TensorProto": {13: "StringStringEntryProto"},  # external_data: key/value pairs
}
_TENSOR_NAME = 8
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
MAX_DEPTH = 64  # graphs nest in attributes (If, Loop); deeper than this is not a model


class ExternalDataError(ValueError):
    """An ONNX file whose external data lies outside its folder."""


class NotOnnxError(ExternalDataError):
    """A file that is not a protobuf message, so its external data cannot be checked."""


def _varint(data: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise NotOnnxError("a truncated or overlong protobuf varint")


def _fields(data: mmap.mmap | bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of the length-delimited fields of the message in data[start:end]
    (other fields skipped; groups, which onnx.proto has none of but parsers accept, skipped whole)."""
    found: list[tuple[int, int, int]] = []
    pos, groups = start, 0
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if not groups:
                found.append((number, pos, pos + length))
            pos += length
        elif wire in (3, 4):
            groups += 1 if wire == 3 else -1
            if groups < 0:
                raise NotOnnxError(f"a protobuf group ends in field {number} that never started")
        else:
            raise NotOnnxError(f"protobuf wire type {wire} in field {number}")
        if pos > end:
            raise NotOnnxError("a protobuf field runs past its message")
    if groups:
        raise NotOnnxError("a protobuf group never ends")
    return found


def external_data(data: mmap.mmap | bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor of a serialized ModelProto whose data is external."""
    found: list[tuple[str, str]] = []
    stack = [("ModelProto", 0, len(data), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise NotOnnxError(f"messages nested more than {MAX_DEPTH} deep")
        fields = _fields(data, start, end)
        if kind == "TensorProto":
            name = next((bytes(data[s:e]).decode(errors="replace") for n, s, e in fields if n == _TENSOR_NAME), "?")
            for number, s, e in fields:
                if number == 13:
                    entry = {n: bytes(data[a:b]).decode(errors="replace") for n, a, b in _fields(data, s, e)}
                    if entry.get(_ENTRY_KEY) == "location":
                        found.append((name, entry.get(_ENTRY_VALUE, "")))
            continue
        holds = SCHEMA[kind]
        stack.extend((holds[number], s, e, depth + 1) for number, s, e in fields if number in holds)
    return found


def escapes(folder: Path, location: str) -> str | None:
    """Why ``location`` is not a file inside ``folder`` (absolute, ``..``, a symlink out), or None."""
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if not location:
        return "an empty path"
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "an absolute path"
    if ".." in windows.parts:  # Windows' parts split on both / and \
        return "a path through '..'"
    inside = folder.resolve()
    target = (folder / location).resolve()  # symlinks followed, as the operating system will
    if target != inside and inside not in target.parents:
        return f"a path that resolves to {target} (a symbolic link out of the folder)"
    return None


def check_external_data(path: Path) -> None:
    """Refuse ``path`` (``ExternalDataError``) when any of its tensors' data lies outside its folder."""
    with open(path, "rb") as file:
        if not file.seek(0, 2):
            return  # empty: ONNX Runtime says what is wrong with it
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found = external_data(data)
    for name, location in found:
        why = escapes(path.parent, location)
        if why:
            raise ExternalDataError(
                f"{path}: tensor {name!r} keeps its data in {location!r}, {why}; expected a file inside {path.parent}"
            )
