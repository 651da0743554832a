"""``stlight predict --ray``: the flags of a run on a Ray cluster and the run itself
(:func:`service.batch.ray_run.predict_on_ray`). Ray is imported only when the run starts."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from service.core.errors import UserError

if TYPE_CHECKING:
    from service.batch import Source, Summary


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "on a Ray cluster (needs the ray extra; inputs, --out and --model at paths every node can reach)"
    )
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=(
            "predict on a Ray cluster: an actor pool of ONNX Runtime sessions, each taking a few inputs at a time and "
            "writing their outputs as the local run does. ADDRESS: host:port of the head (`ray start --head` prints it), "
            "ray://host:10001, or auto; alone, $RAY_ADDRESS, else a cluster running on this machine, else a new one"
        ),
    )
    group.add_argument(
        "--actors",
        type=int,
        metavar="N",
        help="with --ray: ONNX Runtime sessions in the pool (default: one per GPU with --gpus-per-actor, else one per node)",
    )
    group.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        metavar="G",
        help=(
            "with --ray: GPUs each actor reserves, e.g. 1, or 0.5 for two sessions per GPU; --device then applies to them "
            "(default 0: actors run on CPU, whatever --device says, as Ray shares out only reserved GPUs)"
        ),
    )
    group.add_argument(
        "--threads-per-actor",
        type=int,
        metavar="N",
        help=(
            "with --ray: ONNX Runtime threads of each actor, also the CPUs it reserves (default: the cluster's CPUs "
            "shared among the actors, at most one node's)"
        ),
    )
    group.add_argument(
        "--inputs-per-task",
        type=int,
        metavar="N",
        help="with --ray: inputs an actor takes at a time; their clips share batches of --batch-size (default: --batch-size)",
    )


def check_ray_args(args: argparse.Namespace) -> None:
    """Ray flags need --ray, and --ray excludes what only a local or remote run has."""
    ray_only = {
        "--actors": args.actors is not None,
        "--gpus-per-actor": args.gpus_per_actor != 0.0,
        "--threads-per-actor": args.threads_per_actor is not None,
        "--inputs-per-task": args.inputs_per_task is not None,
    }
    if args.ray is None:
        given = [flag for flag, on in ray_only.items() if on]
        if given:
            raise UserError(f"{given[0]} applies to --ray (a run on a Ray cluster); add --ray [ADDRESS] or drop it")
        return
    for flag, value in (("--url", args.url), ("--concurrency", args.concurrency), ("--api-key", args.api_key)):
        if value is not None:
            raise UserError(f"{flag} applies to a running service; --ray runs the model file (--model) in Ray actors")
    for flag, value in (
        ("--actors", args.actors),
        ("--threads-per-actor", args.threads_per_actor),
        ("--inputs-per-task", args.inputs_per_task),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.gpus_per_actor < 0:
        raise UserError(f"--gpus-per-actor must be 0 or more, got {args.gpus_per_actor:g}")


def predict_with_ray(args: argparse.Namespace, sources: list[Source]) -> Summary:
    """Check the model here (a broken file is one line, not a failed actor per node), then run."""
    from service.batch import VideoReading
    from service.batch.ray_run import RayOptions, fetch_model, import_ray, predict_on_ray
    from service.client import LocalClient
    from service.core.assets import DEFAULT_MODEL
    from service.inference.engine import EngineError

    import_ray()  # before anything slow: where Ray is missing, say so at once

    model = str(args.model.absolute() if args.model is not None else DEFAULT_MODEL)
    try:
        with tempfile.TemporaryDirectory(prefix="stlight-model-") as folder:
            spec = LocalClient(fetch_model(model, Path(folder)), device="cpu", intra_op_threads=1).spec
    except EngineError as exc:
        raise UserError(str(exc)) from None
    if (args.png or args.gif or args.video) and spec.channels not in (1, 3):
        raise UserError(f"--png/--gif/--video need 1- or 3-channel frames; this model predicts {spec.channels}")
    options = RayOptions(args.ray or None, args.actors, args.gpus_per_actor, args.threads_per_actor, args.inputs_per_task)
    args.out.mkdir(parents=True, exist_ok=True)

    def started(actors: int, threads: int) -> None:
        where = f"Ray at {options.address}" if options.address else "Ray"
        pool = f"{actors} actor(s) x {threads} thread(s)"
        print(f"stlight predict: {len(sources)} input(s) -> {args.out} with {model} on {where}: {pool}", file=sys.stderr)

    return predict_on_ray(
        sources,
        model,
        ray_options=options,
        device=args.device or "auto",
        horizon=args.horizon,
        png=args.png,
        gif=args.gif,
        video=args.video,
        reading=VideoReading(windows=args.windows, stride=args.stride, resize=args.resize),
        overwrite=args.overwrite,
        has_targets=args.has_targets,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        started=started,
    )
