"""``POST /predict``: a clip in any of the accepted bodies (npy, JSON, multipart images, a
video), the predicted frames back in the format ``Accept`` asks for.

decode (:mod:`service.codecs`) -> predict (:mod:`service.inference`) -> encode (:mod:`service.codecs`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from service.codecs import arrays, media, negotiation
from service.codecs.arrays import Clips
from service.core import horizon, video
from service.core.card import ClipSpec
from service.core.errors import InputError, ServeError, Unprocessable, UnsupportedMedia
from service.core.frames import read_npy_layout, shape_text
from service.server.deps import ModelQuery, RepositoryDep, ServiceDep, client_gone
from service.server.openapi import PREDICT_OPENAPI, PREDICT_RESPONSES, problem_doc
from service.server.request_id import annotate, current_request_id
from service.server.settings import ServeSettings
from service.server.workers import INLINE_BYTES, CodecPool

router = APIRouter()


@dataclass(frozen=True)
class VideoOptions:
    """How a video body is cut to one clip (query parameters ``resize`` and ``start``)."""

    resize: video.Resize = "none"
    start: int | None = None

    def check_for(self, request_type: str) -> None:
        """Refuse video options on array and image bodies rather than ignore them."""
        given = [f"{k}={v}" for k, v in (("resize", self.resize if self.resize != "none" else None), ("start", self.start)) if v]
        if given and request_type not in (*negotiation.VIDEO_TYPES, negotiation.MULTIPART):
            raise Unprocessable(
                "invalid-request",
                f"{' and '.join(given)} apply to video bodies ({', '.join(negotiation.VIDEO_TYPES)}), not to {request_type}",
            )


def _empty_body(request_type: str, spec: ClipSpec) -> InputError:
    return InputError(
        "empty-body", f"the request body is empty; expected {request_type} with {shape_text(spec.input_shape)} frames"
    )


async def _read_multipart(request: Request, spec: ClipSpec, settings: ServeSettings, options: VideoOptions) -> Clips:
    """One video in a part named ``video``, or T images in parts named ``frames``."""
    try:
        form = await request.form(max_files=4 * spec.in_frames + 16, max_fields=64, max_part_size=settings.max_body_bytes)
    except ServeError:  # the body limit, while streaming
        raise
    except Exception as exc:  # malformed multipart (missing boundary, broken parts...)
        raise InputError(
            "undecodable-multipart", f"cannot parse the multipart body: {getattr(exc, 'detail', None) or exc}"
        ) from None
    try:
        videos = form.getlist("video")
        if videos:
            if len(videos) > 1 or form.getlist("frames") or not isinstance(videos[0], UploadFile):
                raise Unprocessable(
                    "missing-frames",
                    "send one video file in a part named 'video', or image files in parts named 'frames', not both",
                )
            data = await videos[0].read()
            kind = _part_video_type(videos[0])
            return await _codecs(request).run(_decode_video, data, kind, spec, settings, options)
        options.check_for(negotiation.NPY)  # image parts: no video options
        parts = form.getlist("frames")
        if not parts:
            names = sorted(set(form.keys()))
            got = f"parts named {names}" if names else "no complete part (is the closing boundary missing?)"
            raise Unprocessable(
                "missing-frames", f"expected {spec.in_frames} image files in parts named 'frames', in order; got {got}"
            )
        if any(not isinstance(part, UploadFile) for part in parts):
            raise Unprocessable("missing-frames", "'frames' parts must be image files (with a filename), not text fields")
        files = [(part.filename or "", await part.read()) for part in parts if isinstance(part, UploadFile)]
    finally:
        await form.close()
    return await _codecs(request).run(media.decode_images, files, spec)


async def _read_clips(
    request: Request, request_type: str, spec: ClipSpec, settings: ServeSettings, options: VideoOptions
) -> Clips:
    if request.headers.get("content-length") == "0":
        raise _empty_body(request_type, spec)
    if request_type == negotiation.MULTIPART:
        return await _read_multipart(request, spec, settings, options)
    body = await request.body()
    if not body:
        raise _empty_body(request_type, spec)
    if request_type in negotiation.VIDEO_TYPES:
        return await _codecs(request).run(_decode_video, body, request_type, spec, settings, options)
    if request_type == negotiation.NPY and len(body) <= INLINE_BYTES:
        return arrays.decode_npy(body, spec)
    decode = arrays.decode_npy if request_type == negotiation.NPY else arrays.decode_json
    return await _codecs(request).run(decode, body, spec)


def _codecs(request: Request) -> CodecPool:
    """The bounded pool bodies are decoded in (service.server.workers): full, a 503."""
    return request.app.state.service.codecs


def _part_video_type(part: UploadFile) -> str:
    """A multipart 'video' part is read as its Content-Type says, else as its file name's suffix says."""
    kind = negotiation.media_type(part.content_type)
    if kind in negotiation.VIDEO_TYPES:
        return kind
    suffix = Path(part.filename or "").suffix.lower()
    if suffix in video.SUFFIX_TYPES:
        return video.SUFFIX_TYPES[suffix]
    got = f"Content-Type {kind!r}" if kind else "no Content-Type"
    raise UnsupportedMedia(
        "unsupported-media-type",
        f"the 'video' part has {got} and file name {part.filename!r}; expected one of {', '.join(negotiation.VIDEO_TYPES)}",
    )


