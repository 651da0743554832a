"""Operating the service: API keys, request ids, JSON logs and draining on SIGTERM, checked
against real ``stlight serve`` processes on loopback (torch blocked), plus in-process checks of
the pieces a real server cannot be made to show on demand (a 500, the text formatter)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import Server, npy_bytes, run_cli, wait_until

NPY, PROBLEM = "application/x-npy", "application/problem+json"
KEYS = ("env-key-aaaaaaaaaaaaaaaa", "env-key-bbbbbbbbbbbbbbbb")
FILE_KEY = "file-key-cccccccccccccccc"
WRONG = "wrong-key-zzzzzzzzzzzzzzzz"
# scoped keys (NAME:KEY:SCOPES): a deploy job, a Prometheus scraper, an operator
DEPLOY, PROM, ROOT = "deploy-key-dddddddddddddddd", "prom-key-eeeeeeeeeeeeeeee", "root-key-ffffffffffffffff"
SCOPED = (f"deploy:{DEPLOY}:repository", f"prom:{PROM}:metrics", f"root:{ROOT}:infer,admin")


CLIP = npy_bytes(np.zeros((10, 1, 64, 64), np.uint8))


def json_lines(srv: Server) -> list[dict]:
    lines = []
    for line in srv.text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # every JSON-looking line must parse
    return lines


def access_line(srv: Server, request_id: str) -> dict:
    found: list[dict] = []

    def logged() -> bool:
        found[:] = [e for e in json_lines(srv) if e["logger"] == "stlight.access" and e["request_id"] == request_id]
        return bool(found)

    wait_until(logged, f"access line of {request_id}", timeout=10)  # written once the answer is sent
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------
# a server with keys (environment and file), /metrics behind them, JSON logs
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# rotated by ops\n\n{FILE_KEY}\n")
    return path


@pytest.fixture(scope="module")
def keyed(tiny_onnx: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("serve") / "keyed.log",
        "--model",
        str(tiny_onnx),
        "--api-key-file",
        str(key_file),
        "--metrics-auth",
        "--log-format",
        "json",
        "--max-body-mb",
        "1",
        "--model-control",
        "explicit",
        env={"STLIGHT_API_KEYS": ",".join((*KEYS, *SCOPED)), "STLIGHT_DEVICE": "cpu"},
        grpc=True,
    )
    srv.wait_listening()
    srv.wait_ready()
    yield srv
    assert srv.stop() == 0, srv.text()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_401(response: httpx.Response, *, v2: bool = False, wrong: bool = False) -> str:
    assert response.status_code == 401, (response.status_code, response.text[:300])
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert ('error="invalid_token"' in response.headers["www-authenticate"]) == wrong
    if v2:
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"error"}
        detail = body["error"]
    else:
        assert response.headers["content-type"].startswith(PROBLEM)
        body = response.json()
        assert body["status"] == 401 and body["type"] == "urn:stlight:problem:unauthorized"
        assert body["instance"] == f"urn:stlight:request:{response.headers['x-request-id']}"
        detail = body["detail"]
    assert ("not valid" in detail) if wrong else ("Authorization: Bearer" in detail and "X-API-Key" in detail)
    return detail


def test_keys_guard_every_route_but_the_probes(keyed: Server) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        # the probes and the docs a browser loads before anyone can type a key
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/v2/health/live").status_code != 401  # open, whether or not the route exists yet
        assert http.get("/openapi.json").status_code == 200
        for page in ("/", "/docs", "/redoc", "/static/web/page.js"):
            assert http.get(page).status_code == 200, page
        assert_401(http.get("/v1/examples"))  # what the page fetches from the API needs the key it sends
        # without a key, with a wrong one, on every kind of route
        assert_401(http.get("/v1/model"))
        assert_401(http.post("/predict", content=CLIP, headers={"Content-Type": NPY}))
        assert_401(http.get("/metrics"))  # --metrics-auth
        assert_401(http.get("/no/such/route"))  # no key, no map of the routes
        assert_401(http.get("/v1/model", headers=bearer(WRONG)), wrong=True)
        assert_401(http.get("/v1/model", headers={"X-API-Key": WRONG}), wrong=True)
        assert_401(http.get("/v1/model", headers={"Authorization": f"Basic {KEYS[0]}"}))  # not a bearer token
        assert_401(http.get("/v2/models/tiny", headers=bearer(WRONG)), v2=True, wrong=True)
        assert_401(http.get("/v2"), v2=True)
        # a body over the limit from a client without a key: 401, not 413 (the limit is not told)
        assert_401(http.post("/predict", content=b"\0" * (2 * 2**20), headers={"Content-Type": NPY}))
        # every configured key, either header, any case of the scheme
        for headers in (bearer(KEYS[0]), {"X-API-Key": KEYS[1]}, bearer(FILE_KEY), {"Authorization": f"bearer {KEYS[1]}"}):
            assert http.get("/v1/model", headers=headers).status_code == 200, headers
        response = http.post("/predict", content=CLIP, headers={"Content-Type": NPY, **bearer(KEYS[0])})
        assert response.status_code == 200 and np.load(io.BytesIO(response.content)).shape == (10, 1, 64, 64)
        assert "stlight_requests_total" in http.get("/metrics", headers={"X-API-Key": PROM}).text
        # /docs can send a key: the OpenAPI document declares both ways, the probes need none
        spec = http.get("/openapi.json").json()
        assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
        assert spec["paths"]["/healthz"]["get"]["security"] == []
        assert "security" not in spec["paths"]["/predict"]["post"]  # the global requirement applies
    # no key, right or wrong, appears in any log line
    for key in (*KEYS, FILE_KEY, WRONG, DEPLOY, PROM, ROOT):
        assert key not in keyed.text()


def test_scoped_keys_on_every_route_group_over_http_and_grpc(keyed: Server) -> None:
    """401 without a key, 403 with one that lacks the group's scope (naming the scope, never the
    key), 200 with it; plain keys are infer keys; admin passes every group."""
    import grpc

    from service.grpc.proto import open_inference_grpc_pb2 as pb
    from service.grpc.proto import open_inference_grpc_pb2_grpc as pb_grpc

    groups = {  # group -> (method, path, json body), each a route that answers 200 when allowed
        "inference": ("GET", "/v2/models/tiny", None),
        "repository": ("POST", "/v2/repository/index", {}),
        "metrics": ("GET", "/metrics", None),
    }
    allowed = {  # key -> the groups it may use
        KEYS[0]: {"inference"},
        FILE_KEY: {"inference"},
        DEPLOY: {"repository"},
        PROM: {"metrics"},
        ROOT: {"inference", "repository", "metrics"},
    }
    needs = {"inference": "infer", "repository": "repository", "metrics": "metrics"}
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for group, (method, path, body) in groups.items():
            assert http.request(method, path, json=body).status_code == 401, group
            for key, groups_allowed in allowed.items():
                answer = http.request(method, path, json=body, headers=bearer(key))
                if group in groups_allowed:
                    assert answer.status_code == 200, (group, key, answer.text[:200])
                    continue
                assert answer.status_code == 403, (group, key, answer.text[:200])
                detail = answer.json()["error"] if path.startswith("/v2") else answer.json()["detail"]
                assert f"needs a key with the '{needs[group]}' scope" in detail and key not in answer.text
                challenge = answer.headers["www-authenticate"]
                assert 'error="insufficient_scope"' in challenge and f'scope="{needs[group]}"' in challenge
        # a load and unload need the repository scope: an infer key cannot take the model away
        assert http.post("/v2/repository/models/tiny/unload", headers=bearer(KEYS[0])).status_code == 403
        assert http.post("/v2/repository/models/tiny/load", headers=bearer(DEPLOY)).status_code == 200
        assert http.get("/v2/models/tiny/ready", headers=bearer(KEYS[1])).status_code == 200
        problem = http.get("/v1/model", headers=bearer(PROM)).json()  # problem+json outside /v2
        assert problem["status"] == 403 and problem["type"] == "urn:stlight:problem:missing-scope" and problem["scope"] == "infer"
    # the access line names the key's name (the fingerprint of a plain one), never the key
    keys = {e.get("key") for e in json_lines(keyed) if e["logger"] == "stlight.access"}
    assert {"deploy", "prom", "root"} <= keys and any(re.fullmatch(r"key-[0-9a-f]{8}", str(k)) for k in keys)
    # gRPC: the same keys as metadata, the same groups
    with grpc.insecure_channel(keyed.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index, metadata = stub.RepositoryIndex, stub.ModelMetadata
        cases = [
            (index, pb.RepositoryIndexRequest(), None, grpc.StatusCode.UNAUTHENTICATED),
            (index, pb.RepositoryIndexRequest(), KEYS[0], grpc.StatusCode.PERMISSION_DENIED),
            (index, pb.RepositoryIndexRequest(), DEPLOY, grpc.StatusCode.OK),
            (metadata, pb.ModelMetadataRequest(name="tiny"), PROM, grpc.StatusCode.PERMISSION_DENIED),
            (metadata, pb.ModelMetadataRequest(name="tiny"), ROOT, grpc.StatusCode.OK),
        ]
        for call, message, key, code in cases:
            sent = [("authorization", f"Bearer {key}")] if key else []
            try:
                call(message, metadata=sent, timeout=30)
                got, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as error:
                got, details = error.code(), error.details() or ""
            assert got == code, (key, got, details)
            assert key is None or key not in details
            if code == grpc.StatusCode.PERMISSION_DENIED:
                assert "scope" in details
        # an unload and a load over gRPC with the admin key: audited like the HTTP load above
        root = [("x-api-key", ROOT)]
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"), metadata=root, timeout=60)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"), metadata=root, timeout=60)
    audits: list[dict] = []

    def audited() -> bool:
        audits[:] = [e for e in json_lines(keyed) if e["logger"] == "stlight.audit"]
        return len(audits) >= 3

    wait_until(audited, "three audit lines", timeout=10)
    fields = ("action", "outcome", "model", "version", "key", "protocol")
    assert [tuple(e.get(f) for f in fields) for e in audits[-3:]] == [
        ("load", "ok", "tiny", "1", "deploy", "http"),
        ("unload", "ok", "tiny", "1", "root", "grpc"),
        ("load", "ok", "tiny", "1", "root", "grpc"),
    ]
    assert audits[-3]["client"].startswith("127.0.0.1:") and "127.0.0.1" in audits[-1]["client"]
    assert "load of model 'tiny' version(s) 1 by key 'deploy' from 127.0.0.1:" in audits[-3]["message"]
    changes = httpx.get(keyed.url + "/metrics", headers=bearer(PROM)).text
    assert 'stlight_model_changes_total{action="load",outcome="ok"} 2.0' in changes
    assert 'stlight_model_changes_total{action="unload",outcome="ok"} 1.0' in changes


def test_scoped_key_syntax_and_restricted_api() -> None:
    from service.core.errors import Forbidden, Unauthenticated
    from service.server.scopes import parse_restrictions
    from service.server.security import KeyFileError, KeyStore, parse_key, parse_keys

    assert parse_keys(f"a:{DEPLOY}:infer,metrics, {KEYS[0]} ,b:{PROM}:metrics") == [
        f"a:{DEPLOY}:infer,metrics",
        KEYS[0],
        f"b:{PROM}:metrics",
    ]
    assert parse_key(f"ops:{ROOT}:infer+metrics", "x").scopes == {"infer", "metrics"}
    assert parse_key(f"ops:with:colon:{ROOT}:admin", "x").name == "ops"  # the key may hold ':'
    for bad, why in ((f"ops:{ROOT}:everything", "expected one or more of"), (f"bad name:{ROOT}:infer", "name must be"),
                     (f"ops:{ROOT}", "NAME:KEY:SCOPES"), ("ops::infer", "NAME:KEY:SCOPES")):  # fmt: skip
        with pytest.raises(KeyFileError, match=why) as caught:
            parse_key(bad, "line 3")
        assert ROOT not in str(caught.value) and "line 3" in str(caught.value)
    with pytest.raises(ValueError, match="GROUP=SCOPE"):
        parse_restrictions(["repository=root"])
    store = KeyStore(
        [KEYS[0], f"deploy:{DEPLOY}:repository", f"root:{ROOT}:admin"], restrictions=parse_restrictions(["repository=admin"])
    )
    assert store.authorize([ROOT], "repository", "a header").name == "root"
    with pytest.raises(Forbidden, match="'admin' scope"):
        store.authorize([DEPLOY], "repository", "a header")  # repository=admin: the deploy key is not enough
    with pytest.raises(Unauthenticated, match="'infer' scope: send a header"):
        store.authorize([], "inference", "a header")
    from pydantic import ValidationError

    from service.server.settings import ServeSettings

    assert ServeSettings(restricted_api="metrics=infer, repository=admin").restrictions() == {
        "inference": "infer", "repository": "admin", "metrics": "infer"
    }  # fmt: skip
    with pytest.raises(ValidationError, match="GROUP=SCOPE"):  # stlight serve prints it as one line, exit 2
        ServeSettings(restricted_api=("models=admin",))


def test_key_file_is_reread_when_it_changes_and_on_sighup(keyed: Server, key_file: Path) -> None:
    url = keyed.url + "/v1/model"
    new_key = "file-key-dddddddddddddddd"  # the same length as FILE_KEY: the file keeps its size
    # rotation by atomic rename (a new inode): seen within a second, without a signal
    staged = key_file.with_suffix(".new")
    staged.write_text(f"{new_key}\n")
    os.replace(staged, key_file)
    wait_until(lambda: httpx.get(url, headers=bearer(new_key)).status_code == 200, "the renamed file's key", timeout=10)
    assert httpx.get(url, headers=bearer(FILE_KEY)).status_code == 401
    assert httpx.get(url, headers=bearer(KEYS[0])).status_code == 200  # the environment's keys stay
    # an in-place edit that keeps inode, size and mtime is invisible to the change check: SIGHUP
    stamp = key_file.stat()
    with open(key_file, "r+") as f:
        f.write(f"{FILE_KEY}\n")
    os.utime(key_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    time.sleep(1.5)  # past the change check's interval: it looked and saw nothing
    assert httpx.get(url, headers=bearer(FILE_KEY)).status_code == 401
    keyed.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: httpx.get(url, headers=bearer(FILE_KEY)).status_code == 200, "the key after SIGHUP", timeout=10)
    assert httpx.get(url, headers=bearer(new_key)).status_code == 401
    reloads = [e["message"] for e in json_lines(keyed) if "reloaded the API key file" in e["message"]]
    assert any("file changed" in m for m in reloads) and any("SIGHUP" in m for m in reloads), reloads
    assert keyed.proc.poll() is None  # SIGHUP did not stop it


def test_request_ids_on_every_answer_and_log_line(keyed: Server) -> None:
    auth = bearer(KEYS[0])
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        # the caller's id is kept; unsafe characters are dropped; at most 128 characters
        ok = http.post("/predict", content=CLIP, headers={"Content-Type": NPY, "X-Request-ID": "job-42/clip:7", **auth})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "job-42/clip:7"
        forged = http.get("/v1/model", headers={"X-Request-ID": 'a b"c\td<script>', **auth})
        assert forged.headers["x-request-id"] == "abcdscript"
        long = http.get("/v1/model", headers={"X-Request-ID": "x" * 300, **auth})
        assert long.headers["x-request-id"] == "x" * 128
        # generated when absent (or nothing safe is left), different each time
        generated = {http.get("/healthz").headers["x-request-id"] for _ in range(3)}
        generated.add(http.get("/healthz", headers={"X-Request-ID": "\"'<>"}).headers["x-request-id"])
        assert len(generated) == 4 and all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated)
        # errors of every origin carry it, in the header and as the problem's instance
        errors = {
            "401": http.get("/v1/model"),
            "404": http.get("/no/such/route", headers=auth),
            "405": http.get("/predict", headers=auth),
            "413": http.post("/predict", content=b"\0" * (2 * 2**20), headers={"Content-Type": NPY, **auth}),
            "415": http.post("/predict", content=b"x", headers={"Content-Type": "text/plain", **auth}),
            "422": http.post(
                "/predict", content=npy_bytes(np.zeros((3, 1, 64, 64), np.uint8)), headers={"Content-Type": NPY, **auth}
            ),
        }
    for status, response in errors.items():
        assert str(response.status_code) == status, (status, response.text[:200])
        request_id = response.headers["x-request-id"]
        assert response.json()["instance"] == f"urn:stlight:request:{request_id}", status
        line = access_line(keyed, request_id)
        assert line["status"] == response.status_code and line["level"] == "INFO"
    # a 413 while the body streams in (no Content-Length) is answered by the same route
    host, port = keyed.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {NPY}\r\nX-Request-ID: streamed-413\r\n"
            f"Authorization: Bearer {KEYS[0]}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        answer = b""
        try:
            for _ in range(64):  # 2 MiB in 32 KiB chunks, over the 1 MiB limit
                sock.sendall(b"%x\r\n" % 32768 + b"\0" * 32768 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413") and b"x-request-id: streamed-413" in answer.lower(), answer[:300]
    # the access line: time, level, request id, route, status, duration, model, batch
    line = access_line(keyed, "job-42/clip:7")
    assert line["route"] == "/predict" and line["status"] == 200 and line["method"] == "POST"
    assert line["model"] == "tiny" and line["batch"] == 1 and line["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    # uvicorn's own lines are JSON too
    assert any(e["logger"].startswith("uvicorn") and "Uvicorn running on" in e["message"] for e in json_lines(keyed))


def test_client_and_predict_cli_send_the_key(keyed: Server, tmp_path: Path) -> None:
    from service.client import Client, ServiceError

    clips = np.zeros((3, 10, 1, 64, 64), np.uint8)
    with Client(keyed.url, api_key=KEYS[1], retries=0) as client:
        assert client.predict(clips).shape == (3, 10, 1, 64, 64)
    with Client(keyed.url, retries=0) as client, pytest.raises(ServiceError) as caught:
        client.predict(clips)
    assert caught.value.status == 401
    source = tmp_path / "clips.npy"
    np.save(source, clips)
    with_flag = run_cli("predict", str(source), "--out", str(tmp_path / "a"), "--url", keyed.url, "--api-key", KEYS[0])
    assert with_flag.returncode == 0, with_flag.stderr
    assert np.load(tmp_path / "a" / "clips.npy").shape == (3, 10, 1, 64, 64)
    with_env = run_cli(
        "predict", str(source), "--out", str(tmp_path / "b"), "--url", keyed.url, env={"STLIGHT_API_KEY": FILE_KEY}
    )
    assert with_env.returncode == 0, with_env.stderr
    without = run_cli("predict", str(source), "--out", str(tmp_path / "c"), "--url", keyed.url, env={"STLIGHT_API_KEY": ""})
    assert without.returncode == 2 and "401" in without.stderr and "--api-key" in without.stderr
    assert "Traceback" not in without.stderr and len(without.stderr.strip().splitlines()) == 1
    local = run_cli("predict", str(source), "--out", str(tmp_path / "d"), "--api-key", KEYS[0])
    assert local.returncode == 2 and "--api-key applies to --url" in local.stderr


def test_unreadable_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("serve", "--api-key-file", str(tmp_path / "missing.txt"))
    assert result.returncode == 2 and "cannot read the API key file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("setting", [",", "  ", " , ,"])
def test_a_key_setting_that_names_no_key_is_refused_at_start(setting: str) -> None:
    """Set but empty would otherwise run the server open: its author asked for keys."""
    result = run_cli("serve", env={"STLIGHT_API_KEYS": setting})
    assert result.returncode == 2 and "STLIGHT_API_KEYS is set but holds no key" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# drain on SIGTERM: requests in flight and queued finish, new connections are refused, exit 0
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~0.1-0.5 s per 8 clips on CPU: long enough to have requests queued behind one in flight."""
    from export import export_preset

    return export_preset(
        "tiny", tmp_path_factory.mktemp("onnx") / "slow.onnx", seed=1, overrides={"dim": 256, "depth": 8, "patch_size": 2}
    )


