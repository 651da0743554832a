"""Prometheus metrics of one service instance, in its own registry (one app, one registry: two
apps in a process, as in tests, do not collide). Everything a model's batcher records carries
``model`` and ``version`` labels; :class:`ModelMetrics` binds them for one served version."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

MODEL = ("model", "version")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # first in the registry: a scrape reads the kept answers (dropping those past their
        # time-to-live) before it reads stlight_online_expired, so one scrape adds up
        self.kept = KeptAnswers()
        r.register(self.kept)
        self.requests = Counter(
            "stlight_requests_total",
            "Requests answered, by protocol (http, grpc), route (gRPC: the method), status (gRPC: the code's name) "
            "and model ('' on routes without one)",
            ("protocol", "route", "status", "model"),
            registry=r,
        )
        self.duration = Histogram(
            "stlight_request_duration_seconds",
            "Time from request start to response end, by protocol and route (gRPC: the method)",
            ("protocol", "route"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stlight_queue_wait_seconds",
            "Time a request waited in the queue before its batch ran",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "stlight_inference_duration_seconds", "Duration of one session.run", MODEL, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("stlight_batch_size", "Clips per session.run", MODEL, buckets=BATCH_BUCKETS, registry=r)
        self.running = Gauge("stlight_running_clips", "Clips in the session.run in progress (0: idle)", MODEL, registry=r)
        self.queue_depth = Gauge("stlight_queue_depth", "Requests waiting for inference", MODEL, registry=r)
        self.dropped = Counter(
            "stlight_dropped_requests_total",
            "Requests not run: queue_full, disconnected, timeout, out_of_memory, cancelled",
            (*MODEL, "reason"),
            registry=r,
        )
        self.timeouts = Counter(
            "stlight_request_timeouts_total", "Requests answered 504 after request_timeout_s", MODEL, registry=r
        )
        step = (*MODEL, "step")
        self.online = {
            name: Gauge(f"stlight_online_{name}", f"Mean {name.upper()} per graded frame at this step", step, registry=r)
            for name in ("mse", "mae", "psnr", "ssim")
        }
        self.online_graded = Gauge("stlight_online_graded", "Predictions graded by their true frames", MODEL, registry=r)
        self.online_expired = Gauge(
            "stlight_online_expired", "Kept predictions dropped ungraded (time-to-live or byte budget)", MODEL, registry=r
        )
        self.ready = Gauge("stlight_ready", "1 once the model is loaded and warmed up", MODEL, registry=r)
        self.model_changes = Counter(
            "stlight_model_changes_total",
            "Changes of what is served, by action (load, unload: calls; poll_load, poll_unload: the folder) and outcome "
            "(ok, failed: the old version kept serving, refused: model control is off)",
            ("action", "outcome"),
            registry=r,
        )
        for action in ("load", "unload", "poll_load", "poll_unload"):  # every series from 0, so rate() sees the first
            for outcome in ("ok", "failed", "refused"):
                self.model_changes.labels(action, outcome)

    def model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, name, version)


# (model, version, step) -> frames graded and the sums of their MSE, MAE, PSNR and SSIM
StepSums = dict[tuple[str, str, str], tuple[int, dict[str, float]]]


class KeptAnswers(Collector):
    """Read at each scrape from the store of kept answers (set by the repository that keeps them):

    - ``stlight_online_kept`` and ``stlight_online_kept_bytes`` from one call of ``held``
      (answers, bytes), so the two agree;
    - ``stlight_online_frame_{mse,mae,psnr,ssim}`` summaries per model, version and step: the
      ``_count`` of frames graded and the ``_sum`` of their scores since start, so PromQL takes
      the mean over any window, ``rate(..._sum[15m]) / rate(..._count[15m])``, where the
      ``stlight_online_{mse,...}`` gauges are means since start (slow to show a drop).
    """

    def __init__(self) -> None:
        self.held: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.sums: Callable[[], StepSums] = dict

    def collect(self) -> Iterator[Metric]:
        count, nbytes = self.held()
        yield GaugeMetricFamily("stlight_online_kept", "Predictions kept awaiting their true frames", value=count)
        yield GaugeMetricFamily(
            "stlight_online_kept_bytes", "Memory held by predictions awaiting their true frames (at most the budget)", nbytes
        )
        sums = self.sums()
        for name in ("mse", "mae", "psnr", "ssim"):
            family = SummaryMetricFamily(
                f"stlight_online_frame_{name}",
                f"{name.upper()} of the frames graded at this step: their count and sum since start",
                labels=("model", "version", "step"),
            )
            for labels, (frames, step_sums) in sums.items():
                family.add_metric(labels, count_value=frames, sum_value=step_sums[name])
            yield family


class _Labelled:
    """``metric.labels(reason)`` for a batcher, with the model's labels put in front."""

    def __init__(self, metric: Counter, *prefix: str) -> None:
        self.metric, self.prefix = metric, prefix

    def labels(self, *values: str) -> Counter:
        return self.metric.labels(*self.prefix, *values)


class ModelMetrics:
    """What one served model version records, under the names the batcher uses; ``remove``
    drops its gauges when the version is unloaded (a scrape must not call a stopped batcher's
    queue, nor report an unloaded model as idle)."""

    def __init__(self, metrics: ServiceMetrics, name: str, version: str) -> None:
        self._parent, self._labels = metrics, (name, version)
        self.queue_wait = metrics.queue_wait.labels(name, version)
        self.inference = metrics.inference.labels(name, version)
        self.batch_size = metrics.batch_size.labels(name, version)
        self.running = metrics.running.labels(name, version)
        self.queue_depth = metrics.queue_depth.labels(name, version)
        self.dropped = _Labelled(metrics.dropped, name, version)
        self.timeouts = metrics.timeouts.labels(name, version)
        self.ready = metrics.ready.labels(name, version)

    def remove(self) -> None:
        for gauge in (self._parent.running, self._parent.queue_depth, self._parent.ready):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(*self._labels)
