"""``inference.GRPCInferenceService``: the Open Inference Protocol's RPCs, and the model configuration
and repository RPCs of Triton that ``tritonclient.grpc`` calls, over the same repository and data
plane as the REST routes (:mod:`service.v2`). Each RPC answers what its REST route answers; an error
is a typed error (:mod:`service.core.errors`) that :mod:`service.grpc.interceptors` turns into a status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from service import __version__
from service.codecs import oip
from service.core.errors import InputError, NotFound, Unavailable
from service.core.limits import BINARY_ANSWER, TEXT_ANSWER
from service.grpc import tensors
from service.grpc.proto import open_inference_grpc_pb2 as pb
from service.grpc.proto import open_inference_grpc_pb2_grpc as pb_grpc
from service.inference.repository import Caller, Repository, Served, refuse_load_overrides
from service.server.request_id import annotate, current_field, current_request_id

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# RPCs that answer without an API key, as /v2/health/* does over HTTP
PUBLIC_METHODS = frozenset({f"/{SERVICE_NAME}/ServerLive", f"/{SERVICE_NAME}/ServerReady"})
_DATA_TYPES = {"FP32": pb.TYPE_FP32}
if TYPE_CHECKING:  # generic in grpc's type stubs only
    Context = grpc.aio.ServicerContext[Any, Any]


def caller(context: Context) -> Caller:
    """Who asks for a change of what is served: the key's name (set by the key check), the peer."""
    return Caller(key=current_field("key") or "", client=context.peer() or "", protocol="grpc")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``repository``: the served models; ``failed``: why the process cannot serve any more, or '';
    ``max_horizon``: the most frames one request may ask for."""

    def __init__(self, repository: Repository, failed: Callable[[], str], max_horizon: int) -> None:
        self.repository, self.failed, self.max_horizon = repository, failed, max_horizon

    # server ------------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.failed() and self.repository.not_ready() is None)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="stlight", version=__version__, extensions=oip.EXTENSIONS)

    # one model ---------------------------------------------------------------------------
    def _served(self, name: str, version: str) -> Served:
        if not name:
            raise InputError("invalid-model-name", "the request names no model (name is empty)")
        served = self.repository.get(name, version or None)
        annotate(model=served.name)  # the metrics' model label and the access log: only names that are served
        return served

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        """Not ready (no error) for any model or version that cannot serve now, known or not, as
        Triton answers: the question is whether to send requests, and the answer is no."""
        try:
            served = self._served(request.name, request.version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=served.state == "ready")

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        engine = self._served(request.name, request.version).engine
        inputs, outputs = oip.Tensors(engine.input_name, engine.output_name, engine.spec).metadata()
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=self.repository.versions(request.name),
            platform=oip.PLATFORM,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**inputs)],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**outputs)],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        served = self._served(request.name, request.version)
        engine, options = served.engine, served.options
        config = pb.ModelConfig(
            name=request.name,
            platform=oip.PLATFORM,
            backend="onnxruntime",
            version_policy=pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All()),
            max_batch_size=options.max_batch_size,
            input=[pb.ModelInput(name=engine.input_name, data_type=pb.TYPE_FP32, dims=engine.spec.input_shape)],
            output=[pb.ModelOutput(name=engine.output_name, data_type=pb.TYPE_FP32, dims=engine.spec.output_shape)],
            dynamic_batching=pb.ModelDynamicBatching(
                max_queue_delay_microseconds=round(options.max_delay_ms * 1000),
                default_queue_policy=pb.ModelQueuePolicy(max_queue_size=options.queue_size),
            ),
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        if not request.model_name:
            raise InputError("invalid-model-name", "the request names no model (model_name is empty)")
        async with self.repository.lease(request.model_name, request.model_version or None) as served:
            annotate(model=served.name)
            engine = served.engine
            any_version = not request.model_version
            parsed = tensors.decode_request(
                request,
                oip.Tensors(engine.input_name, engine.output_name, engine.spec),
                self.max_horizon,
                served.truth_spec(any_version),
            )
            annotate(batch=len(parsed.clips.frames))
            if parsed.feedback is not None:  # the clips are the truth of an earlier answer: grade it
                graded = await served.grade(parsed.feedback, parsed.clips.frames, any_version)
                return tensors.encode_feedback(graded.model, graded.version, parsed, graded.scores)

            # the path /predict and /v2 take: one batch holds clips of every protocol; a call cancelled
            # (client gone, deadline passed) cancels this task, which drops a clip still queued
            # typed contents are built from a Python list of floats: the JSON cost, raw bytes the binary one
            cost = BINARY_ANSWER if parsed.binary_output else TEXT_ANSWER
            prediction = await served.predict(parsed.clips.frames, parsed.horizon, keep_as=current_request_id(), answer=cost)
        answer = (served.name, served.version, parsed, prediction, engine.output_name)
        if parsed.binary_output:  # one copy of the bytes; a list of floats is worth a thread hop
            return tensors.encode_response(*answer)
        return await asyncio.to_thread(tensors.encode_response, *answer)

    # the repository extension ------------------------------------------------------------
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        rows = self.repository.index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        refuse_load_overrides(request.parameters)
        await self.repository.load(request.model_name, caller(context))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.repository.unload(request.model_name, caller(context))
        return pb.RepositoryModelUnloadResponse()
