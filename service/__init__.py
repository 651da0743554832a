"""STLight serving: ONNX Runtime engine, HTTP service, client and batch prediction.

Nothing in this package imports torch, so the serving image stays small.
"""

__version__ = "0.1.0"
