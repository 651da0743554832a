"""Open Inference Protocol ("KServe V2") REST routes, with Triton's binary tensor data, model
repository and model configuration extensions — what ``tritonclient.http`` and other OIP clients
call. Specs: kserve ``docs/predict-api/v2/required_api.md``; Triton
``docs/protocol/extension_{binary_data,model_repository,model_configuration}.md``.

Inference goes through the same lease and dynamic batcher as ``/predict``; errors are
``{"error": "..."}`` with the status and message ``/predict`` gives for the same mistake (see
:mod:`service.server.problems`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from service import __version__
from service.codecs import arrays, oip
from service.core.errors import InputError
from service.core.limits import BINARY_ANSWER, TEXT_ANSWER
from service.inference.repository import Caller, Repository, Served, refuse_load_overrides
from service.server.deps import client_gone
from service.server.request_id import annotate, current_field, current_request_id
from service.server.settings import ServeSettings
from service.server.workers import INLINE_BYTES

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])


def repository(request: Request) -> Repository:
    return request.app.state.repository


def settings(request: Request) -> ServeSettings:
    return request.app.state.service.settings


def _error_doc(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Invalid model name"),
    404: _error_doc("Unknown or unloaded model, or unknown version"),
    503: _error_doc("The model failed to load, or is not ready yet (see Retry-After)"),
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "example": "frames"},
        "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 10, 1, 64, 64]},
        "datatype": {"type": "string", "enum": list(oip.ACCEPTED)},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        "data": {"type": "array", "items": {}, "description": "row-major values, flat or nested (without binary_data_size)"},
    },
}
INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "An OIP inference request. Values either in JSON (`data`) or, with the binary tensor data extension, as raw "
            f"little-endian bytes after the JSON, whose length the `{oip.HEADER_LENGTH}` header gives (`0`: the body is "
            "one raw FP32 clip). Outputs come back as binary when `parameters.binary_data_output` (or an output's "
            "`binary_data`) is true. gzip and deflate bodies are accepted (Content-Encoding)."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "binary_data_output": {"type": "boolean"},
                                "horizon": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "description": "frames to predict; past T' the model rolls forward on its own predictions",
                                },
                            },
                        },
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string", "example": "predicted"},
                                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                                },
                            },
                        },
                    },
                }
            },
            oip.OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}, "description": "JSON header, then tensor bytes"},
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            f"`outputs`: `predicted` FP32 (B, T', C, H, W), as JSON `data` or binary after the JSON (`{oip.HEADER_LENGTH}`)"
        ),
        "content": {"application/json": {}, oip.OCTET_STREAM: {}},
    },
    **MODEL_ERRORS,
    400: _error_doc("Undecodable request, wrong input/output name, data size not matching the shape"),
    413: _error_doc("Body larger than max_body_mb"),
    415: _error_doc("Unsupported Content-Encoding"),
    422: _error_doc("Wrong datatype, rank, frame count, channels, size, or non-finite / out-of-range values"),
    504: _error_doc("No answer within request_timeout_s"),
}


# ---------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------


# The protocol's OpenAPI file spells this path `/v2/`, its text `v2`: both answer (no redirect,
# which a client that does not follow redirects would take for an empty answer)
@router.get("", summary="Server metadata: name, version, extensions")
@router.get("/", include_in_schema=False)
async def server_metadata() -> dict[str, Any]:
    return {"name": "stlight", "version": __version__, "extensions": oip.EXTENSIONS}


def _flag_doc(key: str, description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {key: {"type": "boolean"}}, "required": [key]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@router.get(
    "/health/live",
    summary='Liveness: 200 and {"live": true} while the process answers',
    responses={200: _flag_doc("live", "The process answers")},
)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary='Readiness: 200 and {"ready": true} when every loaded model is warm',
    responses={200: _flag_doc("ready", "Every loaded model is warm"), 503: _error_doc("A model is loading or warming up")},
)
async def ready(request: Request) -> dict[str, bool]:
    # not ready: 503 with {"error": ...}, as KServe's server answers (its client raises on it)
    problem = repository(request).not_ready()
    if problem:
        raise problem
    codecs = request.app.state.service.codecs
    if codecs.saturated:  # every decode/encode place taken: new requests would get 503s
        raise codecs.busy_error()
    return {"ready": True}


# ---------------------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------------------


def _served(request: Request, name: str, version: str | None) -> Served:
    served = repository(request).get(name, version)
    request.state.model = served.name  # the metrics' model label: only names that are served
    return served


@router.get("/models/{name}", summary="Model metadata (its highest version)", responses=MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)", responses=MODEL_ERRORS)
async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    served = _served(request, name, version)
    engine = served.engine
    inputs, outputs = oip.Tensors(engine.input_name, engine.output_name, engine.spec).metadata()
    versions = repository(request).versions(name)
    return {"name": name, "versions": versions, "platform": oip.PLATFORM, "inputs": [inputs], "outputs": [outputs]}


_MODEL_READY = {**MODEL_ERRORS, 200: {"description": '{"name": ..., "ready": true}: the model answers inference'}}


@router.get("/models/{name}/ready", summary="Model readiness (its highest version)", responses=_MODEL_READY)
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)", responses=_MODEL_READY)
async def model_ready(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    # not ready: 503 (loading, failed) or 404 (unknown), with {"error": ...}, as KServe answers
    _served(request, name, version).check_ready()
    return {"name": name, "ready": True}


@router.get("/models/{name}/config", summary="Model configuration, as Triton writes it", responses=MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}/config", summary="Model configuration (one version)", responses=MODEL_ERRORS)
async def model_config(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    served = _served(request, name, version)
    engine, options = served.engine, served.options
    return {
        "name": name,
        "platform": oip.PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"all": {}},
        "max_batch_size": options.max_batch_size,
        "input": [
            {"name": engine.input_name, "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": list(engine.spec.input_shape)}
        ],
        "output": [{"name": engine.output_name, "data_type": "TYPE_FP32", "dims": list(engine.spec.output_shape)}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(options.max_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": options.queue_size},
        },
        "instance_group": [{"kind": "KIND_GPU" if engine.provider == "CUDAExecutionProvider" else "KIND_CPU", "count": 1}],
        "default_model_filename": engine.path.name,
        "parameters": {"preset": {"string_value": engine.card.preset}, "sha256": {"string_value": engine.sha256}},
    }


@router.post(
    "/models/{name}/infer",
    summary="Inference (the model's highest version)",
    openapi_extra=INFER_OPENAPI,
    responses=INFER_RESPONSES,
    response_class=Response,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference (one version)",
    openapi_extra=INFER_OPENAPI,
    responses=INFER_RESPONSES,
    response_class=Response,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    async with repository(request).lease(name, version) as served:
        request.state.model = served.name
        engine = served.engine
        limits = settings(request)
        body = oip.decompress(await request.body(), request.headers.get("content-encoding"), limits.max_body_bytes)
        tensors = oip.Tensors(engine.input_name, engine.output_name, engine.spec)
        truth_spec = served.truth_spec(any_version=version is None)
        # binary tensors up to INLINE_BYTES are parsed on the event loop (a header and a view of the
        # bytes): well-formed binary clients never wait for the bounded codec pool, whatever fills it
        codecs = request.app.state.service.codecs
        binary_length = request.headers.get(oip.HEADER_LENGTH)
        decode = (oip.decode_request, body, binary_length, tensors, limits.max_horizon, truth_spec)
        inline = binary_length is not None and len(body) <= INLINE_BYTES
        parsed = decode[0](*decode[1:]) if inline else await codecs.run(*decode)
        annotate(model=served.name, batch=len(parsed.clips.frames))  # for the access log line
        if parsed.feedback is not None:  # the clips are the truth of an earlier answer: grade it
            graded = await served.grade(parsed.feedback, parsed.clips.frames, version is None, codecs.run)
            content, headers = oip.encode_feedback(graded.model, graded.version, parsed, graded.scores)
            return Response(content, headers=headers)

        prediction = await served.predict(
            parsed.clips.frames,
            parsed.horizon,
            lambda: client_gone(request),
            keep_as=current_request_id(),
            answer=BINARY_ANSWER if parsed.binary_output else TEXT_ANSWER,
        )
        answer = (served.name, served.version, parsed, prediction, engine.output_name)
        if parsed.binary_output and prediction.nbytes <= INLINE_BYTES:  # one copy of the bytes
            content, headers = oip.encode_response(*answer)
        else:
            content, headers = await codecs.run(oip.encode_response, *answer)
    return Response(content, headers=headers)


# ---------------------------------------------------------------------------------------
# the model repository extension
# ---------------------------------------------------------------------------------------


def caller(request: Request) -> Caller:
    """Who asks for a change of what is served: the key's name (set by the key check), the address."""
    client = f"{request.client.host}:{request.client.port}" if request.client else ""
    return Caller(key=current_field("key") or "", client=client, protocol="http")


