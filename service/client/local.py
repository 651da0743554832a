"""``LocalClient``: the remote client's ``predict`` computed in this process by ONNX Runtime.

Checks and decodes clips with the service's own codecs (:mod:`service.codecs`) and rolls out
longer horizons with the same plan (:mod:`service.core.horizon`), so its answers are the
service's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.client.http import horizon_params
from service.codecs import arrays, media
from service.core.card import ClipSpec
from service.core.horizon import rollout
from service.core.runtime import available_cpus
from service.core.video import media_type_of

if TYPE_CHECKING:  # the engine imports onnxruntime: loaded when a LocalClient is made
    from service.inference.engine import Engine


class LocalClient:
    """``LocalClient("model.onnx").predict(clips)``: the same answers as :class:`Client`, computed
    in this process by ONNX Runtime, ``batch_size`` clips per ``session.run``.

    ``device``: auto (CUDA when it really loads, else CPU), cuda (fail unless it loads) or cpu.
    ``intra_op_threads``: 0 uses every available CPU. Raises :class:`service.inference.engine.EngineError`
    for a file that cannot be served, ``ValueError`` for clips of the wrong shape or range."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: Literal["auto", "cuda", "cpu"] = "auto",
        batch_size: int = 8,
        intra_op_threads: int = 0,
    ) -> None:
        from service.inference.engine import Engine

        if batch_size < 1 or intra_op_threads < 0:
            raise ValueError(f"need batch_size >= 1 and intra_op_threads >= 0, got {batch_size} and {intra_op_threads}")
        self.batch_size = batch_size
        self.engine: Engine = Engine(model, device, intra_op_threads or available_cpus(), 1, max_batch_size=batch_size)
        self.spec: ClipSpec = self.engine.spec

    @property
    def provider(self) -> str:
        return self.engine.provider

    def model(self) -> dict[str, Any]:
        """What ``Client.model()`` answers, for the file on disk."""
        return {**self.engine.describe(), "card": self.engine.card.to_dict()}

    def predict(self, frames: np.ndarray, horizon: int | None = None) -> np.ndarray:
        """(T, C, H, W) -> (T', C, H, W) or (N, T, C, H, W) -> (N, T', C, H, W), float32;
        ``horizon`` frames instead of T' by rollout, as :meth:`Client.predict`."""
        clips = arrays.check_array(np.asarray(frames), self.spec, "frames")  # an InputError is a ValueError
        return self._run(clips.frames, clips.batched, horizon)

    def predict_video(
        self,
        video: str | Path | bytes,
        *,
        media_type: str | None = None,
        resize: Literal["none", "fit", "crop"] = "none",
        start: int | None = None,
        horizon: int | None = None,
    ) -> np.ndarray:
        """:meth:`Client.predict_video`, decoded here: a path is read as its suffix says (or
        ``media_type``), bytes as ``media_type`` (default MP4), as the service would."""
        kind = media_type or ("video/mp4" if isinstance(video, bytes) else media_type_of(video))
        data = video if isinstance(video, bytes) else Path(video).read_bytes()
        clips = media.decode_video(data, self.spec, media_type=kind, resize=resize, start=start)
        return self._run(clips.frames, False, horizon)

    def _run(self, inputs: np.ndarray, batched: bool, horizon: int | None) -> np.ndarray:
        """(N, T, C, H, W) float32 in [0, 1] -> (N, T' or horizon, C, H, W), without N unless ``batched``."""
        horizon_params(horizon)  # the same checks as the remote client
        frames = horizon or self.spec.out_frames
        out = np.concatenate(
            [
                rollout(self.engine.run, inputs[s : s + self.batch_size], frames, self.spec.out_frames)
                for s in range(0, len(inputs), self.batch_size)
            ]
        )
        return out if batched else out[0]

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
