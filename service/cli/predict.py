"""``stlight predict``: flags, then :func:`service.batch.predict_files` with a local or remote
predictor. Imported to build the parser, so onnxruntime and httpx wait for the handler."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.predict_ray import add_ray_arguments, check_ray_args, predict_with_ray
from service.core.errors import UserError
from service.core.limits import MAX_HORIZON

if TYPE_CHECKING:  # imported where used: building the parser must stay light
    from service.batch import Summary
    from service.client import Client, LocalClient

DEFAULT_BATCH = 8
DEFAULT_CONCURRENCY = 4


def add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="predict the next frames of many clips from files (local ONNX Runtime or a running service)",
        description=(
            "Predict every input and write OUT/<stem>.npy (float32, the input's leading shape: (T', C, H, W) "
            "or (N, T', C, H, W)). Inputs: .npy holding one clip (T, C, H, W) or many (N, T, C, H, W), uint8 0-255 "
            "or float 0-1; .npz with an array 'clips'; a folder of frame images (one clip, frames in name order); "
            "animated .gif; video files (.mp4, .webm, .avi, .mkv, .mov, .m4v: their last T frames, or every window "
            "with --windows); folders of these (walked; sub-folders are kept below OUT). Inputs whose outputs exist "
            "are skipped, so an interrupted run resumes. A bad input is reported with the reason and the others "
            "go on; the exit status is 1 if any input failed, 2 for a usage mistake."
        ),
    )
    _add_inputs(parser)
    _add_predictor(parser)
    _add_outputs(parser)
    _add_video_and_horizon(parser)
    _add_run_options(parser)
    add_ray_arguments(parser)
    parser.set_defaults(handler=run_predict)


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="files (.npy, .npz, .gif, .mp4, .webm, .avi, .mkv, .mov, .m4v) or folders (of frame images, or of inputs)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")


def _add_predictor(parser: argparse.ArgumentParser) -> None:
    """Where the clips are predicted: a local ONNX file or a running service."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="run this ONNX file (from `stlight export`) in this process (default: the model shipped in the package)",
    )
    where.add_argument("--url", metavar="URL", help="send the clips to a running `stlight serve`, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="with --url: the served model to use (GET /v1/models lists them; default: the server's default model)",
    )


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    """Files written beside OUT/<stem>.npy."""
    parser.add_argument(
        "--png",
        action="store_true",
        help="also write each predicted frame as OUT/<stem>/frame_000.png ... (OUT/<stem>/clip_000/... for many clips)",
    )
    parser.add_argument(
        "--gif",
        action="store_true",
        help=(
            "also write an animated GIF of the input frames then the predicted ones: OUT/<stem>.gif "
            "(OUT/<stem>/clip_000.gif ... for many clips)"
        ),
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help=(
            "also write an MP4 (H.264) of the input frames then the predicted ones: OUT/<stem>.mp4 "
            "(OUT/<stem>/clip_000.mp4 ... for many clips), at a video input's frame rate, else 10 fps"
        ),
    )


def _add_video_and_horizon(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("video inputs and horizon")
    group.add_argument(
        "--windows",
        action="store_true",
        help=(
            "video files: predict every window of T frames (T + T' with --has-targets) instead of only the last one; "
            "OUT/<stem>.npy is then (N, T', C, H, W)"
        ),
    )
    group.add_argument(
        "--stride",
        type=int,
        metavar="N",
        help="with --windows: frames between the starts of consecutive windows (default: the window length, no overlap)",
    )
    group.add_argument(
        "--resize",
        choices=("none", "fit", "crop"),
        default="none",
        help=(
            "video files whose frames are not the model's H x W: none (refuse them; the default), fit (scale the whole "
            "frame, stretching if the aspect ratio differs), crop (scale to cover, cut out the centre)"
        ),
    )
    group.add_argument(
        "--horizon",
        type=int,
        metavar="N",
        help=(
            "predict N frames instead of the model's T': beyond T' the model is rolled forward on its own predictions "
            "(errors compound); with --has-targets inputs then hold T + N frames"
        ),
    )
    group.add_argument(
        "--max-horizon",
        type=int,
        default=MAX_HORIZON,
        metavar="N",
        help=(
            f"refuse a --horizon above N (default {MAX_HORIZON}, the service's STLIGHT_MAX_HORIZON default: every "
            "T' frames is a full model run and every frame is kept in memory); raise it to predict further on purpose"
        ),
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Resuming, scoring, batching and the mode-specific options (--concurrency and --api-key for --url,
    --device for local mode)."""
    parser.add_argument(
        "--overwrite", action="store_true", help="predict inputs again even when their outputs exist (default: skip them)"
    )
    parser.add_argument(
        "--has-targets",
        action="store_true",
        help=(
            "inputs hold T + T' frames (the past, then the true future): predict from the first T and print MSE / MAE / "
            "PSNR (OpenSTL definitions) against the last T'"
        ),
    )
    parser.add_argument(
        "--report-online",
        action="store_true",
        help=(
            "with --url and --has-targets: post each batch's true frames to the service right after its prediction "
            "(POST /v1/feedback/{request id}), so the service grades its own answers; prints the scores it sent back "
            "(MSE / MAE / PSNR / SSIM, to compare with the metrics line) and its figures for the model"
        ),
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"clips per session run or request; clips of several inputs share batches (default {DEFAULT_BATCH})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help=(
            f"with --url: requests in flight at once (default {DEFAULT_CONCURRENCY}); 502/503 answers and connection errors "
            "are retried with backoff"
        ),
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="local mode: auto (CUDA when it really loads, else CPU; the default), cpu, or cuda (fail unless CUDA loads)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="with --url: the key of a service started with API keys, sent as 'Authorization: Bearer KEY' "
        "(default: $STLIGHT_API_KEY, which other users of this host cannot read from the process list)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")


def _check_args(args: argparse.Namespace) -> None:
    check_ray_args(args)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.concurrency is not None and args.concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {args.concurrency}")
    _check_mode(args)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    if args.stride is not None and not args.windows:
        raise UserError("--stride applies to --windows (every window of a video file); add --windows or drop --stride")
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride must be at least 1, got {args.stride}")
    if args.horizon is not None and args.horizon < 1:
        raise UserError(f"--horizon must be at least 1, got {args.horizon}")
    if args.horizon is not None and args.horizon > args.max_horizon:
        raise UserError(
            f"--horizon {args.horizon} is beyond the limit of {args.max_horizon} frames (the service's default too: each "
            f"T' frames is one model run per clip, and every frame is kept); add --max-horizon {args.horizon} to go on"
        )


def _check_mode(args: argparse.Namespace) -> None:
    """Options that belong to one mode only: --url (a running service) or local (--model)."""
    if args.report_online and (args.url is None or not args.has_targets):
        raise UserError(
            "--report-online sends the true frames to the service that predicted them: it needs --url and --has-targets"
        )
    if args.url is not None:
        if args.device is not None:
            raise UserError(
                "--device applies to local mode (--model); the service at --url chose its device when it started (stlight "
                "serve --device)"
            )
        if not args.url.startswith(("http://", "https://")):
            raise UserError(f"--url must start with http:// or https://, got {args.url!r}")
    elif args.model_name is not None:
        raise UserError("--model-name picks a model of the service at --url; in local mode, --model PATH names the file")
    elif args.concurrency is not None:
        raise UserError(
            "--concurrency applies to --url; local mode runs one batch at a time on every CPU core (use --batch-size)"
        )
    elif args.api_key is not None:
        raise UserError("--api-key applies to --url; local mode (--model) runs the file in this process")


def _local(args: argparse.Namespace) -> LocalClient:
    from service.client import LocalClient
    from service.core.assets import DEFAULT_MODEL
    from service.inference.engine import CPU, CUDA, EngineError

    model = args.model
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise UserError(
                f"no model given and no default model is shipped ({DEFAULT_MODEL} is missing); pass --model PATH.onnx or "
                "--url URL"
            )
        model = DEFAULT_MODEL
    import onnxruntime as ort

    try:
        client = LocalClient(model, device=args.device or "auto", batch_size=args.batch_size)
    except EngineError as exc:
        raise UserError(str(exc)) from None
    if (args.device or "auto") == "auto" and client.provider == CPU and CUDA in ort.get_available_providers():
        print("stlight predict: CUDA did not load; running on CPU", file=sys.stderr)
    return client


def _remote(args: argparse.Namespace) -> Client:
    from service.client import Client, ServiceError

    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    client = Client(args.url, model=args.model_name, batch_size=args.batch_size, concurrency=concurrency, api_key=args.api_key)
    try:
        client.spec  # noqa: B018 - asks /v1/model once, with retries: a wrong URL fails here, as one line
    except ServiceError as exc:
        client.close()
        hint = " (pass --api-key or set STLIGHT_API_KEY)" if exc.status == 401 else ""
        raise UserError(f"cannot use the service at {args.url}: {exc}{hint}") from None
    except (KeyError, TypeError, ValueError) as exc:
        client.close()
        raise UserError(
            f"{args.url}/v1/model did not describe a model ({type(exc).__name__}: {exc}); is it `stlight serve`?"
        ) from None
    return client


def run_predict(args: argparse.Namespace) -> int:
    _check_args(args)
    from service.batch import OnlineReport, Rollout, VideoReading, discover, predict_files

    out = args.out
    sources, failures = discover(args.inputs, out)
    if not sources and not failures:
        raise UserError("no inputs found")
    if args.ray is not None:
        for name, reason in failures:
            print(f"stlight predict: {name}: {reason}", file=sys.stderr)
        return _report(predict_with_ray(args, sources), failures, [])
    predictor: Client | LocalClient
    online = None
    if args.url:
        predictor = remote = _remote(args)
        where = args.url
        online = OnlineReport(remote, args.horizon) if args.report_online else None
    else:
        predictor = local = _local(args)
        where = f"{local.engine.path} on {local.provider}"
    server_figures: list[str] = []
    try:
        if (args.png or args.gif or args.video) and predictor.spec.channels not in (1, 3):
            raise UserError(f"--png/--gif/--video need 1- or 3-channel frames; this model predicts {predictor.spec.channels}")
        for name, reason in failures:
            print(f"stlight predict: {name}: {reason}", file=sys.stderr)
        out.mkdir(parents=True, exist_ok=True)
        print(f"stlight predict: {len(sources)} input(s) -> {out} with {where}", file=sys.stderr)
        summary = predict_files(
            sources,
            predictor if args.horizon is None else Rollout(predictor, args.horizon),
            png=args.png,
            gif=args.gif,
            video=args.video,
            reading=VideoReading(windows=args.windows, stride=args.stride, resize=args.resize),
            overwrite=args.overwrite,
            has_targets=args.has_targets,
            batch_size=args.batch_size,
            concurrency=args.concurrency or DEFAULT_CONCURRENCY if args.url else 1,
            progress=not args.no_progress,
            online=online,
        )
        if online is not None:
            server_figures = _server_figures(predictor)
    finally:
        predictor.close()
    return _report(summary, failures, server_figures)


def _report(summary: Summary, failures: list[tuple[str, str]], extra: list[str]) -> int:
    """Print the summary (discovery's failures first) and ``extra`` lines; the exit status."""
    summary.failures[:0] = failures
    summary.inputs += len(failures)
    for line in [*summary.lines(), *extra]:
        print(line)
    if summary.failures:
        print(f"failed ({len(summary.failures)}):")
        for name, reason in summary.failures:
            print(f"  {name}: {reason}")
    return 1 if summary.failures else 0


def _server_figures(client: Client | LocalClient) -> list[str]:
    """The service's own figures for the model after the run (every client's answers since it
    started, so they match this run's only on a server nobody else grades on)."""
    from service.client import Client, ServiceError

    if not isinstance(client, Client):
        return []
    try:
        info = client.model()
    except ServiceError as exc:
        return [f"online: the service's figures are not available ({exc})"]
    online, name = info.get("online") or {}, f"{info.get('name')} version {info.get('version')}"
    steps = online.get("steps") or []
    line = f"online (the service's figures for {name}, since it started): {online.get('graded', 0)} answer(s) graded, "
    line += f"{online.get('expired', 0)} expired"
    if steps:
        last = steps[-1]
        psnr = "inf" if last["psnr"] is None else f"{last['psnr']:.4f}"  # null: an exact frame was graded
        line += f"; step {last['step']}: MSE {last['mse']:.4f}  PSNR {psnr} dB  SSIM {last['ssim']:.4f}"
    return [line]
