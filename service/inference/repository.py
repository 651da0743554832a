"""The models one server serves: found on disk, loaded, warmed, reloaded and unloaded while serving.

Where models come from:

- ``--model [NAME=]PATH`` (repeatable): that file as version ``1`` of NAME (default: the stem);
- ``--model-repository DIR``: every ``DIR/NAME.onnx`` (version ``1``) and every
  ``DIR/NAME/VERSION/model.onnx`` (Triton's layout; VERSION is a number, the highest is the
  default);
- neither: the model shipped in the package, as ``default``.

Each loaded version has its own :class:`~service.inference.engine.Engine` and
:class:`~service.inference.batching.Batcher`. A request holds a *lease* on the version it resolved to; a
reload swaps the serving table only once the new version is warm, and an unload or a replaced
version stops its batcher only after its leases are returned, so requests in flight finish on
the session they started on and nothing accepted is lost. A model name from a request is
checked against :data:`NAME_PATTERN` (no separators, no leading dot) before it is joined to DIR,
so it never names a path outside it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.core import horizon
from service.core.assets import DEFAULT_MODEL
from service.core.card import ClipSpec
from service.core.errors import Forbidden, InputError, NotFound, ServeError, Unavailable, Unprocessable
from service.core.limits import BINARY_ANSWER, AnswerCost
from service.inference.batching import Batcher
from service.inference.engine import CPU, Engine, EngineError
from service.inference.metrics import ModelMetrics, ServiceMetrics
from service.inference.online import AnswerStore, Graded, StepFigures
from service.inference.options import ModelOptions

log = logging.getLogger("stlight.repository")
# one line per change of what is served (or refused attempt): who, which model, from where, the outcome
audit_log = logging.getLogger("stlight.audit")

# Triton's model names allow more, but these are the ones that are safe as one path component on
# every file system; a leading dot would allow "." and "..".
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
FILE_NAME = "model.onnx"  # Triton's default_model_filename for the onnxruntime backend
DEFAULT_NAME = "default"
BUILTIN = "builtin"  # as a --model PATH: the model shipped in the package (service/assets/default.onnx)

State = Literal["loading", "warming", "ready", "failed", "unloading"]
Action = Literal["load", "unload", "poll_load", "poll_unload"]
Outcome = Literal["ok", "failed", "refused"]


@dataclass(frozen=True)
class Caller:
    """Who asked for a change of what is served, for the audit line: the name of the API key it
    sent (never the key; empty without keys), its address and protocol."""

    key: str = ""
    client: str = ""
    protocol: str = ""

    def describe(self) -> str:
        if self.protocol == "poll":
            return "the repository poll"
        who = f"key {self.key!r}" if self.key else "no key"
        return f"{who} from {self.client or 'unknown'}" + (f" over {self.protocol}" if self.protocol else "")


POLLER = Caller(protocol="poll")  # changes the folder made (--model-control poll)


def valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the file's stem). A ``=`` inside a path whose part
    before it is not a valid name (``/tmp/a=b.onnx``) keeps the whole string as the path.

    ``builtin`` as the PATH is the model shipped in the package, so it can be served beside your
    own (``--model mine.onnx --model builtin``): named ``default`` unless ``NAME=builtin`` names
    it. A file called ``builtin`` is still reachable as ``./builtin``."""
    name, sep, rest = spec.partition("=")
    if sep and valid_name(name) and rest:
        return name, DEFAULT_MODEL if rest == BUILTIN else Path(rest)
    if spec == BUILTIN:
        return DEFAULT_NAME, DEFAULT_MODEL
    path = Path(spec)
    if not valid_name(path.stem):
        raise EngineError(f"--model {spec}: {path.stem!r} is not a usable model name ({NAME_RULE}); name it with NAME={spec}")
    return path.stem, path


def refuse_load_overrides(parameters: Iterable[str]) -> None:
    """A load request's parameters (REST and gRPC): a config or files sent with it are refused;
    the repository folder is the one source of models."""
    overrides = sorted(key for key in parameters if key == "config" or key.startswith("file:"))
    if overrides:
        raise InputError(
            "unsupported-parameter",
            f"load parameters {overrides} (a config or files sent with the request) are not supported; "
            "put the model in the repository folder and load it by name",
        )


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


# ---------------------------------------------------------------------------------------
# finding models in a folder
# ---------------------------------------------------------------------------------------


