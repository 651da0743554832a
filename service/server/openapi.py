"""OpenAPI descriptions of ``POST /predict``'s raw bodies and answers, and of the problem
documents every route may answer with. ``/predict`` reads its body itself (to stop reading at
the size limit), so FastAPI cannot infer these from a model; they are written out here."""

from __future__ import annotations

from typing import Any

from service.codecs import negotiation
from service.server.problems import MEDIA_TYPE as PROBLEM

_CLIP = {"type": "array", "items": {"type": "array"}, "description": "(T, C, H, W) or (B, T, C, H, W) nested lists"}
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One clip (T, C, H, W) or a batch (B, T, C, H, W) of past frames, in one of three formats.",
        "content": {
            negotiation.NPY: {
                "schema": {"type": "string", "format": "binary"},
                "description": "numpy.save of uint8 (0-255) or float16/32/64 (0-1)",
            },
            negotiation.JSON: {
                "schema": {
                    "type": "object",
                    "required": ["frames"],
                    "properties": {
                        "frames": _CLIP,
                        "dtype": {"type": "string", "enum": ["float32", "uint8"], "default": "float32"},
                    },
                }
            },
            negotiation.MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["frames"],
                    "properties": {
                        "frames": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "T image files (PNG, JPEG, ...), in order",
                        },
                        "video": {
                            "type": "string",
                            "format": "binary",
                            "description": "instead of 'frames': one video file (as the video/* bodies)",
                        },
                    },
                }
            },
            **{
                kind: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "a video file: the last T frames are used (or T from ?start=); see ?resize=",
                }
                for kind in negotiation.VIDEO_TYPES
            },
        },
    }
}


def problem_doc(description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {
            k: {"type": t} for k, t in (("type", "string"), ("title", "string"), ("status", "integer"), ("detail", "string"))
        },
    }
    return {"description": description, "content": {PROBLEM: {"schema": schema}}}


PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "The predicted frames (T', C, H, W) or (B, T', C, H, W), in the type chosen by Accept (default: the "
            "request's family)."
        ),
        "content": {
            negotiation.NPY: {"schema": {"type": "string", "format": "binary"}, "description": "float32 .npy"},
            negotiation.JSON: {
                "schema": {
                    "type": "object",
                    "properties": {"frames": _CLIP, "shape": {"type": "array", "items": {"type": "integer"}}},
                }
            },
            negotiation.ZIP: {"schema": {"type": "string", "format": "binary"}, "description": "one PNG per predicted frame"},
            negotiation.GIF: {
                "schema": {"type": "string", "format": "binary"},
                "description": "animated: the input, then the prediction (?include_input=false: the prediction alone)",
            },
            **{
                kind: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "the input, then the prediction (?include_input=false: the prediction alone), "
                    "at the input video's frame rate (10 fps for arrays)",
                }
                for kind in (negotiation.MP4, negotiation.WEBM)
            },
        },
    },
    400: problem_doc("Empty or undecodable body (npy, JSON, image or video; a truncated video)"),
    406: problem_doc("No acceptable answer type"),
    413: problem_doc("Body larger than max_body_mb"),
    415: problem_doc("Unsupported Content-Type"),
    422: problem_doc(
        "Wrong rank, frame count, channels, size, dtype, or non-finite / out-of-range values; a video too long; a horizon too far"
    ),
    503: problem_doc("Not ready yet, or the queue is full (see Retry-After)"),
    504: problem_doc("No answer within request_timeout_s"),
}
