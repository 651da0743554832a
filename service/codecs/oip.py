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
from collections.abc import Callable, Sequence
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
# An inference request whose parameters name ``feedback`` (the request id of an earlier answer)
# carries that answer's true frames in its one input and is answered with their scores, one
# FP32 (B, k) output each: the OIP form of POST /v1/feedback, the same over REST and gRPC
FEEDBACK = "feedback"
SCORES = ("mse", "mae", "psnr", "ssim")
# (request id, frames the truth declares or None) -> the shape to check the truth against;
# raises NotFound for an id with no kept answer
TruthSpec = Callable[[str, int | None], ClipSpec]


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
    feedback: str | None = None  # parameters.feedback: the clips are the truth of this answer
    outputs: tuple[str, ...] = ()  # the outputs asked for by name (none named: all)


def feedback_of(parameters: dict[str, Any]) -> str | None:
    """``parameters.feedback``: the request id whose truth the input carries, or None."""
    value = parameters.get(FEEDBACK)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(f"parameters.{FEEDBACK} must be the request id (X-Request-ID) of an earlier answer, got {value!r}")
    if "horizon" in parameters:
        raise _bad(f"parameters.horizon applies to predictions, not to a {FEEDBACK} request (its truth has the frames it has)")
    return value


def declared_frames(shape: Sequence[object]) -> int | None:
    """T of a declared (T, C, H, W) or (B, T, C, H, W) shape, else None."""
    frames = shape[-4] if len(shape) in (4, 5) else None
    return frames if isinstance(frames, int) and not isinstance(frames, bool) else None


def truth_tensors(tensors: Tensors, truth_spec: TruthSpec | None, request_id: str, shape: Sequence[object]) -> Tensors:
    """The tensors a feedback request's input is checked against: the kept answer's shape."""
    if truth_spec is None:
        raise _bad(f"parameters.{FEEDBACK} is not accepted here")
    return Tensors(tensors.input_name, tensors.output_name, truth_spec(request_id, declared_frames(shape)))


def check_outputs(names: Sequence[object], output_name: str, feedback: str | None) -> tuple[str, ...]:
    """The output names a request asks for: the model's output, or scores for a feedback request."""
    known = SCORES if feedback is not None else (output_name,)
    for name in names:
        if name not in known:
            what = f"the model has one output, {output_name!r}"
            if feedback is not None:
                what = f"a {FEEDBACK} request answers {', '.join(known)}"
            raise _bad(f"{what}; the request asks for {name!r}", "unknown-output")
    return tuple(str(name) for name in names)


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


def decode_request(
    body: bytes, header_length: str | None, tensors: Tensors, max_horizon: int = MAX_HORIZON, truth_spec: TruthSpec | None = None
) -> InferRequest:
    """Parse and check an inference request; every mistake raises an :class:`~service.core.errors.InputError`.
    ``truth_spec``: how a feedback request's truth is shaped (None: feedback is refused)."""
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
    feedback = feedback_of(parameters)
    frames = horizon.from_parameters(parameters, max_horizon)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad(f'expected "inputs": a list with one input {input_name!r}, got {json.dumps(inputs)[:80]}')
    names = [item.get("name") if isinstance(item, dict) else None for item in inputs]
    if len(inputs) != 1 or names[0] != input_name:
        raise _bad(f"the model has one input, {input_name!r}; the request has {len(inputs)}: {names}", "unknown-input")
    if feedback is not None:
        shape = inputs[0].get("shape")
        tensors = truth_tensors(tensors, truth_spec, feedback, shape if isinstance(shape, list) else [])
    clips = _decode_input(inputs[0], binary, tensors)

    binary_output = parameters.get("binary_data_output") is True
    outputs = document.get("outputs")
    asked: list[object] = []
    if outputs is not None:
        if not isinstance(outputs, list):
            raise _bad(f'"outputs" must be a list, got {arrays.json_type(outputs)}')
        asked = [item.get("name") if isinstance(item, dict) else None for item in outputs]
        check_outputs(asked, tensors.output_name, feedback)
        for name, item in zip(asked, outputs, strict=True):
            wanted = _parameters(item.get("parameters"), f"output {name!r}").get("binary_data")
            if wanted is not None:
                binary_output = wanted is True
    return InferRequest(request_id, clips, binary_output, frames, feedback, tuple(str(name) for name in asked))


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
    return _encode({"model_name": model_name, "model_version": model_version}, request, [(output_name, out)])


def feedback_outputs(request: InferRequest, scores: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The per-frame (B, k) scores a feedback request asked for ((k,) for an unbatched truth)."""
    names = request.outputs or SCORES
    return [(name, scores[name] if request.clips.batched else scores[name][0]) for name in names]


def encode_feedback(
    model_name: str, model_version: str, request: InferRequest, scores: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """A feedback request's answer: the graded model and version, one FP32 output per score.
    JSON has no infinity: an exact frame's PSNR is ``null`` there (``inf`` in binary data)."""
    head = {"model_name": model_name, "model_version": model_version, "parameters": {FEEDBACK: request.feedback}}
    return _encode(head, request, feedback_outputs(request, scores))


def _encode(head: dict[str, Any], request: InferRequest, outputs: list[tuple[str, np.ndarray]]) -> tuple[bytes, dict[str, str]]:
    document: dict[str, Any] = dict(head)
    if request.id is not None:
        document["id"] = request.id
    document["outputs"], blobs = [], []
    for name, values in outputs:
        output: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
        data = np.ascontiguousarray(values, dtype=DATATYPES["FP32"])
        if request.binary_output:
            output["parameters"] = {"binary_data_size": data.nbytes}
            blobs.append(data.tobytes())
        else:
            flat = data.ravel().tolist()
            output["data"] = flat if np.isfinite(data).all() else [v if math.isfinite(v) else None for v in flat]
        document["outputs"].append(output)
    head_bytes = json.dumps(document, separators=(",", ":")).encode()
    if not request.binary_output:
        return head_bytes, {"Content-Type": negotiation.JSON}
    return head_bytes + b"".join(blobs), {"Content-Type": OCTET_STREAM, HEADER_LENGTH: str(len(head_bytes))}
