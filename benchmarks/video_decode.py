"""What video costs next to the model: decoding a clip from each container, encoding a video
answer, and a horizon by rollout, all against one model run, side by side in one process.

    python benchmarks/video_decode.py                  # the shipped default model, CPU
    python benchmarks/video_decode.py --model mine.onnx --repeats 20 --threads 2

Clips are Moving-MNIST-like (bouncing squares, so it needs no data files) at the model's size and
at 4x it (with resize=crop). Each row is the median of ``--repeats`` timed runs after one
warm-up; ``x model run`` divides by one ``Engine.run`` of a single clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import median_ms

from service.client import LocalClient
from service.codecs import media
from service.core import video
from service.core.assets import DEFAULT_MODEL


def bouncing(frames: int, size: int, channels: int) -> np.ndarray:
    """(N, C, H, W) uint8: a bright square bouncing around a dark frame."""
    clip = np.zeros((frames, channels, size, size), np.uint8)
    side, y, x, dy, dx = size // 4, 0, size // 3, max(1, size // 16), max(1, size // 21)
    for t in range(frames):
        clip[t, :, y : y + side, x : x + side] = 230
        y, x = y + dy, x + dx
        if not 0 <= y <= size - side:
            dy, y = -dy, min(max(y, 0), size - side)
        if not 0 <= x <= size - side:
            dx, x = -dx, min(max(x, 0), size - side)
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX file (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per row (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all CPUs)")
    args = parser.parse_args()

    client = LocalClient(args.model, device="cpu", batch_size=1, intra_op_threads=args.threads)
    spec = client.spec
    need = spec.in_frames + spec.out_frames
    clip = bouncing(need, spec.height, spec.channels)
    inputs = clip[None, : spec.in_frames].astype(np.float32) / 255
    model_ms = median_ms(lambda: client.engine.run(inputs), args.repeats)

    rows: list[tuple[str, float]] = []
    for container in video.CONTAINERS:
        data = video.encode_video(clip, 10, container)
        rows.append(
            (
                f"decode last T of {need} frames, {container}, {spec.width}x{spec.height}",
                median_ms(
                    lambda data=data, kind=video.CONTAINER_TYPES[container]: media.decode_video(data, spec, media_type=kind),
                    args.repeats,
                ),
            )
        )
    big = video.encode_video(bouncing(need, 4 * spec.height, spec.channels), 10, "mp4")
    rows.append(
        (
            f"decode + resize=crop, mp4, {4 * spec.width}x{4 * spec.height}",
            median_ms(lambda: media.decode_video(big, spec, media_type="video/mp4", resize="crop"), args.repeats),
        )
    )
    shown = clip  # input then prediction: T + T' frames
    for container in ("mp4", "webm"):
        rows.append(
            (
                f"encode answer ({need} frames), {container}",
                median_ms(lambda c=container: video.encode_video(shown, 10, c), args.repeats),
            )
        )
    for horizon in (spec.out_frames, 2 * spec.out_frames + spec.out_frames // 2, 10 * spec.out_frames):
        rows.append(
            (
                f"predict horizon={horizon} (LocalClient)",
                median_ms(lambda h=horizon: client.predict(clip[: spec.in_frames], horizon=h), args.repeats),
            )
        )

    def by_hand(steps: int) -> None:  # the same runs without service.core.horizon: its overhead is the difference
        window = inputs
        for _ in range(steps):
            window = np.concatenate([window, client.engine.run(window)], axis=1)[:, -spec.in_frames :]

    steps = -(-(2 * spec.out_frames + spec.out_frames // 2) // spec.out_frames)
    rows.append((f"{steps} model runs fed back by hand (Engine.run)", median_ms(lambda: by_hand(steps), args.repeats)))

    print(f"model {args.model.name}: T={spec.in_frames} -> T'={spec.out_frames}, {spec.channels}x{spec.height}x{spec.width}")
    print(f"{'':62s} {'ms':>9s} {'x model run':>12s}")
    print(f"{'model run, 1 clip (Engine.run)':62s} {model_ms:9.2f} {1.0:12.2f}")
    for name, ms in rows:
        print(f"{name:62s} {ms:9.2f} {ms / model_ms:12.2f}")


if __name__ == "__main__":
    main()
