"""Who may change what is served, against real ``stlight serve`` processes on loopback: the
default model control refuses load and unload over REST and gRPC, and the model keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from serving import Server, running

from service.grpc.proto import open_inference_grpc_pb2 as pb
from service.grpc.proto import open_inference_grpc_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def default(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No --model-control: the default, none."""
    with running(tmp_path_factory.mktemp("serve") / "default.log", "--model", f"tiny={tiny_onnx}", grpc=True) as srv:
        yield srv


def test_the_default_refuses_load_and_unload_on_every_protocol(default: Server) -> None:
    with httpx.Client(base_url=default.url, timeout=30) as http:
        for action in ("load", "unload"):
            answer = http.post(f"/v2/repository/models/tiny/{action}", json={})
            assert answer.status_code == 403, answer.text
            detail = answer.json()["error"]  # /v2 answers in the Open Inference Protocol's form
            assert f"model {action} calls are turned off" in detail and "--model-control explicit" in detail, detail
            assert "STLIGHT_MODEL_CONTROL=explicit" in detail
        # a name that does not exist gets the same answer: the mode is checked before the name
        assert http.post("/v2/repository/models/ghost/load").status_code == 403
        index = http.post("/v2/repository/index", json={})
        assert index.status_code == 200 and index.json() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
        assert http.get("/v2/models/tiny/ready").status_code == 200  # still serving
    with grpc.insecure_channel(default.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
            request = (pb.RepositoryModelLoadRequest if call is stub.RepositoryModelLoad else pb.RepositoryModelUnloadRequest)(
                model_name="tiny"
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--model-control explicit" in refused.value.details()
        assert stub.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=30).ready
    # each refusal is audited (the text log) and counted
    refused = [line for line in default.text().splitlines() if "stlight.audit" in line]
    assert len(refused) == 5 and all(": refused (model" in line and "no key from" in line for line in refused), refused
    assert sum(" over grpc: refused" in line for line in refused) == 2
    metrics = default.metrics()
    assert metrics[("stlight_model_changes_total", (("action", "load"), ("outcome", "refused")))] == 3
    assert metrics[("stlight_model_changes_total", (("action", "unload"), ("outcome", "refused")))] == 2
