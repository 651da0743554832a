"""Who may change what is served, against real ``stlight serve`` processes on loopback: the
default model control refuses load and unload over REST and gRPC, and the model keeps serving;
``poll`` follows the folder (a new, a changed, a broken and a removed file) while clients keep
asking, and none of their requests fails. Scoped keys are in test_operations.py.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from serving import Server, load_npy, moving_digits, npy_bytes, running

from service.core.assets import DEFAULT_MODEL
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


# ---------------------------------------------------------------------------------------
# --model-control poll
# ---------------------------------------------------------------------------------------


def reference(path: Path, clip: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"frames": clip[None].astype(np.float32) / 255})[0][0]


def put(data: bytes, target: Path) -> None:
    """Write beside, then rename over: what a deploy job should do (a poll never sees half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f".{target.name}.partial"
    staged.write_bytes(data)
    os.replace(staged, target)


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


def test_poll_follows_the_folder_and_a_broken_version_never_takes_a_model_down(
    tiny_onnx: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    from model.data import read_idx_images

    digits = read_idx_images(next(mnist_dir.glob("*-images-idx3-ubyte*")))
    clip = moving_digits(digits, 7)
    before, after = reference(tiny_onnx, clip), reference(DEFAULT_MODEL, clip)
    root = tmp_path / "models"
    put(tiny_onnx.read_bytes(), root / "alpha" / "1" / "model.onnx")
    settings = ("--model-repository", str(root), "--model-control", "poll", "--repository-poll-s", "0.2")
    env = {"STLIGHT_DEVICE": "cpu", "STLIGHT_MAX_BATCH_SIZE": "2", "STLIGHT_WARMUP_RUNS": "1"}
    with running(tmp_path / "poll.log", *settings, env=env) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        refused = http.post("/v2/repository/models/alpha/unload")
        assert refused.status_code == 403 and "follows its repository folder" in refused.json()["error"]

        # a new file
        put(tiny_onnx.read_bytes(), root / "beta.onnx")
        wait_for(lambda: http.get("/v2/models/beta/ready").status_code == 200, "beta served")

        # clients keep asking alpha while a broken version 2 appears, then a good (different) one
        answers: list[tuple[int, bytes]] = []
        stop, body = threading.Event(), npy_bytes(clip)

        def client() -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as own:
                while not stop.is_set():
                    answer = own.post("/predict?model=alpha", content=body, headers={"Content-Type": "application/x-npy"})
                    answers.append((answer.status_code, answer.content))

        clients = [threading.Thread(target=client) for _ in range(3)]
        for thread in clients:
            thread.start()
        try:
            put(b"this is not an ONNX file", root / "alpha" / "2" / "model.onnx")
            wait_for(lambda: "poll_load of model 'alpha' by the repository poll: failed" in srv.text(), "the failed load")
            assert http.get("/v2/models/alpha/versions/1/ready").status_code == 200  # still serving
            put(DEFAULT_MODEL.read_bytes(), root / "alpha" / "2" / "model.onnx")  # the file changes again
            wait_for(lambda: http.get("/v2/models/alpha/versions/2/ready").status_code == 200, "version 2 served")
            seen = len(answers)
            wait_for(lambda: len(answers) > seen + 3, "answers from version 2")
        finally:
            stop.set()
            for thread in clients:
                thread.join(60)
        assert answers and all(status == 200 for status, _ in answers), {status for status, _ in answers}
        got = [load_npy(body) for _, body in answers]
        assert all(np.allclose(g, before, atol=1e-5) or np.allclose(g, after, atol=1e-5) for g in got)
        assert np.allclose(got[0], before, atol=1e-5) and np.allclose(got[-1], after, atol=1e-5)

        # a removed file
        (root / "beta.onnx").unlink()
        wait_for(lambda: http.get("/v2/models/beta/ready").status_code == 404, "beta gone")
        names = {row["name"] for row in http.post("/v2/repository/index", json={}).json()}
        assert names == {"alpha"}
        metrics = srv.metrics()
    lines = [line.split("stlight.audit: ")[1] for line in srv.text().splitlines() if "stlight.audit: " in line]
    audit = [re.sub(r" (request_id|model)=\S+", "", line) for line in lines]  # the text format's tail
    assert audit[0].startswith("unload of model 'alpha' by no key from 127.0.0.1:") and ": refused (" in audit[0]
    assert audit[1] == "poll_load of model 'beta' version(s) 1 by the repository poll: ok"
    assert audit[2].startswith("poll_load of model 'alpha' by the repository poll: failed (cannot load model 'alpha'")
    assert audit[3:] == [
        "poll_load of model 'alpha' version(s) 1, 2 by the repository poll: ok",
        "poll_unload of model 'beta' version(s) 1 by the repository poll: ok",
    ]
    changes = {
        dict(labels)["action"] + "/" + dict(labels)["outcome"]: v
        for (name, labels), v in metrics.items()
        if name == "stlight_model_changes_total"
    }
    assert changes["poll_load/ok"] == 2 and changes["poll_load/failed"] == 1 and changes["poll_unload/ok"] == 1
