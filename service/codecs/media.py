"""Images and videos in and out: multipart image frames and video files -> clips, predictions
-> a zip of PNGs, an animated GIF, MP4 or WebM; :func:`encode` picks the encoder of an answer
type. Knows nothing of ONNX Runtime or HTTP frameworks."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.codecs.arrays import Clips, check_array, encode_json, encode_npy
from service.codecs.negotiation import GIF, JSON, MP4, NPY, WEBM, ZIP, check_answerable
from service.core import video
from service.core.card import ClipSpec
from service.core.errors import InputError, ServeError, Unprocessable, UnsupportedMedia
from service.core.frames import IMAGE_FORMATS, IMAGE_MODES, image_error, image_pixels, to_image, to_uint8
from service.core.limits import DEFAULT_DECODE_LIMITS, DecodeLimits

GIF_FRAME_MS = 200


def decode_images(files: Sequence[tuple[str, bytes]], spec: ClipSpec) -> Clips:
    """One clip from image files in order (multipart ``frames`` parts); converted to grey (C=1)
    or RGB (C=3). Other channel counts have no image form: send npy or JSON."""
    if not files:
        raise Unprocessable(
            "missing-frames", f"multipart body has no 'frames' file parts; expected {spec.in_frames} images, in order"
        )
    mode = IMAGE_MODES.get(spec.channels)
    if mode is None:
        raise UnsupportedMedia(
            "unsupported-media-type",
            f"this model takes {spec.channels}-channel frames, which images cannot carry; send application/x-npy or "
            "application/json",
        )
    if len(files) != spec.in_frames:
        raise Unprocessable("wrong-frame-count", f"expected {spec.in_frames} 'frames' images, got {len(files)}")
    frames = []
    for index, (name, data) in enumerate(files):
        label = f"frame {index} ({name!r})" if name else f"frame {index}"
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                if image.size != (spec.width, spec.height):  # checked before decoding pixels: no decompression bombs
                    raise Unprocessable(
                        "wrong-size",
                        f"{label}: expected {spec.width}x{spec.height} (W x H) pixels, got {image.size[0]}x{image.size[1]}",
                    )
                # only the first frame would be used: refuse rather than lose the rest. is_animated looks
                # for a second frame only (n_frames walks every frame: seconds for 1.5 M of them)
                if getattr(image, "is_animated", False):
                    raise Unprocessable(
                        "animated-image",
                        f"{label}: expected one still image per 'frames' part, got an animation (more than one frame); "
                        "send each frame as its own part",
                    )
                image.load()
                frames.append(_pixels(image, mode, label))
        except ServeError:  # ours, from the checks above (a ValueError too)
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(
                "undecodable-image",
                f"{label}: not a readable image ({image_error(exc, data)}); expected {', '.join(IMAGE_FORMATS)}",
            ) from None
    clip = np.stack(frames)  # (T, H, W) or (T, H, W, 3)
    clip = clip[:, None] if clip.ndim == 3 else clip.transpose(0, 3, 1, 2)  # (T, C, H, W)
    return check_array(clip, spec, "images")


def decode_video(
    data: bytes,
    spec: ClipSpec,
    *,
    media_type: str,
    resize: video.Resize = "none",
    start: int | None = None,
    limits: DecodeLimits = DEFAULT_DECODE_LIMITS,
) -> Clips:
    """One clip of T frames from a video file's bytes, read as ``media_type`` (one of
    :data:`~service.codecs.negotiation.VIDEO_TYPES`) and nothing else: the last T, or T from frame
    ``start``. Colour video is converted to grey for a 1-channel model."""
    try:
        clip = video.read_video(
            data,
            media_type=media_type,
            channels=spec.channels,
            height=spec.height,
            width=spec.width,
            resize=resize,
            count=spec.in_frames,
            start=start,
            limits=limits,
        )
    except InputError as exc:  # the same error, its message saying where
        raise type(exc)(exc.kind, f"video: {exc.detail}", **exc.extra) from None
    checked = check_array(clip.frames, spec, "video")
    return Clips(checked.frames, batched=False, fps=clip.fps)


def _pixels(image: Image.Image, mode: str, label: str) -> np.ndarray:
    try:
        return image_pixels(image, mode)
    except ValueError as exc:  # a 32-bit image: its range cannot be known
        raise Unprocessable(
            "wrong-dtype", f"{label}: {exc}; send 8/16-bit images, or the values in [0, 1] as application/x-npy"
        ) from None


def encode_zip(prediction: np.ndarray, batched: bool) -> bytes:
    """One PNG per predicted frame: ``frame_000.png`` ... or ``clip_000/frame_000.png`` for a batch."""
    clips = prediction if batched else prediction[None]  # (B, T', C, H, W)
    check_answerable(ZIP, clips.shape[2], len(clips), batched)
    pixels = to_uint8(clips)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # PNG is compressed already
        for b, clip in enumerate(pixels):
            for t, frame in enumerate(clip):
                png = io.BytesIO()
                to_image(frame).save(png, format="PNG")
                name = f"clip_{b:03d}/frame_{t:03d}.png" if batched else f"frame_{t:03d}.png"
                archive.writestr(name, png.getvalue())
    return buffer.getvalue()


def _shown(inputs: np.ndarray, prediction: np.ndarray, include_input: bool) -> np.ndarray:
    """The frames an animated answer shows: (T + T', C, H, W), or (T', C, H, W) without the input."""
    clip_out = prediction[0] if prediction.ndim == 5 else prediction  # (T', C, H, W)
    if not include_input:
        return clip_out
    clip_in = inputs[0] if inputs.ndim == 5 else inputs  # (T, C, H, W)
    return np.concatenate([clip_in, clip_out])


def encode_gif(
    inputs: np.ndarray, prediction: np.ndarray, batched: bool, *, include_input: bool = True, fps: float | None = None
) -> bytes:
    """Animated GIF of one clip: the input frames, then the predicted ones (looping); at a
    video's frame rate, else GIF_FRAME_MS per frame."""
    check_answerable(GIF, prediction.shape[-3], len(prediction) if prediction.ndim == 5 else 1, batched)
    images = [to_image(frame) for frame in to_uint8(_shown(inputs, prediction, include_input))]
    duration = round(1000 / fps) if fps else GIF_FRAME_MS
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


