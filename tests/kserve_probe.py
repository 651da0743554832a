"""Drive a server with KServe's own Python client; run by tests/test_kserve_client.py with the
Python of a separate environment that has ``kserve`` (its dependencies, protobuf < 7 among them,
conflict with this project's). Imports only the standard library, numpy, httpx and kserve.

    python tests/kserve_probe.py URL MODEL CLIPS.npy OUT_DIR

Prints one JSON object of what the client said; writes each prediction to OUT_DIR/NAME.npy.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from kserve.protocol.rest import v2_datamodels as v2


def request(model: str, clips: np.ndarray, *, binary_in: bool, binary_out: bool, request_id: str) -> InferRequest:
    datatype = "UINT8" if clips.dtype == np.uint8 else "FP32"
    tensor = InferInput(name="frames", shape=list(clips.shape), datatype=datatype)
    tensor.set_data_from_numpy(clips, binary_data=binary_in)
    output = RequestedOutput(name="predicted", parameters={"binary_data": binary_out})
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=request_id, request_outputs=[output])


async def probe(url: str, model: str, clips: np.ndarray, out: Path) -> dict[str, Any]:
    said: dict[str, Any] = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    try:
        said["server_live"] = await client.is_server_live(url)
        said["server_ready"] = await client.is_server_ready(url)
        said["model_ready"] = await client.is_model_ready(url, model)
        said["unknown_model_ready"] = await client.is_model_ready(url, "no-such-model")

        # the client has no metadata calls: KServe's own response models read the answers
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for key, path, schema in (
                ("server_metadata", "/v2", v2.ServerMetadataResponse),
                ("server_metadata_slash", "/v2/", v2.ServerMetadataResponse),
                ("model_metadata", f"/v2/models/{model}", v2.ModelMetadataResponse),
                ("model_metadata_v1", f"/v2/models/{model}/versions/1", v2.ModelMetadataResponse),
                ("live_body", "/v2/health/live", v2.ServerLiveResponse),
                ("ready_body", "/v2/health/ready", v2.ServerReadyResponse),
                ("model_ready_body", f"/v2/models/{model}/ready", v2.ModelReadyResponse),
            ):
                answer = await http.get(path)
                said[key] = schema.model_validate_json(answer.content).model_dump()

        float_clips = clips.astype(np.float32) / 255
        for name, batch, binary_in, binary_out in (
            ("json_fp32", float_clips, False, False),
            ("binary_fp32", float_clips, True, True),
            ("binary_uint8_json_out", clips, True, False),
        ):
            sent = request(model, batch, binary_in=binary_in, binary_out=binary_out, request_id=name)
            result = await client.infer(url, sent, model)
            (output,) = result.outputs
            np.save(out / f"{name}.npy", output.as_numpy())
            said[name] = {"id": result.id, "model_name": result.model_name, "model_version": result.model_version}

        try:  # 9 frames where the model takes 10: the server's message, through the client
            await client.infer(url, request(model, clips[:, :9], binary_in=True, binary_out=True, request_id="bad"), model)
            said["wrong_frames"] = "accepted"
        except httpx.HTTPStatusError as exc:
            said["wrong_frames"] = {"status": exc.response.status_code, "message": str(exc)}
    finally:
        await client.close()
    return said


def main(argv: list[str]) -> int:
    url, model, clips_path, out = argv
    said = asyncio.run(probe(url, model, np.load(clips_path), Path(out)))
    print(json.dumps(said))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
