"""The routes, one ``APIRouter`` module per protocol: ``/predict``, the probes and ``/v1``, the
Open Inference Protocol under ``/v2``."""