def _decode_video(data: bytes, media_type: str, spec: ClipSpec, settings: ServeSettings, options: VideoOptions) -> Clips:
    return media.decode_video(
        data,
        spec,
        media_type=media_type,
        resize=options.resize,
        start=options.start,
        limits=settings.decode_limits(),
    )


HorizonQuery = Annotated[
    int | None,
    Query(
        alias="horizon",
        ge=1,
        description="frames to predict; beyond T' the model is rolled forward on its own predictions (errors compound)",
    ),
]
ResizeQuery = Annotated[
    video.Resize, Query(description="video bodies: none (frames must fit the model), fit (scale), crop (scale, cut the centre)")
]
StartQuery = Annotated[
    int | None, Query(ge=0, description="video bodies: first frame of the T used (default: the last T frames)")
]
IncludeInputQuery = Annotated[bool, Query(description="GIF / MP4 / WebM answers: show the input frames before the prediction")]


@router.post(
    "/predict",
    openapi_extra=PREDICT_OPENAPI,
    responses=PREDICT_RESPONSES,
    response_class=Response,
    summary="Predict the next frames",
)
async def predict(
    request: Request,
    service_state: ServiceDep,
    models: RepositoryDep,
    model: ModelQuery = None,
    horizon_frames: HorizonQuery = None,
    resize: ResizeQuery = "none",
    start: StartQuery = None,
    include_input: IncludeInputQuery = True,
) -> Response:
    """Accepts npy, JSON, multipart images or a video; answers npy, JSON, a zip of PNGs, an
    animated GIF or an MP4 / WebM video."""
    settings = service_state.settings
    async with models.lease(model) as served:  # held until the prediction is made
        request.state.model = served.name
        annotate(model=served.name)  # for the access log line
        engine = served.engine
        request_type = negotiation.media_type(request.headers.get("content-type"))
        if request_type not in negotiation.REQUEST_TYPES:
            got = f"Content-Type {request_type!r}" if request_type else "no Content-Type"
            raise UnsupportedMedia("unsupported-media-type", f"got {got}; send {', '.join(negotiation.REQUEST_TYPES)}")
        options = VideoOptions(resize, start)
        options.check_for(request_type)
        if horizon_frames is not None:
            horizon.check_limit(horizon_frames, settings.max_horizon)
        answer_type = negotiation.choose_answer_type(request.headers.get("accept"), request_type)
        clips = await _read_clips(request, request_type, engine.spec, settings, options)
        annotate(batch=len(clips.frames))
        negotiation.check_answerable(answer_type, engine.spec.channels, len(clips.frames), clips.batched)

        prediction = await served.predict(
            clips.frames,
            horizon_frames,
            lambda: client_gone(request),
            keep_as=current_request_id(),
            answer=negotiation.ANSWER_COSTS[answer_type],
        )  # (B, N, C, H, W)
    if answer_type == negotiation.NPY and prediction.nbytes <= INLINE_BYTES:
        body = media.encode(answer_type, clips, prediction, include_input=include_input)
    else:  # JSON, images and large arrays take longer than a thread hop
        body = await service_state.codecs.run(media.encode, answer_type, clips, prediction, include_input=include_input)
    headers = {"Content-Disposition": 'attachment; filename="prediction.zip"'} if answer_type == negotiation.ZIP else None
    return Response(body, media_type=answer_type, headers=headers)


@router.post(
    "/v1/feedback/{request_id}",
    responses={
        404: problem_doc("No prediction kept under this id (unknown, graded, expired)"),
        422: problem_doc("The truth does not match the prediction's shape"),
    },
    summary="Grade an earlier prediction by its true frames (the same bodies /predict takes)",
)
async def feedback(request: Request, service_state: ServiceDep, models: RepositoryDep, request_id: str) -> dict[str, object]:
    """The body: the true next frames of the clip(s) predicted under ``request_id`` (its
    ``X-Request-ID``), all of them or the first k; answers per-frame MSE, MAE and PSNR."""
    kept = models.answers.get(request_id)
    request.state.model = kept.model
    annotate(model=kept.model)
    request_type = negotiation.media_type(request.headers.get("content-type"))
    if request_type not in negotiation.REQUEST_TYPES:
        got = f"Content-Type {request_type!r}" if request_type else "no Content-Type"
        raise UnsupportedMedia("unsupported-media-type", f"got {got}; send {', '.join(negotiation.REQUEST_TYPES)}")
    frames = None
    if request_type == negotiation.NPY:  # partial truth: the first k frames, as many as the array holds
        frames = _npy_frames(await request.body())
    truth = await _read_clips(request, request_type, kept.truth_spec(frames), service_state.settings, VideoOptions())
    # ~13 ms for a 10-frame 64x64 clip (SSIM's filters): off the event loop, like decoding
    graded = await service_state.codecs.run(models.answers.grade, request_id, truth.frames)
    return graded.document()


def _npy_frames(body: bytes) -> int | None:
    """T of a (T, C, H, W) or (B, T, C, H, W) .npy body, else None (the decoder then names
    what was expected)."""
    try:
        shape, _, _ = read_npy_layout(io.BytesIO(body))
    except ValueError:
        return None
    return shape[-4] if len(shape) in (4, 5) else None
