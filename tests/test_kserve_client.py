"""KServe's own Python client (``kserve.InferenceRESTClient``, protocol v2) against a real
``stlight serve``: health, readiness, metadata (read with KServe's own response models: the
client has no metadata calls) and inference with JSON and binary tensors, answers compared with
in-process ONNX Runtime on real MNIST digits.

``kserve``'s dependencies conflict with this project's (protobuf < 7, among others), so it lives
in a separate environment: ``$STLIGHT_KSERVE_PYTHON``, else ``.venv-kserve/bin/python`` in the
repository, which ``.ci/run`` creates. Without one the test is skipped and says how to make it.
tests/kserve_probe.py is what that Python runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from serving import REPO, moving_digits, running

KSERVE_VERSION = "0.21.0"  # the one .ci/run installs; the newest when this test was written
MAKE_IT = f"python3 -m venv .venv-kserve && .venv-kserve/bin/pip install kserve=={KSERVE_VERSION}"


@pytest.fixture(scope="module")
def kserve_python() -> str:
    python = os.environ.get("STLIGHT_KSERVE_PYTHON") or str(REPO / ".venv-kserve" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no Python with KServe's client (kserve has to live in its own environment); make one: {MAKE_IT}")
    found = subprocess.run([python, "-c", "import kserve"], capture_output=True, text=True, timeout=120)
    if found.returncode != 0:
        pytest.skip(f"{python} cannot import kserve ({found.stderr.strip().splitlines()[-1:]}); make one: {MAKE_IT}")
    return python


def test_kserve_rest_client_health_metadata_and_inference(
    kserve_python: str, tiny_onnx: Path, digits: np.ndarray, reference: Callable[[np.ndarray], np.ndarray], tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    root.mkdir()
    shutil.copy(tiny_onnx, root / "alpha.onnx")
    clips = np.stack([moving_digits(digits, i) for i in (21, 22)])  # (2, 10, 1, 64, 64) uint8
    np.save(tmp_path / "clips.npy", clips)
    with running(tmp_path / "serve.log", "--model-repository", str(root), env={"STLIGHT_DEVICE": "cpu"}) as server:
        probe = [str(REPO / "tests" / "kserve_probe.py"), server.url, "alpha", str(tmp_path / "clips.npy"), str(tmp_path)]
        done = subprocess.run(
            [kserve_python, *probe],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout)

    # is_server_live / is_server_ready read the body's "live" / "ready"; is_model_ready the status
    assert said["server_live"] is True and said["server_ready"] is True
    assert said["model_ready"] is True and said["unknown_model_ready"] is False
    assert said["live_body"] == {"live": True} and said["ready_body"] == {"ready": True}
    assert said["model_ready_body"] == {"name": "alpha", "ready": True}
    assert said["server_metadata"] == said["server_metadata_slash"]
    assert said["server_metadata"]["name"] == "stlight" and "binary_tensor_data" in said["server_metadata"]["extensions"]
    tensor = {"name": "frames", "datatype": "FP32", "shape": [-1, 10, 1, 64, 64]}
    for key in ("model_metadata", "model_metadata_v1"):
        assert said[key]["name"] == "alpha" and said[key]["versions"] == ["1"] and said[key]["inputs"] == [tensor]

    want = reference(clips.astype(np.float32) / 255)
    for name in ("json_fp32", "binary_fp32", "binary_uint8_json_out"):
        assert said[name]["id"] == name and said[name]["model_name"] == "alpha", said[name]
        got = np.load(tmp_path / f"{name}.npy")
        assert got.dtype == np.float32 and got.shape == want.shape, (name, got.dtype, got.shape)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)
    # an error reaches KServe's HTTPStatusError with the server's own words
    assert said["wrong_frames"]["status"] == 422 and "expected 10 input frames (T), got 9" in said["wrong_frames"]["message"]


def test_ci_installs_the_kserve_version_this_test_names() -> None:
    assert f"kserve=={KSERVE_VERSION}" in (REPO / ".ci" / "run").read_text()
