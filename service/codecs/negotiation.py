"""Content negotiation: the media types the service reads and writes, the request's type, and
the answer's type chosen from ``Accept`` (q-values and wildcards), checked against what the
prediction is before any inference runs."""

from __future__ import annotations

import math

from service.core import video
from service.core.errors import InputError, NotAcceptable
from service.core.limits import BINARY_ANSWER, MEDIA_ANSWER, TEXT_ANSWER

NPY = "application/x-npy"
JSON = "application/json"
MULTIPART = "multipart/form-data"
ZIP = "application/zip"
GIF = "image/gif"
MP4 = "video/mp4"
WEBM = "video/webm"
VIDEO_TYPES = tuple(video.MEDIA_TYPES)  # request bodies decoded by service.core.video (image/gif among them)
REQUEST_TYPES = (NPY, JSON, MULTIPART, *(t for t in VIDEO_TYPES if t != GIF), GIF)
RESPONSE_TYPES = (NPY, JSON, ZIP, GIF, MP4, WEBM)
# what each answer type holds per predicted value while it is built (the answer budget)
ANSWER_COSTS = {NPY: BINARY_ANSWER, JSON: TEXT_ANSWER, **dict.fromkeys((ZIP, GIF, MP4, WEBM), MEDIA_ANSWER)}
# answers that show the input before the prediction (unless include_input=false)
ANIMATED_TYPES = (GIF, MP4, WEBM)
# the answer's type when the request has no Accept header (or accepts anything): the request's
# family; QuickTime, AVI and Matroska are answered as MP4 (H.264), what every browser and player shows
DEFAULT_ANSWER = {
    NPY: NPY,
    JSON: JSON,
    MULTIPART: ZIP,
    MP4: MP4,
    "video/quicktime": MP4,
    WEBM: WEBM,
    GIF: GIF,
    "video/x-msvideo": MP4,
    "video/x-matroska": MP4,
}


def media_type(content_type: str | None) -> str:
    """``'Application/JSON; charset=utf-8'`` -> ``'application/json'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


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
                    raise InputError(
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
    raise NotAcceptable("not-acceptable", f"cannot answer in {accept!r}; available: {', '.join(RESPONSE_TYPES)}")


def check_answerable(answer_type: str, channels: int, clip_count: int, batched: bool) -> None:
    """Raise 406 before inference when the chosen answer cannot carry this prediction."""
    if answer_type in (ZIP, *ANIMATED_TYPES) and channels not in (1, 3):
        raise NotAcceptable(
            "not-acceptable",
            f"{answer_type} needs 1- or 3-channel frames, this model predicts {channels}; ask for application/x-npy or "
            "application/json",
        )
    if answer_type in ANIMATED_TYPES and batched and clip_count != 1:
        raise NotAcceptable(
            "not-acceptable",
            f"{answer_type} animates one clip, the request has {clip_count}; send (T, C, H, W) or ask for application/zip",
        )