def find_versions(root: Path, name: str) -> dict[str, Path]:
    """The versions of NAME in ``root``: ``{version: file}``. Raises :class:`NotFound` when
    there is none, :class:`InputError` when the folder is there but holds no usable version."""
    if not valid_name(name):
        raise InputError("invalid-model-name", f"{name!r} is not a model name ({NAME_RULE})")
    flat, folder = root / f"{name}.onnx", root / name
    if flat.is_file() and folder.is_dir():
        raise InputError(
            "ambiguous-model", f"model {name!r} is both {flat} and the folder {folder}; keep one of them (rename the other)"
        )
    if flat.is_file():
        return {"1": flat}
    if not folder.is_dir():
        raise NotFound(
            "unknown-model",
            f"no model {name!r} in the repository {root}: expected {flat} or {folder}/<version>/{FILE_NAME}",
        )
    versions = {
        child.name: child / FILE_NAME
        for child in folder.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / FILE_NAME).is_file()
    }
    if not versions:
        raise InputError(
            "no-model-versions",
            f"model folder {folder} holds no version: expected {folder}/<version>/{FILE_NAME} with a numeric <version>",
        )
    return versions


Stamp = tuple[int, int, int]  # inode, size, mtime (ns): a file replaced or rewritten has another


def file_stamps(versions: dict[str, Path] | str) -> dict[str, Stamp]:
    """``{version: stamp}`` of a model's files (empty for a folder that holds no usable version),
    so that a poll sees which model changed; a file gone since the scan has no stamp."""
    stamps: dict[str, Stamp] = {}
    for version, path in versions.items() if isinstance(versions, dict) else ():
        try:
            st = path.stat()
        except OSError:
            continue
        stamps[version] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


def scan(root: Path) -> dict[str, dict[str, Path] | str]:
    """Every model in ``root``: its versions, or why it cannot be served (by name)."""
    names: set[str] = set()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".onnx":
            names.add(entry.stem)
        elif entry.is_dir():
            names.add(entry.name)
    found: dict[str, dict[str, Path] | str] = {}
    for name in sorted(names):
        try:
            found[name] = find_versions(root, name)
        except ServeError as exc:
            found[name] = exc.detail
    return found


# ---------------------------------------------------------------------------------------
# one loaded version
# ---------------------------------------------------------------------------------------


# refusals of a clip's shape (service.codecs.arrays): the answer names the model it was checked against
SHAPE_KINDS = frozenset({"wrong-rank", "wrong-frame-count", "wrong-channels", "wrong-size"})