def test_sigterm_drains_requests_in_flight_and_queued_then_exits_0(slow_model: Path, tmp_path: Path) -> None:
    import concurrent.futures

    srv = Server(tmp_path / "drain.log", "--model", str(slow_model), env={"STLIGHT_WARMUP_RUNS": "1"})
    try:
        srv.wait_listening()
        srv.wait_ready()
        host, port = srv.url.removeprefix("http://").split(":")
        blocker = npy_bytes(np.random.default_rng(0).integers(0, 256, (64, 10, 1, 64, 64), dtype=np.uint8))
        pool = concurrent.futures.ThreadPoolExecutor(5)
        post = lambda body: httpx.post(srv.url + "/predict", content=body, headers={"Content-Type": NPY}, timeout=120)  # noqa: E731
        in_flight = pool.submit(post, blocker)
        gauge = lambda name: sum(v for (n, _), v in srv.metrics().items() if n == name)  # noqa: E731  # over models
        wait_until(lambda: gauge("stlight_running_clips") > 0, what="the blocker running")
        queued = [pool.submit(post, CLIP) for _ in range(4)]
        wait_until(lambda: gauge("stlight_queue_depth") == 4, what="4 requests queued")
        srv.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, "new connections refused", timeout=10)
        assert not in_flight.done(), "the check came too late to show anything"
        answers = [in_flight.result(), *(f.result() for f in queued)]
        pool.shutdown()
        assert [a.status_code for a in answers] == [200] * 5, [a.text[:200] for a in answers]
        assert np.load(io.BytesIO(answers[0].content)).shape == (64, 10, 1, 64, 64)
        assert srv.proc.wait(30) == 0, srv.text()
        assert "stopped" in srv.text() and "Traceback" not in srv.text()
    finally:
        srv.stop()


