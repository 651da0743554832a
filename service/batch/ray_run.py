"""Batch prediction on a Ray cluster: the local run spread over an actor pool by Ray Data.

The inputs become a dataset of paths; ``map_batches`` with :class:`PredictActor` (one ONNX
Runtime session per actor, the model read once per actor) runs :func:`~service.batch.predict_files`
on each batch of inputs, so reading, checking, batching of clips, skipping finished inputs,
failure records and writing are the local run's own code and the files are identical. Each batch
answers a small report (counts, failures, the score *sums*); the driver adds them up into one
:class:`~service.batch.Summary`, so ``--has-targets`` metrics equal the local run's.

Inputs, ``--out`` and the model must be at paths every node can reach (a shared file system), or
the model at a URI that ``pyarrow.fs`` opens (``s3://``, ``gs://``, ``hdfs://``, ``file://``).
``ray`` is the optional extra ``stlight[ray]``: it is imported inside functions only, so nothing
else in ``service`` needs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from service.batch.inputs import Kind, Source
from service.batch.readers import VideoReading
from service.batch.run import Predictor, Rollout, Summary, predict_files
from service.core.errors import UserError, extra_hint
from service.core.scores import ScoreSums

if TYPE_CHECKING:
    from types import ModuleType

Device = Literal["auto", "cpu", "cuda"]
# seconds to wait for the cluster's address to accept a connection before saying it is unreachable
CONNECT_TIMEOUT_S = 5.0


class RayError(UserError):
    """Ray is missing, the cluster cannot be reached, or the run on it failed; one line."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is.

    ``address``: ``None`` does what ``ray.init()`` does (``$RAY_ADDRESS``, else a cluster started
    on this machine with ``ray start``, else a new one for this run); ``"auto"`` insists on a running
    one; ``host:port`` or ``ray://host:10001`` names one. ``actors``: sessions in the pool (default:
    one per GPU with ``gpus_per_actor``, else one per node). ``threads_per_actor``: ONNX Runtime's
    intra-op threads, also the CPUs each actor reserves (default: the cluster's CPUs shared out
    among the actors, at most one node's). ``inputs_per_task``: inputs handed to an actor at a
    time (default: the clip batch size); clips of those inputs share batches."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None
    inputs_per_task: int | None = None


def import_ray() -> ModuleType:
    """``ray`` (with Ray Data), or a :class:`RayError` saying how to install it."""
    try:
        import ray
        import ray.data  # the `data` part is a separate requirement of the extra
    except ImportError as exc:
        raise RayError(f"--ray needs Ray Data, which is not installed ({exc}): {extra_hint('ray')}") from None
    return ray


# ---------------------------------------------------------------------------------------
# the actors
# ---------------------------------------------------------------------------------------


def fetch_model(model: str, folder: Path) -> Path:
    """A local path for ``model``: itself, or for a URI (``s3://...``, ``file://...``) a copy in
    ``folder``, made once per actor."""
    if "://" not in model:
        return Path(model)
    import pyarrow.fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(model)
        target = folder / (Path(path).name or "model.onnx")
        with filesystem.open_input_stream(path) as source, open(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
    except (OSError, ValueError) as exc:  # pyarrow's errors are OSError / ArrowInvalid (a ValueError)
        raise RayError(f"cannot read the model at {model}: {exc}") from None
    return target


class PredictActor:
    """One ONNX Runtime session (built once, when Ray Data starts the actor) that predicts the
    inputs of each batch it is handed with :func:`predict_files` and answers one report row."""

    def __init__(self, model: str, device: Device, threads: int, horizon: int | None, run: dict[str, Any]) -> None:
        from service.client import LocalClient

        self.folder = tempfile.TemporaryDirectory(prefix="stlight-model-")  # removed with the actor
        client = LocalClient(
            fetch_model(model, Path(self.folder.name)), device=device, batch_size=run["batch_size"], intra_op_threads=threads
        )
        self.predictor: Predictor = client if horizon is None else Rollout(client, horizon)
        self.run = run

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [
            Source(Path(str(path)), cast(Kind, str(kind)), Path(str(base)))
            for path, kind, base in zip(batch["path"], batch["kind"], batch["base"], strict=True)
        ]
        summary = predict_files(sources, self.predictor, progress=False, echo_failures=False, **self.run)
        return {"report": np.array([json.dumps(report_of(summary))])}


def report_of(summary: Summary) -> dict[str, Any]:
    """What an actor sends back for one batch: counts, failures and score sums (no arrays)."""
    scores = {f.name: getattr(summary.scores, f.name) for f in fields(ScoreSums)}
    return {
        "done": summary.done,
        "skipped": summary.skipped,
        "clips": summary.clips,
        "scored_clips": summary.scored_clips,
        "failures": summary.failures,
        "scores": scores,
    }


def add_report(summary: Summary, report: dict[str, Any]) -> None:
    summary.done += report["done"]
    summary.skipped += report["skipped"]
    summary.clips += report["clips"]
    summary.scored_clips += report["scored_clips"]
    summary.failures.extend((str(name), str(reason)) for name, reason in report["failures"])
    for name, value in report["scores"].items():
        setattr(summary.scores, name, getattr(summary.scores, name) + value)


# ---------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------


def check_reachable(address: str) -> None:
    """Fail fast, in one line, when ``host:port`` accepts no connection (``ray.init`` would
    retry for a minute and then print a page)."""
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--ray {address}: expected host:port (the head's GCS port, 6379 by default) or ray://host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayError(f"cannot reach the Ray cluster at {address}: {exc}; is `ray start --head` running there?") from None


def connect(ray: ModuleType, address: str | None) -> bool:
    """Join (or start) a cluster unless this process already has; True when this call did."""
    if ray.is_initialized():
        return False
    if address not in (None, "auto", "local"):
        check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayError(f"cannot join the Ray cluster at {address or 'the default address'}: {first}") from None
    return True


@dataclass(frozen=True)
class PoolShape:
    actors: int
    threads: int


def pool_shape(ray: ModuleType, options: RayOptions) -> PoolShape:
    """Actors and threads per actor from the options, else from the cluster's resources."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes] or [1]
    total = ray.cluster_resources()
    actors = options.actors
    if actors is None:
        if options.gpus_per_actor > 0:
            actors = int(total.get("GPU", 0) // options.gpus_per_actor)
            if actors < 1:
                raise RayError(
                    f"the cluster has {total.get('GPU', 0):g} GPU(s): not enough for one actor of {options.gpus_per_actor:g}"
                )
        else:
            actors = sum(1 for cpus in node_cpus if cpus > 0) or 1
    threads = options.threads_per_actor or max(1, min(max(node_cpus), int(total.get("CPU", 1)) // actors))
    return PoolShape(actors, threads)


def predict_on_ray(
    sources: Sequence[Source],
    model: str | Path,
    *,
    ray_options: RayOptions | None = None,
    device: Device = "auto",
    horizon: int | None = None,
    png: bool = False,
    gif: bool = False,
    video: bool = False,
    reading: VideoReading | None = None,
    overwrite: bool = False,
    has_targets: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    started: Callable[[int, int], None] | None = None,
) -> Summary:
    """:func:`~service.batch.predict_files` on a Ray cluster, with the same outputs and summary.

    ``sources`` come from :func:`~service.batch.discover`; failures name them as given. The model
    is read by each actor (a path every node sees, or a URI). Joins the cluster that
    ``ray_options.address`` names unless this process is already connected (then that connection
    is used and left open); a cluster this call joined or started is left when it returns.
    ``started(actors, threads_per_actor)`` is called once the pool's shape is known. Actors
    run on CPU unless ``ray_options.gpus_per_actor`` reserves GPUs for them (Ray would let an
    actor that reserved none use any GPU of its node, unaccounted)."""
    options = ray_options or RayOptions()
    if options.gpus_per_actor <= 0:  # an actor uses a GPU only when it reserved one, so Ray's accounting holds
        if device == "cuda":
            raise RayError("--device cuda on Ray needs --gpus-per-actor (e.g. 1): an actor runs on a GPU only if it reserves one")
        device = "cpu"
    ray = import_ray()
    joined = connect(ray, options.address)
    try:
        shape = pool_shape(ray, options)
        if started is not None:
            started(shape.actors, shape.threads)
        began = time.perf_counter()
        summary = Summary(inputs=len(sources))
        names = {str(s.path.absolute()): s.name for s in sources}
        run = {
            "png": png,
            "gif": gif,
            "video": video,
            "reading": reading,
            "overwrite": overwrite,
            "has_targets": has_targets,
            "batch_size": batch_size,
        }
        per_task = options.inputs_per_task or batch_size
        with _data_settings(ray, progress):
            for report in _reports(ray, sources, str(model), device, horizon, run, shape, options, per_task):
                add_report(summary, report)
        # in input order (batches finish in any order), named as given (actors saw absolute paths)
        index = {absolute: i for i, absolute in enumerate(names)}
        summary.failures = [
            (names.get(name, name), reason)
            for name, reason in sorted(summary.failures, key=lambda f: index.get(f[0], len(index)))
        ]
    finally:
        if joined:
            ray.shutdown()
    summary.seconds = time.perf_counter() - began
    if summary.scores.frames:
        summary.metrics = summary.scores.result()
    return summary


@contextlib.contextmanager
def _data_settings(ray: ModuleType, progress: bool) -> Iterator[None]:
    """Ray Data's progress bars on or off for this run; without them, none of its start and
    finish log lines either (nor its note that bars are off). The caller's settings come back
    afterwards: a Ray job calling :func:`predict_on_ray` keeps its own."""
    context = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    before = context.enable_progress_bars, context.print_on_execution_start, logger.level
    context.enable_progress_bars, context.print_on_execution_start = progress, False
    if not progress:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = before[0], before[1]
        logger.setLevel(before[2])


def _reports(
    ray: ModuleType,
    sources: Sequence[Source],
    model: str,
    device: Device,
    horizon: int | None,
    run: dict[str, Any],
    shape: PoolShape,
    options: RayOptions,
    per_task: int,
) -> Iterator[dict[str, Any]]:
    """Run the pool over ``sources`` and yield each batch's report as it arrives."""
    if not sources:
        return
    # absolute paths: an actor's working folder is not the driver's
    rows = [{"path": str(s.path.absolute()), "kind": s.kind, "base": str(s.base.absolute())} for s in sources]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / per_task)))
    predicted = dataset.map_batches(
        PredictActor,
        fn_constructor_kwargs={"model": model, "device": device, "threads": shape.threads, "horizon": horizon, "run": run},
        batch_size=per_task,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=shape.actors),
        num_cpus=shape.threads,
        num_gpus=options.gpus_per_actor or None,
    )
    try:
        for row in predicted.iter_rows():
            yield json.loads(str(row["report"]))
    except Exception as exc:  # a task that failed past its retries; what finished stays written
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RayError(f"the Ray run failed: {first} (outputs written so far are kept; rerun to resume)") from None
