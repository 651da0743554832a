"""STLight serving: ONNX Runtime engine, HTTP service, client and batch prediction.

Nothing in this package imports torch, so the serving image stays small.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml's [project] version is the only place the number is written
    __version__ = version("stlight")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
