"""``Client``: posts npy to a running ``stlight serve`` (httpx), retrying with backoff on 503
and 502 (a load balancer whose replica failed), honouring ``Retry-After``, and on connection
errors; many clips are split into batches sent with bounded concurrency.

It and :class:`~service.client.local.LocalClient` take one clip (T, C, H, W) or clips (N, T, C,
H, W), uint8 (0-255) or float (0-1), and return float32 predictions with the same leading axes.
"""

from __future__ import annotations

import email.utils
import io
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np

from service.core.card import ClipSpec

NPY = "application/x-npy"
# 503: the server is full or warming up. 502: a load balancer or ingress in front of replicas
# (compose.balanced.yaml's HAProxy, Kubernetes) lost the replica mid-request.
RETRY_STATUSES = (502, 503)
# a 503 that retrying cannot fix: the model's file failed to load (someone has to replace it)
PERMANENT_503 = "urn:stlight:problem:model-unavailable"
# failures where the request surely did not run to completion; predict is a pure function, so
# re-sending is safe
RETRY_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
MAX_RETRY_AFTER_S = 60.0  # a Retry-After beyond this is capped (a bad header must not hang a script)
API_KEY_ENV = "STLIGHT_API_KEY"  # the key a client sends when none is passed (as OPENAI_API_KEY does)


