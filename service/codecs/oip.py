"""The Open Inference Protocol's ("KServe V2") inference wire format: request bodies -> clips,
predictions -> response bodies, with Triton's binary tensor data extension.

A request is a JSON header, optionally followed by binary tensor data; the
``Inference-Header-Content-Length`` header gives the JSON's length (``0``: the whole body is the
raw FP32 data of one clip, Triton's "raw binary request"). Tensor checks that /predict also makes
(rank, frame count, channels, size, value range) go through :func:`service.codecs.arrays.check_array`,
so both routes answer the same mistake with the same message and status. Mistakes raise the typed
errors of :mod:`service.core.errors`.

Knows nothing of ONNX Runtime or FastAPI: only the names and shapes of the model's tensors.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.codecs import arrays, negotiation
from service.codecs.arrays import Clips
from service.core import horizon
from service.core.card import ClipSpec
from service.core.errors import InputError, TooLarge, Unprocessable, UnsupportedMedia
from service.core.frames import shape_text
from service.core.limits import MAX_HORIZON

HEADER_LENGTH = "Inference-Header-Content-Length"
# what the server metadata says of this server, over REST and gRPC alike
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration"]
PLATFORM = "onnxruntime_onnx"
OCTET_STREAM = "application/octet-stream"
# OIP datatypes -> numpy (little-endian on the wire); the ones check_array accepts are the
# ACCEPTED ones, the others are named so that the refusal can say what came
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}  # fmt: skip
# datatypes of the protocol's table (and Triton's BF16) that have no fixed-size numpy form here
OTHER_DATATYPES = ("BYTES", "BF16")
ACCEPTED = ("UINT8", "FP16", "FP32", "FP64")
ACCEPTED_TEXT = "UINT8 (0-255) or FP32/FP16/FP64 (0-1)"


@dataclass(frozen=True)
class Tensors:
    """The model's tensor names and the clip shape, as the metadata routes describe them."""

    input_name: str
    output_name: str
    spec: ClipSpec

    def metadata(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            {"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.spec.input_shape]},
            {"name": self.output_name, "datatype": "FP32", "shape": [-1, *self.spec.output_shape]},
        )


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    clips: Clips
    binary_output: bool
    horizon: int | None = None  # parameters.horizon: frames to predict by rollout (None: T')


def _bad(detail: str, kind: str = "invalid-inference-request") -> InputError:
    return InputError(kind, detail)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip or deflate request body (tritonclient's ``request_compression_algorithm``),
    inflated to at most ``limit`` bytes (the body limit: a small bomb stays small)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMedia(
            "unsupported-encoding", f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _bad(f"the body is not valid {encoding} data: {exc}", "undecodable-body") from None
    if len(data) > limit:
        raise TooLarge("body-too-large", f"the {encoding} body inflates to more than {limit:,} bytes, the limit (--max-body-mb)")
    if not inflater.eof:
        raise _bad(f"the {encoding} body is truncated", "undecodable-body")
    return data


def _header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise _bad(f"{HEADER_LENGTH} must be a whole number of bytes, got {value!r}") from None
    if not 0 <= length <= body_size:
        raise _bad(f"{HEADER_LENGTH} is {length}, but the body has {body_size:,} bytes")
    return length


def decode_request(body: bytes, header_length: str | None, tensors: Tensors, max_horizon: int = MAX_HORIZON) -> InferRequest:
    """Parse and check an inference request; every mistake raises an :class:`~service.core.errors.InputError`."""
    spec, input_name = tensors.spec, tensors.input_name
    length = _header_length(header_length, len(body))
    if not body:
        raise _bad(
            f"the request body is empty; expected an inference request with input {input_name!r} "
            f"FP32 {shape_text(('B', *spec.input_shape))}",
            "empty-body",
        )
    if length == 0:  # raw binary request: one clip of FP32, nothing else
        want = math.prod(spec.input_shape) * 4
        if len(body) != want:
            raise _bad(
                f"a raw binary request ({HEADER_LENGTH}: 0) must carry one FP32 clip {shape_text(spec.input_shape)} "
                f"= {want:,} bytes, got {len(body):,}"
            )
        array = np.frombuffer(body, DATATYPES["FP32"]).reshape(1, *spec.input_shape)
        return InferRequest(None, arrays.check_array(array, spec, f"input {input_name!r}"), True)
    head, binary = (body, b"") if length is None else (body[:length], body[length:])
    try:
        document = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the inference request is not valid JSON: {exc}", "undecodable-json") from None
    if not isinstance(document, dict):
        raise _bad(f"the inference request must be a JSON object, got {arrays.json_type(document)}")

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f'"id" must be a string, got {json.dumps(request_id)[:50]}')
    parameters = _parameters(document.get("parameters"), "the request's")
    frames = horizon.from_parameters(parameters, max_horizon)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad(f'expected "inputs": a list with one input {input_name!r}, got {json.dumps(inputs)[:80]}')
    names = [item.get("name") if isinstance(item, dict) else None for item in inputs]
    if len(inputs) != 1 or names[0] != input_name:
        raise _bad(f"the model has one input, {input_name!r}; the request has {len(inputs)}: {names}", "unknown-input")
    clips = _decode_input(inputs[0], binary, tensors)

    binary_output = parameters.get("binary_data_output") is True
    outputs = document.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise _bad(f'"outputs" must be a list, got {arrays.json_type(outputs)}')
        for item in outputs:
            name = item.get("name") if isinstance(item, dict) else None
            if name != tensors.output_name:
                raise _bad(f"the model has one output, {tensors.output_name!r}; the request asks for {name!r}", "unknown-output")
            wanted = _parameters(item.get("parameters"), f"output {name!r}").get("binary_data")
            if wanted is not None:
                binary_output = wanted is True
    return InferRequest(request_id, clips, binary_output, frames)


def _parameters(value: object, whose: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f'{whose} "parameters" must be a JSON object, got {json.dumps(value)[:50]}')
    return value


def _decode_input(item: dict[str, Any], binary: bytes, tensors: Tensors) -> Clips:
    name, spec = tensors.input_name, tensors.spec
    label = f"input {name!r}"
    datatype, shape = item.get("datatype"), item.get("shape")
    if datatype not in ACCEPTED:
        known = "" if datatype in DATATYPES or datatype in OTHER_DATATYPES else " (not an OIP datatype)"
        raise Unprocessable("wrong-dtype", f"{label}: datatype {datatype!r}{known} is not accepted; send {ACCEPTED_TEXT}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _bad(f'{label}: "shape" must be a list of non-negative integers, got {json.dumps(shape)[:80]}')
    dtype, count = DATATYPES[datatype], math.prod(shape)
    label = f"{label} ({datatype} {shape})"
    size = _parameters(item.get("parameters"), label).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f'{label}: "binary_data_size" must be a whole number of bytes, got {json.dumps(size)[:50]}')
        if size != len(binary):
            raise _bad(f"{label}: binary_data_size is {size:,} bytes, but {len(binary):,} bytes follow the JSON header")
        if size != count * dtype.itemsize:
            need = count * dtype.itemsize
            raise _bad(f"{label}: binary_data_size is {size:,} bytes; the shape needs {count:,} × {dtype.itemsize} = {need:,}")
        array = np.frombuffer(binary, dtype).reshape(shape)
    else:
        if binary:
            raise _bad(f"{len(binary):,} bytes follow the JSON header, but {label} has no binary_data_size")
        if "data" not in item:
            raise _bad(f'{label}: no "data" and no "binary_data_size" parameter; send the values one way or the other')
        numbers = arrays.json_numbers(item["data"], f'{label} "data"', 'datatype "UINT8"')
        if numbers.size != count:
            raise _bad(f'{label}: "data" holds {numbers.size:,} values; the shape needs {count:,}', "wrong-shape")
        if numbers.ndim > 1 and list(numbers.shape) != shape:
            raise _bad(f'{label}: nested "data" has shape {list(numbers.shape)}, not the declared shape', "wrong-shape")
        if datatype == "UINT8":
            numbers = arrays.uint8_values(numbers, f'{label} "data"')
        array = numbers.reshape(shape)
    return arrays.check_array(array, spec, label)


def encode_response(
    model_name: str, model_version: str, request: InferRequest, prediction: np.ndarray, output_name: str
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; ``prediction`` is (B, T', C, H, W) float32."""
    out = prediction if request.clips.batched else prediction[0]
    output: dict[str, Any] = {"name": output_name, "datatype": "FP32", "shape": list(out.shape)}
    data = np.ascontiguousarray(out, dtype=DATATYPES["FP32"])
    if request.binary_output:
        output["parameters"] = {"binary_data_size": data.nbytes}
    else:
        output["data"] = data.ravel().tolist()
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = [output]
    head = json.dumps(document, separators=(",", ":")).encode()
    if not request.binary_output:
        return head, {"Content-Type": negotiation.JSON}
    return head + data.tobytes(), {"Content-Type": OCTET_STREAM, HEADER_LENGTH: str(len(head))}
