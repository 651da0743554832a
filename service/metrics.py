"""Prometheus metrics of one service instance, in its own registry (one app, one registry: two
apps in a process, as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "stlight_requests_total", "HTTP requests answered, by route and status code", ("route", "status"), registry=r
        )
        self.duration = Histogram(
            "stlight_request_duration_seconds",
            "Time from request start to response end, by route",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stlight_queue_wait_seconds",
            "Time a request waited in the queue before its batch ran",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "stlight_inference_duration_seconds", "Duration of one session.run", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("stlight_batch_size", "Clips per session.run", buckets=BATCH_BUCKETS, registry=r)
        self.running = Gauge("stlight_running_clips", "Clips in the session.run in progress (0: idle)", registry=r)
        self.queue_depth = Gauge("stlight_queue_depth", "Requests waiting for inference", registry=r)
        self.dropped = Counter(
            "stlight_dropped_requests_total", "Requests not run: queue_full, disconnected, timeout", ("reason",), registry=r
        )
        self.timeouts = Counter("stlight_request_timeouts_total", "Requests answered 504 after request_timeout_s", registry=r)
        self.ready = Gauge("stlight_ready", "1 once the model is loaded and warmed up", registry=r)
