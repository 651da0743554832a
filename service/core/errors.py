"""The project's error types: torch-free, HTTP-free and tiny, so that every layer raises them.

- :class:`UserError`: a mistake the user of a ``stlight`` command can fix; ``service.cli``
  prints it as one line (no traceback) with exit status 2.
- :class:`ServeError` and its subclasses: a request (or input file) that cannot be answered as
  asked. Each carries a ``kind`` (a stable name for the problem, e.g. ``wrong-dtype``: the
  ``type`` of the HTTP answer, ``urn:stlight:problem:<kind>``) and a ``detail`` that says what
  was expected and what came. The *class* says what sort of failure it is; each protocol maps
  the class to its own code (``service/server/problems.py``: HTTP statuses; a gRPC adapter:
  status codes), so nothing below the server knows a status code.

Raise the most specific class::

    raise Unprocessable("wrong-frame-count", f"expected {want} input frames (T), got {got}")
    raise LimitExceeded("horizon-too-far", f"horizon={n} is beyond this server's limit of {limit} frames")
    raise Unavailable("queue-full", "all 256 queue places are taken; retry in about 2 s", retry_after_s=2)
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback, exit status 2."""


def extra_hint(extra: str) -> str:
    """How to add an optional extra. The project installs from its checkout (it is on no package
    index, so ``pip install 'stlight[...]'`` cannot resolve), and constraints.txt keeps torch the
    CPU build rather than pulling the multi-GB CUDA one."""
    return f"pip install -e '.[{extra}]' -c constraints.txt (in the stlight checkout)"


# the `train` extra's top-level modules -> the package a user would recognise
TRAIN_EXTRA_PACKAGES = {"torch": "PyTorch", "onnx": "onnx", "onnxscript": "onnxscript", "skimage": "scikit-image"}
TRAIN_EXTRA_MODULES = frozenset(TRAIN_EXTRA_PACKAGES)


def train_extra_hint(module: str) -> str:
    """What a torch command says where ``module`` (one of the `train` extra's) is missing."""
    package = TRAIN_EXTRA_PACKAGES.get(module.split(".")[0], module)
    return f"this command needs {package} (the train extra): {extra_hint('train')}; missing module {module!r}"


class ServeError(Exception):
    """A request that cannot be answered as asked: ``kind`` names the problem, ``detail`` explains
    it; ``extra`` holds fields an answer may add (e.g. ``model``, ``state``, ``limit_bytes``)."""

    def __init__(self, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.extra = kind, detail, extra


# the caller's input: every protocol answers these as the caller's mistake ----------------------
class InputError(ServeError, ValueError):
    """The request (or input file) is not usable as sent: bytes that do not decode, a malformed
    protocol message, a bad name or parameter (HTTP 400)."""


class Unprocessable(InputError):
    """Read fine, but not what the model takes: dtype, rank, frame count, channels, size, values
    (HTTP 422)."""


class LimitExceeded(Unprocessable):
    """Beyond one of this server's limits on the work one request may ask for: the horizon, a
    video's frames or pixels per frame (HTTP 422)."""


class UnsupportedMedia(InputError):
    """A body type or encoding this server does not read (HTTP 415)."""


class NotAcceptable(InputError):
    """No answer type that the request accepts can carry this prediction (HTTP 406)."""


class TooLarge(InputError):
    """A body larger than the body limit, as sent or once inflated (HTTP 413)."""


class Unauthenticated(ServeError):
    """No valid API key with a request that needs one (HTTP 401)."""


class Forbidden(ServeError):
    """Understood and authenticated, but not allowed on this server: a key without the scope the
    route needs, or a repository change while model control is off (HTTP 403)."""


# the server's side ----------------------------------------------------------------------------
class NotFound(ServeError):
    """No such model, version or resource (HTTP 404)."""


class Unavailable(ServeError):
    """Cannot answer now: not ready, queue full, out of memory, device lost, shutting down (HTTP
    503). ``retry_after_s``: when to try again, where the server can tell."""

    def __init__(self, kind: str, detail: str, *, retry_after_s: int | None = None, **extra: Any) -> None:
        super().__init__(kind, detail, **extra)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServeError):
    """No answer within the request's time (HTTP 504)."""


class ClientGone(Exception):
    """The client went away while its request waited: nobody is left to answer (the server logs
    HTTP 499, nginx's "client closed request")."""