def encode_video(
    answer_type: str, inputs: np.ndarray, prediction: np.ndarray, batched: bool, *, include_input: bool, fps: float | None
) -> bytes:
    """MP4 (H.264) or WebM (VP9) of one clip: the input, then the prediction, at the input
    video's frame rate (video.DEFAULT_FPS for arrays and images)."""
    check_answerable(answer_type, prediction.shape[-3], len(prediction) if prediction.ndim == 5 else 1, batched)
    container = "mp4" if answer_type == MP4 else "webm"
    return video.encode_video(to_uint8(_shown(inputs, prediction, include_input)), fps or video.DEFAULT_FPS, container)


def encode(answer_type: str, clips: Clips, prediction: np.ndarray, *, include_input: bool = True) -> bytes:
    """``prediction`` is (B, T', C, H, W); the answer drops B when the request had no batch axis.
    ``include_input``: animated answers (GIF, MP4, WebM) show the input frames first."""
    out = prediction if clips.batched else prediction[0]
    if answer_type == NPY:
        return encode_npy(out)
    if answer_type == JSON:
        return encode_json(out)
    if answer_type == ZIP:
        return encode_zip(out, clips.batched)
    if answer_type == GIF:
        return encode_gif(clips.frames, prediction, clips.batched, include_input=include_input, fps=clips.fps)
    if answer_type in (MP4, WEBM):
        return encode_video(answer_type, clips.frames, prediction, clips.batched, include_input=include_input, fps=clips.fps)
    raise ValueError(f"unknown answer type {answer_type!r}")  # pragma: no cover - choose_answer_type prevents it