class ServiceError(Exception):
    """A problem+json answer from the service (or any non-2xx answer)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


class ServiceUnreachable(ServiceError):
    """No answer (connection refused, reset...) or still 502/503 after every retry."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Client:
    """``Client("http://127.0.0.1:8000").predict(clips)`` against ``stlight serve``.

    ``retries`` more attempts after a 503, a 502 or a connection error, waiting ``Retry-After`` when the
    server sends it, else ``backoff_s`` doubling up to ``max_backoff_s`` (with jitter). Arrays of
    more than ``batch_size`` clips go out as ``batch_size`` requests, at most ``concurrency`` in
    flight. ``model`` picks one of the served models (``/predict?model=NAME``; default: the
    server's default model). ``api_key`` (default: ``$STLIGHT_API_KEY``) is sent as
    ``Authorization: Bearer``. Thread-safe: several threads may share one client."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
        retries: int = 5,
        backoff_s: float = 0.25,
        max_backoff_s: float = 8.0,
        batch_size: int = 8,
        concurrency: int = 4,
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        if retries < 0 or batch_size < 1 or concurrency < 1 or backoff_s < 0:
            raise ValueError(
                f"need retries >= 0, batch_size >= 1, concurrency >= 1, backoff_s >= 0; got {retries}, {batch_size}, "
                f"{concurrency}, {backoff_s}"
            )
        self.url = url.rstrip("/")
        self.model_name = model  # None: the server's default model
        self._params: dict[str, str] = {"model": model} if model is not None else {}
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.batch_size, self.concurrency = batch_size, concurrency
        limits = httpx.Limits(max_connections=max(concurrency, 10), max_keepalive_connections=max(concurrency, 10))
        self._http = client or httpx.Client(timeout=timeout, limits=limits)
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        # per request, not on the httpx client: a client passed in keeps its own headers
        self._auth = {"Authorization": f"Bearer {api_key.strip()}"} if api_key and api_key.strip() else {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.retried: Counter[str] = Counter()  # "503" / "502" / "connection": retries made, for logs and tests
        self._spec: ClipSpec | None = None

    # predictions ---------------------------------------------------------------------
    def predict(self, frames: np.ndarray, horizon: int | None = None) -> np.ndarray:
        """(T, C, H, W) -> (T', C, H, W) or (N, T, C, H, W) -> (N, T', C, H, W), float32.

        ``horizon``: predict that many frames instead of T', the service rolling the model
        forward on its own predictions (errors compound; see docs/video.md)."""
        array = np.asarray(frames)
        params = horizon_params(horizon)
        if array.ndim != 5 or len(array) <= self.batch_size:
            return self._post_npy(array, params)
        chunks = [array[start : start + self.batch_size] for start in range(0, len(array), self.batch_size)]
        return np.concatenate(list(self._executor().map(lambda chunk: self._post_npy(chunk, params), chunks)))

    def predict_video(
        self,
        video: str | Path | bytes,
        *,
        media_type: str | None = None,
        resize: Literal["none", "fit", "crop"] = "none",
        start: int | None = None,
        horizon: int | None = None,
    ) -> np.ndarray:
        """One clip from a video file (a path, or its bytes with ``media_type``): the last T
        frames, or T from ``start``, decoded by the service -> (T' or horizon, C, H, W) float32."""
        if isinstance(video, bytes):
            data, kind = video, media_type or "video/mp4"
        else:
            from service.core.video import SUFFIX_TYPES

            path = Path(video)
            kind = media_type or SUFFIX_TYPES.get(path.suffix.lower(), "")
            if not kind:
                raise ValueError(f"{path}: cannot tell the video type from its suffix; pass media_type= (e.g. 'video/mp4')")
            data = path.read_bytes()
        params: dict[str, str | int] = {**self._params, **horizon_params(horizon), "resize": resize}
        if start is not None:
            params["start"] = start
        response = self._send("POST", "/predict", content=data, params=params, headers={"Content-Type": kind, "Accept": NPY})
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def predict_with_id(self, frames: np.ndarray, horizon: int | None = None) -> tuple[np.ndarray, str]:
        """One request (no splitting into ``batch_size`` chunks): the prediction and the request
        id the server answered it under, which :meth:`feedback` grades later."""
        response = self._post_npy_response(np.asarray(frames), horizon_params(horizon))
        return np.load(io.BytesIO(response.content), allow_pickle=False), response.headers.get("x-request-id", "")

    def feedback(self, request_id: str, truth: np.ndarray) -> dict[str, Any]:
        """``POST /v1/feedback/{request_id}``: the true frames of an earlier prediction (all of
        them or the first k), graded by the server; its per-frame MSE, MAE, PSNR and SSIM."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(truth, np.float32), allow_pickle=False)
        path = "/v1/feedback/" + quote(request_id, safe="")
        return self._send("POST", path, content=buffer.getvalue(), headers={"Content-Type": NPY}).json()

    def _post_npy(self, array: np.ndarray, params: dict[str, int] | None = None) -> np.ndarray:
        return np.load(io.BytesIO(self._post_npy_response(array, params).content), allow_pickle=False)

    def _post_npy_response(self, array: np.ndarray, params: dict[str, int] | None = None) -> httpx.Response:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self._send(
            "POST",
            "/predict",
            content=buffer.getvalue(),
            params={**self._params, **(params or {})},
            headers={"Content-Type": NPY, "Accept": NPY},
        )

    # the model -----------------------------------------------------------------------
    def model(self) -> dict[str, Any]:
        """``GET /v1/model``: shapes, provider, batching, sha256 and the model card (of ``model``)."""
        return self._send("GET", "/v1/model", params=self._params).json()

    @property
    def spec(self) -> ClipSpec:
        """Shape of the served model's clips (asked once, from ``/v1/model``)."""
        if self._spec is None:
            info = self.model()
            self._spec = ClipSpec(**ClipSpec.shape_of(info))
        return self._spec

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # transport -----------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with retries on 502/503 and connection errors; raises :class:`ServiceError`."""
        headers = {**self._auth, **kwargs.pop("headers", {})}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
            except RETRY_ERRORS as exc:
                if last:
                    raise ServiceUnreachable(
                        0,
                        {
                            "title": "unreachable",
                            "detail": f"{self.url}: {type(exc).__name__}: {exc} (after {self.retries} retries)",
                        },
                    ) from None
                self._wait(attempt, None, "connection")
                continue
            if response.status_code in RETRY_STATUSES and not last and self._problem(response).get("type") != PERMANENT_503:
                self._wait(attempt, retry_after_seconds(response.headers.get("Retry-After")), str(response.status_code))
                continue
            if response.status_code in RETRY_STATUSES and self._problem(response).get("type") != PERMANENT_503:
                problem = self._problem(response)
                problem["detail"] = f"{problem.get('detail', '')} (after {self.retries} retries)"
                raise ServiceUnreachable(response.status_code, problem)
            self._check(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _wait(self, attempt: int, retry_after: float | None, reason: str) -> None:
        with self._lock:
            self.retried[reason] += 1
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER_S)
        else:
            delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        # jitter, so that clients told the same delay do not return together: no secret, any generator will do
        time.sleep(delay * random.uniform(1.0, 1.2))  # noqa: S311

    @staticmethod
    def _problem(response: httpx.Response) -> dict[str, Any]:
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:200]}
        return problem if isinstance(problem, dict) else {"detail": str(problem)}

    @classmethod
    def _check(cls, response: httpx.Response) -> None:
        if not response.is_success:
            raise ServiceError(response.status_code, cls._problem(response))

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="stlight-client")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def horizon_params(horizon: int | None) -> dict[str, int]:
    """A ``horizon`` argument checked as both clients check it, as query parameters."""
    if horizon is None:
        return {}
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    return {"horizon": horizon}
