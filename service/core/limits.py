"""The limits on the work one request may ask for, each defined here once: the server's settings
(``STLIGHT_MAX_VIDEO_FRAMES``, ``STLIGHT_MAX_HORIZON``) take their defaults from these, and the
decoders use them where no setting applies. Going past one raises
:class:`~service.core.errors.LimitExceeded`."""

from __future__ import annotations

MAX_VIDEO_FRAMES = 10_000  # frames decoded from one video (time and memory bound)
MAX_PIXELS = 8192 * 8192  # per video frame; beyond it one decoded frame alone is too large to hold
MAX_HORIZON = 1000  # frames predicted by rollout for one request (each step is a full model run)
# frames answered by one request, clips x horizon: the answer is held whole while it is encoded,
# so this bounds its memory (4096 frames of 64x64 float32: 64 MiB) whichever protocol asked
MAX_FRAMES_OUT = 4096