@pytest.mark.slow
def test_soak_script_runs_clean_for_a_few_seconds(tmp_path: Path) -> None:
    """benchmarks/soak.py itself (the 10-minute figures are in docs/operations.md): every class of
    request it sends gets the answer it expects, and it says so."""
    import subprocess
    import sys

    from serving import REPO

    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--duration", "8", "--concurrency", "8", "--sample-every", "1",
         "--no-progress", "--json-out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["answered"] > 0 and figures["five_xx_server"] == 0 and figures["exit_status"] == 0
    # the soak's server has keys but no --metrics-auth: it read /metrics without one
    assert figures["server_statuses"].get("200", 0) > 0
    assert len(figures["outcomes"]) >= 25  # every class was sent at least once


# ---------------------------------------------------------------------------------------
# in-process: pure functions, the 500 path, the text format, the open-service warning
# ---------------------------------------------------------------------------------------


def test_sanitise_and_key_parsing(tmp_path: Path) -> None:
    from service.server.request_id import sanitise
    from service.server.security import KeyStore, is_loopback, is_public, parse_key, parse_keys, read_key_file

    assert sanitise("abc-DEF_1.2:3/4+5=6@7~") == "abc-DEF_1.2:3/4+5=6@7~"
    assert sanitise("a\r\nb c") == "abc" and len(sanitise("y" * 500)) == 128
    assert re.fullmatch(r"[0-9a-f]{32}", sanitise("\n\n")) and re.fullmatch(r"[0-9a-f]{32}", sanitise(None))
    assert parse_keys(" a , ,b ,") == ["a", "b"]
    (key_file := tmp_path / "keys").write_text("# c\n\n  k1  \nk2\n#k3")
    assert read_key_file(key_file) == [parse_key("k1", "line 3"), parse_key("k2", "line 4")]
    store = KeyStore(["k" * 20, "j" * 20])
    assert store.enabled and store.check(["j" * 20]) and store.check(["x", "k" * 20])
    assert not store.check([]) and not store.check(["k" * 19]) and not store.check(["k" * 21])
    assert not KeyStore().enabled
    assert is_public("/metrics", metrics_auth=False) and not is_public("/metrics", metrics_auth=True)
    assert is_public("/v2/health/ready", metrics_auth=True) and not is_public("/v2/models/x/infer", metrics_auth=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("example.org")


def test_empty_key_file_closes_the_service(tmp_path: Path) -> None:
    from service.server.security import KeyStore

    path = tmp_path / "keys"
    path.write_text("# nobody yet\n")
    store = KeyStore(key_file=path)
    assert store.enabled and store.count == 0 and not store.check(["anything"])


def test_open_service_on_other_hosts_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from service.server.security import KeyStore, warn_if_open

    with caplog.at_level(logging.WARNING, logger="stlight.security"):
        warn_if_open("127.0.0.1", KeyStore())
        warn_if_open("0.0.0.0", KeyStore(["k" * 20]))
        assert not caplog.records
        warn_if_open("0.0.0.0", KeyStore())
    assert len(caplog.records) == 1 and "anyone who reaches this port" in caplog.records[0].getMessage()


def test_a_500_carries_the_request_id_in_answer_and_error_log(tiny_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No route of the real server fails on purpose, so a failing one is added to an in-process app."""
    import asyncio

    from service.server.app import create_app
    from service.server.request_id import RequestIdFilter
    from service.server.settings import ServeSettings

    app = create_app(ServeSettings(model=tiny_onnx, device="cpu", warmup_runs=0, grpc_port=0))

    @app.get("/boom")
    @app.get("/v2/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    caplog.handler.addFilter(RequestIdFilter())  # as on the handler `stlight serve` installs

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom", headers={"X-Request-ID": "fails-1"})

    async def call_v2() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v2/boom", headers={"X-Request-ID": "fails-2"})

    with caplog.at_level(logging.INFO):
        response = asyncio.run(call())
        oip = asyncio.run(call_v2())
    # under /v2 the body is OIP's {"error": ...}; the id still comes back in the header
    assert oip.status_code == 500 and oip.headers["x-request-id"] == "fails-2" and set(oip.json()) == {"error"}
    assert response.status_code == 500 and response.headers["x-request-id"] == "fails-1"
    assert response.json()["instance"] == "urn:stlight:request:fails-1"
    error = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert error.request_id == "fails-1" and error.exc_info is not None  # type: ignore[attr-defined]
    access = next(r for r in caplog.records if r.name == "stlight.access")
    assert access.request_id == "fails-1" and access.status == 500  # type: ignore[attr-defined]


def test_text_format_keeps_todays_line_and_adds_the_request_id() -> None:
    from service.server.logging_setup import JsonFormatter, TextFormatter

    record = logging.LogRecord("stlight.access", logging.INFO, __file__, 1, "POST %r 200", ("/predict",), None)
    record.request_id, record.model, record.batch = "r-1", "tiny", 4
    text = TextFormatter().format(record)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" INFO stlight.access: POST '/predict' 200 request_id=r-1 model=tiny batch=4", text), text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "r-1" and entry["batch"] == 4 and entry["message"] == "POST '/predict' 200"
