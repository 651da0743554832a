"""A small synchronous client for ``stlight serve``: numpy in, numpy out (npy on the wire)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np

NPY = "application/x-npy"


class ServiceError(Exception):
    """A problem+json answer from the service (or any non-2xx answer)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())


class Client:
    """``Client("http://127.0.0.1:8000").predict(clip)``: clip (T, C, H, W) or clips (B, T, C, H, W),
    uint8 (0-255) or float (0-1) -> float32 prediction with the same leading axes."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float = 60.0, client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = client or httpx.Client(timeout=timeout)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(frames), allow_pickle=False)
        response = self._http.post(f"{self.url}/predict", content=buffer.getvalue(), headers={"Content-Type": NPY, "Accept": NPY})
        self._check(response)
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def model(self) -> dict[str, Any]:
        response = self._http.get(f"{self.url}/v1/model")
        self._check(response)
        return response.json()

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:200]}
        raise ServiceError(response.status_code, problem if isinstance(problem, dict) else {"detail": str(problem)})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