@dataclass(eq=False)
class Served:
    """One loaded model version: engine, batcher, state, and the requests holding it."""

    name: str
    version: str
    engine: Engine
    options: ModelOptions
    metrics: ModelMetrics
    state: State = "loading"
    error: str = ""
    batcher: Batcher | None = None
    in_flight: int = 0
    # the device is lost (sticky CUDA error), or a --model file failed its warm-up: the process
    # should be replaced; None: keep serving the other models
    on_fatal: Callable[[str], None] | None = None
    # a repository model whose warm-up failed at start: taken out of service, the others serve
    on_warm_failure: Callable[[Served], None] | None = None
    # predictions kept for grading by their true frames (POST /v1/feedback); None: not kept
    answers: AnswerStore | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _warm: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._idle.set()

    def set_state(self, state: State) -> None:
        self.state = state
        self.metrics.ready.set(1 if state == "ready" else 0)

    def start(self) -> None:
        """Start the batcher and warm up in the background (on the inference thread)."""
        s = self.options
        self.batcher = Batcher(
            self.engine.run,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_delay_ms / 1000,
            queue_size=s.queue_size,
            timeout_s=s.request_timeout_s,
            metrics=self.metrics,
            on_fatal=self._fatal,
            name=f"stlight-{self.name}-{self.version}",
        )
        self.batcher.start()
        self.set_state("warming")
        self._warm = asyncio.get_running_loop().create_task(self._warm_up(), name=f"stlight-warm-up-{self.name}-{self.version}")

    async def _warm_up(self) -> None:
        assert self.batcher is not None
        began, s = time.perf_counter(), self.options
        try:
            await self.batcher.run_in_worker(lambda: self.engine.warm_up(s.max_batch_size, s.warmup_runs))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"warm-up failed: {type(exc).__name__}: {exc}"
            if self.on_warm_failure is None and self.on_fatal is not None:  # a --model file
                self.batcher.fail(reason)  # logs once, then self._fatal
                return
            self.error = reason
            self.set_state("failed")
            log.error("model %s version %s: %s", self.name, self.version, reason)
            if self.on_warm_failure is not None:
                self.on_warm_failure(self)
            return
        self.set_state("ready")
        sizes = ", ".join(map(str, self.engine.buckets)) if self.engine.buckets else f"1, 2, 4, ... {s.max_batch_size}"
        log.info(
            "model %s version %s ready on %s: warm-up (%d runs at batch sizes %s) took %.2f s",
            self.name, self.version, self.engine.provider, s.warmup_runs, sizes, time.perf_counter() - began,
        )  # fmt: skip

    def _fatal(self, reason: str) -> None:
        self.error = reason
        self.set_state("failed")
        if self.on_fatal is not None:
            self.on_fatal(reason)

    async def warmed(self) -> None:
        if self._warm is not None:
            await asyncio.gather(self._warm, return_exceptions=True)

    async def predict(
        self,
        clips: np.ndarray,
        frames: int | None = None,
        client_gone: Callable[[], Coroutine[Any, Any, object]] | None = None,
        keep_as: str | None = None,
        answer: AnswerCost = BINARY_ANSWER,
    ) -> np.ndarray:
        """(B, T, C, H, W) -> (B, frames, C, H, W) (default T'): the one inference path of every
        protocol (/predict, /v2, gRPC), so that their clips share the batches. Each rollout step
        queues through this version's batcher like any request; ``client_gone`` completing
        drops the clip (HTTP); a cancelled caller's task drops it too (gRPC). ``keep_as``: the
        request id under which the prediction is kept for grading by its true frames.
        ``answer``: what the caller's answer format holds per value, for the answer budget,
        checked with the frames budget before any model run."""
        spec = self.engine.spec
        out_frames = spec.out_frames
        horizon.check_frames_out(len(clips), frames or out_frames, self.options.max_frames_out)
        frame_values = spec.channels * spec.height * spec.width
        horizon.check_answer_bytes(len(clips), frames or out_frames, frame_values, answer, self.options.max_answer_mb)
        batcher = self.batcher
        assert batcher is not None

        async def step(window: np.ndarray) -> np.ndarray:  # (B, T', C, H, W)
            return await batcher.predict(window, client_gone)

        prediction = await horizon.rollout_async(step, clips, frames or out_frames, out_frames)
        if keep_as is not None and self.answers is not None:
            self.answers.keep(keep_as, self.name, self.version, prediction)
        return prediction

    def truth_spec(self, any_version: bool) -> Callable[[str, int | None], ClipSpec]:
        """How the truth of a prediction this model made is shaped (``(request id, declared
        frames) -> ClipSpec``; NotFound when none is kept): for the protocol decoders, which
        check a feedback body as they check clips. ``any_version``: the request named no
        version, so an answer of any version of this model is graded."""
        version = None if any_version else self.version

        def spec(request_id: str, frames: int | None) -> ClipSpec:
            return self._answers().get(request_id, self.name, version).truth_spec(frames)

        return spec

    async def grade(
        self,
        request_id: str,
        truth: np.ndarray,
        any_version: bool,
        run: Callable[..., Coroutine[Any, Any, Graded]] = asyncio.to_thread,
    ) -> Graded:
        """Grade the prediction kept under ``request_id`` by its true frames (B, k, C, H, W): the
        one feedback path of every protocol. SSIM takes ~13 ms per 10-frame 64x64 clip, so it
        runs in a worker thread, off the event loop: ``run`` (HTTP: the server's bounded codec pool)."""
        version = None if any_version else self.version
        return await run(self._answers().grade, request_id, truth, self.name, version)

    def _answers(self) -> AnswerStore:
        if self.answers is None:
            raise NotFound("unknown-request-id", "this server keeps no predictions for grading")
        return self.answers

    def check_ready(self) -> None:
        if self.state != "ready":
            detail = f"model {self.name!r} version {self.version} is not ready to serve (state: {self.state})"
            detail += f": {self.error}" if self.error else ""
            raise Unavailable("not-ready", detail, retry_after_s=1, state=self.state)

    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def retire(self, grace_s: float, *, keep_metrics: bool = False) -> None:
        """Stop once every request holding this version has finished (at most ``grace_s``: a
        request still holding it then, e.g. a client that never finishes sending its body, gets
        the batcher's 503); ``keep_metrics`` when a reload reuses the labels."""
        self.state = "unloading"
        if self.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
            except asyncio.TimeoutError:
                log.warning("model %s version %s: %d request(s) still in flight after %g s; stopping anyway",
                            self.name, self.version, self.in_flight, grace_s)  # fmt: skip
        if self._warm is not None:
            self._warm.cancel()
            await asyncio.gather(self._warm, return_exceptions=True)
        if self.batcher is not None:
            await self.batcher.stop()
        if not keep_metrics:
            self.metrics.remove()

    def describe(self) -> dict[str, Any]:
        s = self.options
        return {
            **self.engine.describe(),
            "name": self.name,
            "version": self.version,
            "preset": self.engine.card.preset,
            "state": self.state,
            "max_batch_size": s.max_batch_size,
            "max_delay_ms": s.max_delay_ms,
            # accuracy graded by true frames posted to /v1/feedback, per horizon step since start
            "online": self.answers.describe(self.name, self.version) if self.answers is not None else None,
        }


