"""The Open Inference Protocol's gRPC inference messages: a ``ModelInferRequest`` -> the request
the data plane runs (:class:`service.oip.InferRequest`), a prediction -> ``ModelInferResponse``.

Values come either as ``raw_input_contents`` (little-endian bytes, what tritonclient sends) or in
the ``InferTensorContents`` field of their datatype; the answer mirrors the request (raw bytes for
raw bytes, ``fp32_contents`` for contents). The checks are the REST route's
(:mod:`service.oip`): the same datatypes, and the same rank, frame, channel, size and value
checks through :func:`service.codecs.arrays.check_array`, so both protocols refuse a mistake with the
same message; the status codes follow from :mod:`service.grpc.status`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from service.codecs import arrays, oip
from service.core import horizon
from service.core.errors import InputError, Unprocessable
from service.grpc.proto import open_inference_grpc_pb2 as pb

# the InferTensorContents field of each accepted datatype; FP16 has none (the protocol sends
# 16-bit floats as raw bytes only)
CONTENTS_FIELD = {"UINT8": "uint_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _bad(detail: str, kind: str = "invalid-inference-request") -> InputError:
    return InputError(kind, detail)


def parameters(values: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    """A ``map<string, InferParameter>`` as plain values (bool, int, str or float)."""
    plain: dict[str, object] = {}
    for key, value in values.items():
        which = value.WhichOneof("parameter_choice")
        plain[key] = getattr(value, which) if which else None
    return plain


def decode_request(
    request: pb.ModelInferRequest, tensors: oip.Tensors, max_horizon: int, truth_spec: oip.TruthSpec | None = None
) -> oip.InferRequest:
    """Parse and check an inference request; every mistake raises an :class:`~service.core.errors.InputError`.
    ``truth_spec``: how a feedback request's truth is shaped (None: feedback is refused)."""
    plain = parameters(request.parameters)
    feedback = oip.feedback_of(plain)
    frames = horizon.from_parameters(plain, max_horizon)
    names = [item.name for item in request.inputs]
    if names != [tensors.input_name]:
        raise _bad(f"the model has one input, {tensors.input_name!r}; the request has {len(names)}: {names}", "unknown-input")
    raw = request.raw_input_contents
    if len(raw) > 1:
        raise _bad(f"raw_input_contents holds {len(raw)} tensors; the request has one input")
    if feedback is not None:
        tensors = oip.truth_tensors(tensors, truth_spec, feedback, list(request.inputs[0].shape))
    clips = _decode_input(request.inputs[0], raw[0] if raw else None, tensors)
    asked = oip.check_outputs([output.name for output in request.outputs], tensors.output_name, feedback)
    return oip.InferRequest(request.id or None, clips, bool(raw), frames, feedback, asked)


def _decode_input(item: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, tensors: oip.Tensors) -> arrays.Clips:
    label = f"input {item.name!r}"
    datatype, shape = item.datatype, list(item.shape)
    if datatype not in oip.ACCEPTED:
        known = "" if datatype in oip.DATATYPES else " (not an OIP datatype)"
        raise Unprocessable("wrong-dtype", f"{label}: datatype {datatype!r}{known} is not accepted; send {oip.ACCEPTED_TEXT}")
    if any(n < 0 for n in shape):
        raise _bad(f"{label}: the shape must be non-negative integers, got {shape}")
    dtype, count = oip.DATATYPES[datatype], math.prod(shape)
    label = f"{label} ({datatype} {shape})"
    present = [field.name for field, _ in item.contents.ListFields()]
    if raw is not None:
        if present:
            raise _bad(f"{label}: values come in raw_input_contents or in contents, not both (got contents.{present[0]} too)")
        need = count * dtype.itemsize
        if len(raw) != need:
            size = f"{count:,} × {dtype.itemsize} = {need:,}"
            raise _bad(f"{label}: raw_input_contents[0] holds {len(raw):,} bytes; the shape needs {size}")
        return arrays.check_array(np.frombuffer(raw, dtype).reshape(shape), tensors.spec, label)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise _bad(f"{label}: {datatype} values travel in raw_input_contents (InferTensorContents has no field for them)")
    if not present:
        raise _bad(f"{label}: no values; send them in raw_input_contents or in contents.{field}")
    if present != [field]:
        raise _bad(f"{label}: {datatype} values belong in contents.{field}, got contents.{', contents.'.join(present)}")
    values = getattr(item.contents, field)
    if len(values) != count:
        raise _bad(f"{label}: contents.{field} holds {len(values):,} values; the shape needs {count:,}", "wrong-shape")
    if datatype == "UINT8":  # carried as uint32
        wide = np.fromiter(values, np.uint32, count)
        if count and wide.max() > 255:
            raise Unprocessable("out-of-range", f"{label} contents.{field} must be integers in 0-255")
        array = wide.astype(np.uint8)
    else:
        array = np.fromiter(values, dtype, count)
    return arrays.check_array(array.reshape(shape), tensors.spec, label)


def encode_response(
    model_name: str, model_version: str, request: oip.InferRequest, prediction: np.ndarray, output_name: str
) -> pb.ModelInferResponse:
    """``prediction`` (B, T', C, H, W) float32 -> the answer, raw bytes when the request sent raw bytes."""
    out = prediction if request.clips.batched else prediction[0]
    return _encode(pb.ModelInferResponse(model_name=model_name, model_version=model_version), request, [(output_name, out)])


def encode_feedback(
    model_name: str, model_version: str, request: oip.InferRequest, scores: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """A feedback request's answer: one FP32 output per score, as over REST (an exact frame's PSNR is inf)."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version)
    response.parameters[oip.FEEDBACK].string_param = request.feedback or ""
    return _encode(response, request, oip.feedback_outputs(request, scores))


def _encode(
    response: pb.ModelInferResponse, request: oip.InferRequest, outputs: list[tuple[str, np.ndarray]]
) -> pb.ModelInferResponse:
    response.id = request.id or ""
    for name, values in outputs:
        data = np.ascontiguousarray(values, dtype=oip.DATATYPES["FP32"])
        tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype="FP32", shape=values.shape)
        if request.binary_output:
            response.raw_output_contents.append(data.tobytes())
        else:
            tensor.contents.fp32_contents.extend(data.ravel().tolist())
        response.outputs.append(tensor)
    return response
