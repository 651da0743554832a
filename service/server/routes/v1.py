"""The server's own routes besides ``/predict``: the probes (``/healthz``, ``/readyz``), what is
served (``/v1/model``, ``/v1/models``) and the Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.core.errors import Unavailable
from service.server.deps import ModelQuery, RepositoryDep, ServiceDep
from service.server.openapi import problem_doc

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    summary="Readiness: 200 once every loaded model is warmed up, while decode/encode workers have room",
    responses={503: problem_doc("Loading or warming up, or every decode/encode place is taken (Retry-After)")},
)
async def readyz(service_state: ServiceDep, models: RepositoryDep) -> dict[str, Any]:
    if service_state.state == "failed":
        raise Unavailable("not-ready", f"the server cannot serve any more: {service_state.error}", state="failed")
    waiting = models.not_ready()
    if waiting:
        raise waiting
    codecs = service_state.codecs
    if codecs.saturated:  # every decode/encode place taken: new requests would get 503s, send them elsewhere
        raise codecs.busy_error()
    default = models.get(None) if models.default in models.serving else None
    return {
        "status": "ready",
        "provider": default.engine.provider if default else None,
        "model": models.default,
        "models": sorted(models.serving),
        "codecs": codecs.describe(),
    }


@router.get(
    "/v1/model",
    summary="One served model (default: the default model): shapes, provider, batching, sha256 and model card",
    responses={404: problem_doc("No such model"), 503: problem_doc("The model failed to load")},
)
async def model_info(request: Request, models: RepositoryDep, model: ModelQuery = None) -> dict[str, Any]:
    served = models.get(model)
    request.state.model = served.name
    return {**served.describe(), "card": served.engine.card.to_dict()}


@router.get(
    "/v1/models/{name}",
    summary="One served model by name (its highest version)",
    responses={404: problem_doc("No such model"), 503: problem_doc("The model failed to load")},
)
async def named_model_info(request: Request, models: RepositoryDep, name: str) -> dict[str, Any]:
    return await model_info(request, models, name)


@router.get("/v1/models", summary="Every model the server knows of: the served versions, and the ones that are not served")
async def models_info(models: RepositoryDep) -> dict[str, Any]:
    # one entry per model (its highest version, as /v1/model?model=NAME describes it) and its versions
    served = [{**models.get(name).describe(), "versions": models.versions(name)} for name in sorted(models.serving)]
    return {"default": models.default, "models": served, "repository": models.index()}


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
async def metrics(service_state: ServiceDep) -> Response:
    return Response(generate_latest(service_state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