# ---------------------------------------------------------------------------------------
# the repository
# ---------------------------------------------------------------------------------------


class Repository:
    """Every model of one server. Built (and the engines loaded) before the server listens, so a
    missing ``--model`` file is a start-up error; ``start`` (in the event loop) starts batchers
    and warm-ups, ``stop`` drains and stops them."""

    def __init__(self, options: ModelOptions, metrics: ServiceMetrics, *, engine: Engine | None = None) -> None:
        """``engine``: serve this loaded engine as the one ``--model`` (in-process apps)."""
        self.options, self.metrics = options, metrics
        self.root = options.model_repository
        self.explicit: dict[str, Path] = {}  # --model files (or the shipped default): name -> path
        self.serving: dict[str, dict[str, Served]] = {}  # name -> version -> loaded version
        self.failed: dict[str, str] = {}  # name -> why it is not served (load failed, bad folder)
        self.unloaded: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self.on_fatal: Callable[[str], None] | None = None
        self._pending: list[Served] = []  # loaded before the event loop ran; started by start()
        self.answers = AnswerStore(options.online_budget_bytes, options.online_ttl_s, self._publish_online)
        metrics.kept.held = self.answers.held  # a scrape also drops answers past their time-to-live
        metrics.kept.sums = self.answers.step_sums

        if self.root is not None and not self.root.is_dir():
            raise EngineError(f"--model-repository {self.root}: not a folder")
        if options.model_control == "poll" and self.root is None:
            raise EngineError("--model-control poll follows --model-repository DIR: give the folder to poll")
        for spec in options.models:
            name, path = parse_model_spec(spec)
            if name in self.explicit:
                raise EngineError(f"--model: two models are named {name!r}; name them apart with NAME=PATH")
            self.explicit[name] = path
        if engine is not None:
            name = next(iter(self.explicit), engine.path.stem if valid_name(engine.path.stem) else DEFAULT_NAME)
            self.explicit = {name: engine.path}
        elif not self.explicit and self.root is None:
            if not DEFAULT_MODEL.is_file():
                raise EngineError(
                    f"no model given and no default model is shipped ({DEFAULT_MODEL} is missing); "
                    "pass --model PATH.onnx or --model-repository DIR (or set STLIGHT_MODEL)"
                )
            self.explicit[DEFAULT_NAME] = DEFAULT_MODEL
        # --model files must load: the user named each one (a bad one is a start-up error)
        for name, path in self.explicit.items():
            self._pending.append(self._serve(name, "1", engine) if engine else self._load_version(name, "1", path))
        found = scan(self.root) if self.root is not None else {}
        # what the files were when read (before loading: a change during the load is seen as one)
        self.stamps = {name: file_stamps(v) for name, v in found.items()}
        for name, versions in found.items():
            if name in self.explicit:
                raise EngineError(f"--model {name}=... and the repository's model {name!r} share a name; rename one")
            if isinstance(versions, str):
                self.failed[name] = versions
                log.error("model %s: %s", name, versions)
                continue
            try:
                loaded = [self._load_version(name, v, p) for v, p in versions.items()]
                self._pending.extend(loaded)
            except EngineError as exc:  # one bad file does not stop the others
                self.failed[name] = str(exc)
                log.error("model %s: %s", name, exc)
        # the default model of /predict and /v1/model: the first --model, else the first by name
        served = sorted({s.name for s in self._pending})
        self.default = next(iter(self.explicit), served[0] if served else "")

    def _load_version(self, name: str, version: str, path: Path) -> Served:
        s = self.options
        engine = Engine(
            path,
            s.device,
            s.intra_op_threads,
            s.inter_op_threads,
            max_batch_size=s.max_batch_size,
            tf32=s.tf32,
            cuda_graphs=s.cuda_graphs,
            spinning=s.ort_spinning,
        )
        fell_back = s.device == "auto" and engine.provider == CPU
        fallback = " (CUDA did not load; falling back to CPU; --device cuda shows why)" if fell_back else ""
        log.info(
            "serving %s version %s: %s (preset %s, sha256 %s) on %s%s with %d intra-op / %d inter-op threads",
            name, version, engine.path, engine.card.preset, engine.sha256[:12], engine.provider, fallback,
            engine.intra_op_threads, engine.inter_op_threads,
        )  # fmt: skip
        return self._serve(name, version, engine)

    def _serve(self, name: str, version: str, engine: Engine) -> Served:
        return Served(name, version, engine, self.options, self.metrics.model(name, version), answers=self.answers)

    def _publish_online(self, name: str, version: str, figures: StepFigures) -> None:
        """The Prometheus figures of one model version after a grading."""
        m = self.metrics
        for index, sums in enumerate(figures.sums):
            if sums.frames:
                for metric, value in figures.step(index).items():
                    if metric in m.online:
                        m.online[metric].labels(name, version, str(index + 1)).set(value)
        m.online_graded.labels(name, version).set(figures.graded)
        m.online_expired.labels(name, version).set(figures.expired)

    # lifecycle -----------------------------------------------------------------------
    def start(self, on_fatal: Callable[[str], None] | None = None) -> None:
        """Start every loaded version's batcher and warm-up. ``on_fatal``: told when a device is
        lost, or when a ``--model`` file fails its warm-up (the user named that very file)."""
        self.on_fatal = on_fatal
        for served in self._pending:
            self.serving.setdefault(served.name, {})[served.version] = served
            served.on_fatal = on_fatal
            if served.name not in self.explicit:
                served.on_warm_failure = self._take_out
            served.start()
        self._pending = []

    def _take_out(self, served: Served) -> None:
        """A repository model that failed its warm-up at start: reported, not served."""
        versions = self.serving.get(served.name, {})
        if versions.get(served.version) is served:
            del versions[served.version]
            if not versions:
                del self.serving[served.name]
                self.failed[served.name] = f"version {served.version}: {served.error}"
            asyncio.get_running_loop().create_task(served.retire(0))

    async def stop(self) -> None:
        everything = [s for versions in self.serving.values() for s in versions.values()]
        self.serving = {}
        await asyncio.gather(*(s.retire(self.options.request_timeout_s) for s in everything))

    async def warmed(self) -> None:
        await asyncio.gather(*(s.warmed() for versions in self.serving.values() for s in versions.values()))

    # lookup --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every model this server knows of: served, failed, unloaded, and files in DIR."""
        names = set(self.serving) | set(self.failed) | self.unloaded | set(self.explicit)
        if self.root is not None:
            names |= {name for name in scan(self.root) if valid_name(name)}
        return sorted(names)

    def versions(self, name: str) -> list[str]:
        return sorted(self.serving.get(name, {}), key=_version_key)

    def get(self, name: str | None, version: str | None = None) -> Served:
        """The version a request names (``None``: the default model, its highest version)."""
        name = self.default if name is None else name
        versions = self.serving.get(name)
        if not versions:
            raise self._not_served(name)
        if version is None:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise NotFound(
                "unknown-version",
                f"model {name!r} has no version {version!r}; it has {', '.join(sorted(versions, key=_version_key))}",
            )
        return versions[version]

    def _not_served(self, name: str) -> ServeError:
        if name in self.failed:
            return Unavailable(
                "model-unavailable", f"model {name!r} failed to load: {self.failed[name]}", model=name, state="failed"
            )
        if name in self.unloaded:
            return NotFound(
                "model-unloaded",
                f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load loads it again",
                model=name,
            )
        served = ", ".join(sorted(self.serving)) or "none"
        if not name:
            return NotFound("unknown-model", f"no default model is served (served: {served}); name one with ?model=NAME")
        return NotFound("unknown-model", f"no model named {name!r}; served models: {served}", model=name)

    @asynccontextmanager
    async def lease(self, name: str | None, version: str | None = None) -> AsyncIterator[Served]:
        """The ready version a request names, held until the request is done with it."""
        served = self.get(name, version)
        served.check_ready()
        served.acquire()  # no await between lookup and acquire: a retire sees this request
        try:
            yield served
        except Unprocessable as exc:
            if exc.kind in SHAPE_KINDS:  # a client of several models learns which one its clip missed
                exc.detail = f"model {served.name!r} version {served.version} checked this clip: {exc.detail}"
                exc.args = (exc.detail,)
                exc.extra.setdefault("model", served.name)
                exc.extra.setdefault("version", served.version)
            raise
        finally:
            served.release()

    def not_ready(self) -> Unavailable | None:
        """Ready when every loaded version is warm; else the 503 that says which are not."""
        waiting = [s for versions in self.serving.values() for s in versions.values() if s.state != "ready"]
        if not waiting:
            return None
        text = "; ".join(f"{s.name} version {s.version} ({s.state}{': ' + s.error if s.error else ''})" for s in waiting)
        return Unavailable("not-ready", f"not every model is ready to serve: {text}", retry_after_s=1, state=waiting[0].state)

    # the repository extension -----------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one row per loaded version, one per model not served."""
        states = {"ready": "READY", "loading": "LOADING", "warming": "LOADING", "failed": "UNAVAILABLE", "unloading": "UNLOADING"}
        rows: list[dict[str, str]] = []
        for name in self.names():
            versions = self.serving.get(name)
            if versions:
                for version in sorted(versions, key=_version_key):
                    s = versions[version]
                    rows.append({"name": name, "version": version, "state": states[s.state], "reason": s.error})
            elif name in self.failed:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": self.failed[name]})
            elif name in self.unloaded:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
            else:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "not loaded yet"})
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    def _sources(self, name: str) -> dict[str, Path]:
        if name in self.explicit:
            return {"1": self.explicit[name]}
        if self.root is None:
            raise NotFound(
                "unknown-model",
                f"no model named {name!r}; this server has no --model-repository to load it from "
                f"(its models: {', '.join(sorted(self.explicit))})",
            )
        return find_versions(self.root, name)

    @asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        """One load/unload of NAME at a time. The lock lives only while someone holds or awaits
        it, so clients trying names that do not exist leave no state behind."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        self._lock_users[name] = self._lock_users.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[name] -= 1
            if not self._lock_users[name]:
                del self._lock_users[name], self._locks[name]

    def check_control(self, action: str) -> None:
        """Load and unload calls are refused unless ``--model-control explicit``: by default nobody
        who can reach the port may take a model out of service, and under ``poll`` the folder
        decides (a call would be undone by the next rescan). Checked here, the one place every
        protocol's load and unload goes through, before the name is even looked at."""
        mode = self.options.model_control
        if mode == "explicit":
            return
        if mode == "poll":
            raise Forbidden(
                "model-control-off",
                f"model {action} calls are refused: this server follows its repository folder (--model-control poll); "
                "add, replace or remove files in it instead (a new version serves once it is loaded and warm), or start "
                "the server with --model-control explicit (STLIGHT_MODEL_CONTROL=explicit) to load and unload by call",
                model_control=mode,
            )
        detail = (
            f"model {action} calls are turned off on this server (--model-control none, the default); start it with "
            "--model-control explicit (STLIGHT_MODEL_CONTROL=explicit) to allow them; "
            "the repository index stays readable"
        )
        raise Forbidden("model-control-off", detail, model_control=mode)

    def audit(
        self, action: Action, name: str, outcome: Outcome, caller: Caller, versions: Iterable[str] = (), reason: str = ""
    ) -> None:
        """The audit line (``stlight.audit``, with its fields in the JSON log) and
        ``stlight_model_changes_total{action, outcome}``."""
        self.metrics.model_changes.labels(action, outcome).inc()
        version = ", ".join(versions)
        text = f"{action} of model {name!r}" + (f" version(s) {version}" if version else "") + f" by {caller.describe()}"
        fields = {"action": action, "outcome": outcome, "model": name, "version": version, "key": caller.key or None,
                  "client": caller.client, "protocol": caller.protocol or None, "reason": reason or None}  # fmt: skip
        level = logging.INFO if outcome == "ok" else logging.WARNING
        audit_log.log(level, "%s: %s%s", text, outcome, f" ({reason})" if reason else "", extra=fields)

    async def load(self, name: str, caller: Caller = Caller()) -> list[Served]:
        """A load call (REST or gRPC): refused unless model control is explicit; audited."""
        try:
            self.check_control("load")
        except Forbidden as exc:
            self.audit("load", name, "refused", caller, reason=exc.detail)
            raise
        try:
            fresh = await self.reload(name)
        except (NotFound, Forbidden):
            raise  # nothing changed and nothing could: the access line is record enough
        except ServeError as exc:
            if exc.kind != "invalid-model-name":
                self.audit("load", name, "failed", caller, reason=exc.detail)
            raise
        self.audit("load", name, "ok", caller, [s.version for s in fresh])
        return fresh

    async def reload(self, name: str) -> list[Served]:
        """Load NAME (or reload it: the files are read again). The old versions keep serving
        until the new ones are warm; if the new ones fail, the old ones stay (as in Triton)."""
        if not valid_name(name):
            raise InputError("invalid-model-name", f"{name!r} is not a model name ({NAME_RULE})")
        async with self._lock(name):
            try:
                sources = self._sources(name)
            except ServeError as exc:
                if not isinstance(exc, NotFound):  # a broken folder is reported like a broken file
                    self._record_failure(name, exc.detail)
                raise
            fresh: list[Served] = []
            try:
                for version, path in sorted(sources.items(), key=lambda item: _version_key(item[0])):
                    fresh.append(await asyncio.to_thread(self._load_version, name, version, path))
            except EngineError as exc:
                self._record_failure(name, str(exc))
                raise InputError("load-failed", f"cannot load model {name!r}: {exc}", model=name) from None
            for served in fresh:
                served.start()  # no on_fatal while warming: a failed warm-up is this load's 400
            await asyncio.gather(*(s.warmed() for s in fresh))
            broken = [s for s in fresh if s.state != "ready"]
            if broken:
                serving = self.serving.get(name, {})
                await asyncio.gather(*(s.retire(0, keep_metrics=s.version in serving) for s in fresh))
                reason = "; ".join(f"version {s.version}: {s.error}" for s in broken)
                self._record_failure(name, reason)
                raise InputError("load-failed", f"cannot load model {name!r}: {reason}", model=name)
            for served in fresh:
                served.on_fatal = self.on_fatal
            old = self.serving.get(name, {})
            self.serving[name] = {s.version: s for s in fresh}
            self.failed.pop(name, None)
            self.unloaded.discard(name)
            log.info("model %s loaded: version(s) %s", name, ", ".join(s.version for s in fresh))
            # requests holding the replaced versions finish on them
            await asyncio.gather(
                *(s.retire(self.options.request_timeout_s, keep_metrics=v in self.serving[name]) for v, s in old.items())
            )
            return fresh

    def _record_failure(self, name: str, reason: str) -> None:
        log.error("model %s: %s", name, reason)
        if name not in self.serving:
            self.failed[name] = reason

    async def unload(self, name: str, caller: Caller = Caller()) -> None:
        """An unload call (REST or gRPC): refused unless model control is explicit; audited."""
        try:
            self.check_control("unload")
        except Forbidden as exc:
            self.audit("unload", name, "refused", caller, reason=exc.detail)
            raise
        versions = self.versions(name)
        await self.take_down(name)
        self.audit("unload", name, "ok", caller, versions)

    async def take_down(self, name: str) -> None:
        """Stop serving NAME: new requests get 404 at once, requests in flight finish."""
        if not valid_name(name):
            raise InputError("invalid-model-name", f"{name!r} is not a model name ({NAME_RULE})")
        async with self._lock(name):
            versions = self.serving.pop(name, None)
            if versions is None:
                if name in self.failed or name in self.unloaded or name in self.names():
                    self.failed.pop(name, None)
                    self.unloaded.add(name)
                    return  # Triton: unloading a model that is not loaded succeeds
                raise self._not_served(name)
            self.unloaded.add(name)
            await asyncio.gather(*(s.retire(self.options.request_timeout_s) for s in versions.values()))
            log.info("model %s unloaded", name)