async def _json_body(request: Request, what: str) -> dict[str, Any]:
    """An optional JSON object body (these routes accept an empty one)."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InputError("undecodable-json", f"the {what} request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InputError("invalid-request", f"the {what} request must be a JSON object, got {arrays.json_type(document)}")
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InputError("invalid-request", f'"parameters" must be a JSON object, got {json.dumps(parameters)[:50]}')
    return document


@router.post(
    "/repository/index",
    summary="Every model the server knows of, loaded or not, with its state",
    responses={400: _error_doc("Body is not a JSON object")},
)
async def repository_index(request: Request) -> list[dict[str, str]]:
    document = await _json_body(request, "index")
    ready_only = document.get("ready", False)
    if not isinstance(ready_only, bool):
        raise InputError("invalid-request", f'"ready" must be true or false, got {json.dumps(ready_only)[:50]}')
    return repository(request).index(ready_only)


@router.post(
    "/repository/models/{name}/load",
    summary="Load a model, or reload it from its files (in-flight requests finish on the old one)",
    response_class=Response,
    responses={
        400: _error_doc("Invalid name, a file that does not load, or unsupported load parameters"),
        404: _error_doc("No such model in the repository"),
    },
)
async def load_model(request: Request, name: str) -> Response:
    refuse_load_overrides((await _json_body(request, "load")).get("parameters", {}))
    await repository(request).load(name, caller(request))
    return Response(status_code=200)


@router.post(
    "/repository/models/{name}/unload",
    summary="Unload a model (requests in flight finish first; new ones get 404)",
    response_class=Response,
    responses={400: _error_doc("Invalid model name"), 404: _error_doc("No such model")},
)
async def unload_model(request: Request, name: str) -> Response:
    await _json_body(request, "unload")  # unload_dependents: there are no ensembles, so no dependents
    await repository(request).unload(name, caller(request))
    return Response(status_code=200)
