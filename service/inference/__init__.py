"""Running models: the ONNX Runtime engine, the dynamic batcher, the model repository (load, warm,
reload, unload) and their Prometheus metrics. Imports ``service.core``; no HTTP."""
