"""The limits on the work one request may ask for, each defined here once: the server's settings
(``STLIGHT_MAX_VIDEO_FRAMES``, ``STLIGHT_MAX_HORIZON``, ...) take their defaults from these, and
the decoders use them where no setting applies. Going past one raises
:class:`~service.core.errors.LimitExceeded`."""

from __future__ import annotations

from dataclasses import dataclass

MAX_VIDEO_FRAMES = 10_000  # frames decoded from one video (time and memory bound)
# per decoded frame (a video frame, a GIF's canvas): 4096 x 4096 holds 4K UHD (3840 x 2160); one
# such frame is 64 MiB as FFmpeg's RGBA and 48 MiB as RGB, so a few decodes at once stay within
# a 4 GiB container; FFmpeg's own max_pixels is set to it, so a frame larger than its container
# announced is refused before it is allocated
MAX_PIXELS = 4096 * 4096
# pixels decoded for one video, every frame counted at its decoded size: 2**27 is 8 frames of
# the largest size, 64 of 1080p, 145 of 720p, 436 of 640x480 (decoding and converting run at
# 50-100 Mpx/s on one busy core: 1-3 s); it bounds a GIF whose huge canvas changes one pixel a
# frame, each frame costing a full canvas
MAX_DECODED_PIXELS = 1 << 27
DECODE_TIMEOUT_S = 5.0  # wall-clock time one video's decode may take, checked after each frame
MAX_HORIZON = 1000  # frames predicted by rollout for one request (each step is a full model run)
# frames answered by one request, clips x horizon: the answer is held whole while it is encoded,
# so this bounds its memory (4096 frames of 64x64 float32: 64 MiB) whichever protocol asked
MAX_FRAMES_OUT = 4096
# memory an answer may take while it is built, by its format's cost per predicted value (see
# AnswerCost): 128 MiB is 2048 frames of 64x64 as PNGs/GIF/MP4, 682 as JSON; npy stays bounded
# by MAX_FRAMES_OUT first
MAX_ANSWER_MB = 128.0


@dataclass(frozen=True)
class AnswerCost:
    """What one predicted value costs while its answer is built (the answer is held whole): the
    encoder's own copies included, so the budget is tighter for the formats that hold more."""

    name: str
    bytes_per_value: float


# float32 bytes: npy, OIP binary tensors, gRPC raw contents (one copy of the prediction)
BINARY_ANSWER = AnswerCost("npy / binary tensors", 4)
# zip of PNGs, GIF, MP4, WebM: float32 clip, rounding temporaries and uint8 pixels, then the
# encoded frames (PIL images for GIF are all held until the GIF is written)
MEDIA_ANSWER = AnswerCost("images / video", 16)
# JSON (and OIP/gRPC typed lists): tolist() makes a 24-byte Python float plus an 8-byte list
# slot per value, and json.dumps then holds the text (up to ~14 bytes a value)
TEXT_ANSWER = AnswerCost("JSON", 48)


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one video may cost; each is checked as frames arrive, not from the
    container's header alone (a header can say 64x64 and then carry 16000x16000 frames).
    ``timeout_s`` None: no deadline (training reads the user's own files)."""

    max_frames: int = MAX_VIDEO_FRAMES
    max_frame_pixels: int = MAX_PIXELS
    max_decoded_pixels: int = MAX_DECODED_PIXELS
    timeout_s: float | None = DECODE_TIMEOUT_S


DEFAULT_DECODE_LIMITS = DecodeLimits()
