"""The Open Inference Protocol's own OpenAPI file against a real ``stlight serve``: schemathesis
generates requests for every operation in ``tests/oip/open_inference_rest.yaml`` (the file from
kserve/open-inference-protocol, byte for byte; see tests/oip/README.md), valid and invalid, and
checks every answer against the file's response schemas: never a 5xx, every 200 in the protocol's
shape, every error the protocol's ``{"error": "..."}`` object. Valid inference requests, which a
generator cannot guess (40,960 values in one shape), are built from real MNIST digits and
validated the same way.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from serving import Server, moving_digits, running

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

SPEC = Path(__file__).parent / "oip" / "open_inference_rest.yaml"
SPEC_SHA256 = "719644d1cec52d1c98268ee16f3b75d6de7f523c6686463cbf06bf79134edbb2"
VERSIONED = "/versions/{MODEL_VERSION}"
# The yaml gives the health routes no body; the protocol's text (inference_rest.md) does. Its
# server-ready object reads {"live": $bool}, a slip: KServe's server answers {"ready": true} and
# KServe's client reads "ready" (docs/oip.md, "Where the service differs from the protocol text").
TEXT_BODIES: dict[str, dict[str, Any]] = {
    "/v2/health/live": {"live": {"type": "boolean"}},
    "/v2/health/ready": {"ready": {"type": "boolean"}},
    "/v2/models/{MODEL_NAME}/ready": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}
# every operation of the file, and the version-less spelling the text allows for each versioned one
OPERATIONS = [
    ("GET", "/v2/"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}"),
    ("GET", "/v2/models/{MODEL_NAME}"),
    ("GET", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/ready"),
    ("GET", "/v2/models/{MODEL_NAME}/ready"),
    ("POST", "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer"),
    ("POST", "/v2/models/{MODEL_NAME}/infer"),
]
EXAMPLES = 40  # per operation and generation mode; derandomized, so every run sends the same requests


def official_document() -> dict[str, Any]:
    """The file, as schemathesis needs to read it; every change in memory, for a reason."""
    raw = SPEC.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SPEC_SHA256, "tests/oip/open_inference_rest.yaml is no longer the official file"
    document = yaml.safe_load(raw)
    paths: dict[str, Any] = {}
    for spelled, item in document["paths"].items():
        # the file writes path templates shell style, `${MODEL_NAME}`; in OpenAPI the `$` would be
        # a literal character of the URL
        path = spelled.replace("${", "{")
        paths[path] = item
        if VERSIONED in path:  # the text: "v2/models/<model_name>[/versions/<model_version>]"
            short = copy.deepcopy(item)
            short["parameters"] = [p for p in short["parameters"] if p["name"] != "MODEL_VERSION"]
            for operation in (short.get("get"), short.get("post")):
                if operation:
                    operation["operationId"] += "-versionless"
            paths[path.replace(VERSIONED, "")] = short
    for path, item in paths.items():
        body = TEXT_BODIES.get(path.replace(VERSIONED, ""))
        if body:
            schema = {"type": "object", "properties": body, "required": sorted(body)}
            item["get"]["responses"]["200"]["content"] = {"application/json": {"schema": schema}}
    document["paths"] = paths
    return document


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_dict(official_document())


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("repository")
    shutil.copy(tiny_onnx, root / "alpha.onnx")
    with running(root / "serve.log", "--model-repository", str(root), env={"STLIGHT_DEVICE": "cpu"}) as srv:
        yield srv


def assert_protocol_error(response: schemathesis.Response) -> None:
    """A 4xx whose body is the protocol's error object and nothing else."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == ["application/json"], response.headers  # schemathesis: lists
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body


def test_the_file_is_the_official_one_and_every_operation_is_served(schema: Any) -> None:
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert labels == sorted(f"{method} {path}" for method, path in OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_answers_in_the_protocols_shape(schema: Any, server: Server, method: str, path: str) -> None:
    operation = schema[path][method]
    has_body = method == "POST"
    # served names and versions, and whatever the generator makes of the file's `type: string`
    names = st.sampled_from(["alpha"]) | st.text(min_size=1, max_size=12)
    versions = st.sampled_from(["1"]) | st.text(min_size=1, max_size=4)
    modes = ["positive", "negative"] if has_body else ["positive"]
    session = requests.Session()
    seen: set[int] = set()

    @settings(
        max_examples=EXAMPLES * len(modes),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        parameters = {}
        if "{MODEL_NAME}" in path:
            parameters["MODEL_NAME"] = data.draw(names, label="MODEL_NAME")
        if "{MODEL_VERSION}" in path:
            parameters["MODEL_VERSION"] = data.draw(versions, label="MODEL_VERSION")
        mode = schemathesis.GenerationMode(data.draw(st.sampled_from(modes), label="mode"))
        case = data.draw(operation.as_strategy(mode, path_parameters=parameters))
        response = case.call(base_url=server.url, session=session, timeout=60)
        checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
        case.validate_response(response, checks=[*checks, negative_data_rejection] if has_body else checks)
        seen.add(response.status_code)
        if response.status_code >= 400:
            assert_protocol_error(response)

    run()
    session.close()
    assert seen, "no request was sent"
    if not has_body:  # served names come up: the 200 answers were checked, not only the errors
        assert 200 in seen, seen


@pytest.mark.parametrize("versioned", [False, True], ids=["latest", "version-1"])
def test_valid_inference_answers_match_the_files_response_schema(
    schema: Any, server: Server, digits: np.ndarray, reference: Any, versioned: bool
) -> None:
    path = "/v2/models/{MODEL_NAME}" + (VERSIONED if versioned else "") + "/infer"
    operation = schema[path]["POST"]
    clips = np.stack([moving_digits(digits, i) for i in (3, 4)])  # (2, 10, 1, 64, 64) uint8
    want = reference(clips.astype(np.float32) / 255)
    for datatype, data in (("UINT8", clips.tolist()), ("FP32", (clips.astype(np.float32) / 255).ravel().tolist())):
        body = {
            "id": f"conformance-{datatype}",
            "inputs": [{"name": "frames", "shape": list(clips.shape), "datatype": datatype, "data": data}],
            "outputs": [{"name": "predicted"}],
        }
        parameters = {"MODEL_NAME": "alpha", **({"MODEL_VERSION": "1"} if versioned else {})}
        case = operation.Case(path_parameters=parameters, body=body, media_type="application/json")
        response = case.call(base_url=server.url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
        assert response.status_code == 200, response.text[:300]
        answer = response.json()
        assert answer["model_name"] == "alpha" and answer["model_version"] == "1" and answer["id"] == body["id"]
        (output,) = answer["outputs"]
        got = np.asarray(output["data"], np.float32).reshape(output["shape"])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
