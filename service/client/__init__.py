"""Python clients with one signature, ``predict(frames) -> np.ndarray``: :class:`Client` against
a running ``stlight serve`` (:mod:`service.client.http`), :class:`LocalClient` with ONNX Runtime
in this process (:mod:`service.client.local`). Neither loads a web framework."""

from service.client.http import Client, ServiceError, ServiceUnreachable
from service.client.local import LocalClient

__all__ = ["Client", "LocalClient", "ServiceError", "ServiceUnreachable"]
