"""The same ONNX file served four ways, driven by one load generator, side by side.

- ``stlight serve`` (this project: its defaults, ONNX Runtime's threads spinning within runs;
  ``stlight-nospin``: never spinning, the peers' session options; ``stlight-1t``: one intra-op
  thread, not in the default selection; ``stlight-v2``: the same server driven through its Open
  Inference Protocol route with binary tensors, the very request KServe gets; ``stlight-grpc``:
  the same server over gRPC, ``ModelInfer`` with ``raw_input_contents``, the very message
  tritonclient.grpc sends);
- a bare FastAPI route: ``np.load -> session.run -> np.save`` inline, no batching;
- LitServe: a ``LitAPI`` with its batching on (``max_batch_size`` 8, ``batch_timeout`` 0);
- KServe's Python model server: a ``kserve.Model`` on the V2 route with binary tensors
  (``kserve-grpc``: the same model server's gRPC port, the same ``ModelInfer`` message).

All use the same ONNX Runtime version and threads (intra-op = every CPU, inter-op 1,
sequential). One asyncio load generator keeps ``concurrency`` HTTP/1.1 keep-alive connections
busy (gRPC rows: ``concurrency`` channels, each its own HTTP/2 connection, sending the serialized
message as bytes so that the client's protobuf work is not timed), each sending one 10-frame
uint8 clip at a time; each server answers float32 frames, and
each answer is checked once against in-process ONNX Runtime. Rounds are interleaved (every
server at every concurrency, then again, in a rotated order), so a noisy neighbour hits all
alike; the table shows the median over rounds and the spread (max-min)/median of clips/s.

Peers live in their own virtual environment, never in the project's dependencies:

    python -m venv /work/peers-venv
    ORT=$(python -c 'import onnxruntime; print(onnxruntime.__version__)')   # the project's version
    /work/peers-venv/bin/pip install litserve kserve "onnxruntime==$ORT"

    python benchmarks/serve_peers.py --peers-python /work/peers-venv/bin/python
    python benchmarks/serve_peers.py --seconds 3 --rounds 3 --only stlight bare   # no peers venv needed
    python benchmarks/serve_peers.py --only stlight-v2 stlight-grpc kserve kserve-grpc   # the gRPC comparison

The first lines of this file import only the standard library and numpy: the peers' venv runs
this same file to start LitServe and KServe (``--serve NAME PORT``).
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "service" / "assets" / "default.onnx"
NPY = "application/x-npy"


def threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def session(model: str):
    """The session every peer uses: the options of ``stlight serve``'s default engine (threads,
    sequential execution, no spinning), so the table compares serving, not session settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# the servers (run with --serve NAME PORT MODEL, in the project's or the peers' python)
# ---------------------------------------------------------------------------------------


def serve_bare(port: int, model: str) -> None:
    import uvicorn
    from fastapi import FastAPI, Request, Response

    sess = session(model)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        clip = np.load(io.BytesIO(await request.body()), allow_pickle=False)  # (T, C, H, W) uint8
        out = sess.run(None, {"frames": (clip.astype(np.float32) / 255)[None]})[0][0]
        return Response(npy_bytes(out), media_type=NPY)

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


try:  # only in the peers' venv; LitServe pickles the API into its worker process: module level
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:

    class STLightAPI(ls.LitAPI):
        def __init__(self, model: str, **batching) -> None:
            super().__init__(**batching)
            self.model = model

        def setup(self, device: str) -> None:
            self.session = session(self.model)

        def decode_request(self, request: dict) -> np.ndarray:
            clip = np.load(io.BytesIO(base64.b64decode(request["npy"])), allow_pickle=False)
            return clip.astype(np.float32) / 255  # (T, C, H, W)

        def batch(self, inputs: list) -> np.ndarray:
            return np.stack(inputs)

        def predict(self, x: np.ndarray) -> np.ndarray:
            return self.session.run(None, {"frames": x})[0]

        def unbatch(self, output: np.ndarray) -> list:
            return list(output)

        def encode_response(self, output: np.ndarray):
            from starlette.responses import Response

            return Response(npy_bytes(output), media_type=NPY)


def serve_litserve(port: int, model: str) -> None:
    api = STLightAPI(model, max_batch_size=8, batch_timeout=0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


def serve_kserve(port: int, model: str, grpc_port: int | None = None) -> None:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class STLightModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__("stlight")
            self.session = session(model)
            self.ready = True

        def predict(self, payload: InferRequest, headers: dict | None = None, response_headers: dict | None = None):
            clips = payload.inputs[0].as_numpy()  # (B, T, C, H, W) uint8
            out = self.session.run(None, {"frames": clips.astype(np.float32) / 255})[0]
            output = InferOutput(name="predicted", shape=list(out.shape), datatype="FP32")
            output.set_data_from_numpy(out, binary_data=True)
            return InferResponse(
                response_id=payload.id or "0", model_name=self.name, infer_outputs=[output], use_binary_outputs=True
            )

    grpc = {"enable_grpc": True, "grpc_port": grpc_port} if grpc_port else {"enable_grpc": False}
    kserve.ModelServer(http_port=port, workers=1, enable_latency_logging=False, **grpc).start([STLightModel()])


def serve_kserve_grpc(port: int, model: str) -> None:
    serve_kserve(port, model, grpc_port=int(os.environ["SERVE_PEERS_GRPC_PORT"]))


SERVERS = {"bare": serve_bare, "litserve": serve_litserve, "kserve": serve_kserve, "kserve-grpc": serve_kserve_grpc}
GRPC_KINDS = ("stlight-grpc", "kserve-grpc")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# ---------------------------------------------------------------------------------------
# requests: one uint8 clip in, float32 frames out, per server's idiom
# ---------------------------------------------------------------------------------------


def request_bytes(kind: str, clip: np.ndarray, port: int) -> bytes:
    """The whole HTTP/1.1 request for one clip, sent as is on a keep-alive connection."""
    head = f"Host: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
    if kind in ("stlight", "stlight-nospin", "stlight-1t", "bare"):
        body = npy_bytes(clip)
        return f"POST /predict HTTP/1.1\r\n{head}Content-Type: {NPY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    if kind == "litserve":
        body = json.dumps({"npy": base64.b64encode(npy_bytes(clip)).decode()}).encode()
        return (
            f"POST /predict HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "frames",
                    "shape": [1, *clip.shape],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": clip.nbytes},
                }
            ],
            "outputs": [{"name": "predicted", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + clip.tobytes()
    return (
        f"POST /v2/models/stlight/infer HTTP/1.1\r\n{head}Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def grpc_request_bytes(clip: np.ndarray) -> bytes:
    """One serialized ModelInferRequest: the clip as UINT8 raw_input_contents, as tritonclient sends it."""
    from service.grpc.proto import open_inference_grpc_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name="frames", datatype="UINT8", shape=[1, *clip.shape])
    return pb.ModelInferRequest(model_name="stlight", inputs=[tensor], raw_input_contents=[clip.tobytes()]).SerializeToString()


def grpc_answer_frames(data: bytes) -> np.ndarray:
    from service.grpc.proto import open_inference_grpc_pb2 as pb

    answer = pb.ModelInferResponse.FromString(data)
    if not answer.raw_output_contents:
        raise SystemExit(f"gRPC answer without raw_output_contents: {answer.outputs}")
    return np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(list(answer.outputs[0].shape))[0]


def answer_frames(kind: str, headers: dict[str, str], body: bytes) -> np.ndarray:
    """The float32 prediction in an answer, (T', C, H, W)."""
    if kind.startswith("kserve") or kind == "stlight-v2":
        if "inference-header-content-length" not in headers:
            raise SystemExit(f"kserve answered without binary data: {headers} {body[:300]!r}")
        offset = int(headers["inference-header-content-length"])
        meta = json.loads(body[:offset])["outputs"][0]
        return np.frombuffer(body[offset:], np.float32).reshape(meta["shape"])[0]
    return np.load(io.BytesIO(body), allow_pickle=False)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return status, headers, b"".join(p[:-2] for p in parts)
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


# ---------------------------------------------------------------------------------------
# load generator
# ---------------------------------------------------------------------------------------


@dataclass
class Cell:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    @property
    def clips_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, q)) if self.latencies else float("nan")


async def drive(port: int, payload: bytes, concurrency: int, seconds: float, warmup: float) -> Cell:
    cell, began = Cell(), time.perf_counter()
    measure_from, stop_at = began + warmup, began + warmup + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(payload)
                status, _, _ = await read_answer(reader)
                done = time.perf_counter()
                if now >= measure_from:
                    if status == 200:
                        cell.latencies.append(done - now)
                    else:
                        cell.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    cell.seconds = time.perf_counter() - measure_from
    return cell


async def drive_grpc(port: int, payload: bytes, concurrency: int, seconds: float, warmup: float) -> Cell:
    import grpc

    cell, began = Cell(), time.perf_counter()
    measure_from, stop_at = began + warmup, began + warmup + seconds
    # a channel per client: each its own connection, as each HTTP client has its own
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(concurrency)
    ]

    async def client(channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(MODEL_INFER)  # bytes in, bytes out: no protobuf work in the timed loop
        while (now := time.perf_counter()) < stop_at:
            try:
                await call(payload)
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    cell.latencies.append(done - now)
                else:
                    cell.errors += 1

    try:
        await asyncio.gather(*(client(channel) for channel in channels))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    cell.seconds = time.perf_counter() - measure_from
    return cell


async def check_grpc_answer(kind: str, port: int, payload: bytes, expected: np.ndarray) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            data = await channel.unary_unary(MODEL_INFER)(payload, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise SystemExit(f"{kind}: {exc.code().name}: {exc.details()}") from None
    error = float(np.abs(grpc_answer_frames(data) - expected).max())
    if error > 1e-4:
        raise SystemExit(f"{kind}: answer differs from in-process ONNX Runtime by {error:.3g}")


async def check_answer(kind: str, port: int, payload: bytes, expected: np.ndarray) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    status, headers, body = await read_answer(reader)
    writer.close()
    if status != 200:
        raise SystemExit(f"{kind}: HTTP {status}: {body[:300]!r}")
    error = float(np.abs(answer_frames(kind, headers, body) - expected).max())
    if error > 1e-4:
        raise SystemExit(f"{kind}: answer differs from in-process ONNX Runtime by {error:.3g}")


# ---------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    kind: str
    port: int
    proc: subprocess.Popen
    log: Path
    grpc_port: int = 0  # the gRPC rows' port (driven instead of ``port``, which answers the readiness probe)

    @property
    def driven_port(self) -> int:
        return self.grpc_port or self.port


def start(kind: str, model: str, peers_python: str, logs: Path) -> Running:
    port, grpc_port = free_port(), free_port() if kind in GRPC_KINDS else 0
    log = logs / f"{kind}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SERVE_PEERS_GRPC_PORT": str(grpc_port)}
    if kind.startswith("stlight"):
        env |= {"STLIGHT_DEVICE": "cpu"}
        if kind == "stlight-nospin":  # the default is "run"; this shows what spinning is worth
            env["STLIGHT_ORT_SPINNING"] = "off"
        if kind == "stlight-1t":  # one intra-op thread: the other core left to HTTP and the client
            env["STLIGHT_INTRA_OP_THREADS"] = "1"
        named = f"stlight={model}"  # /v2/models/stlight/infer, the path the KServe peer answers on
        # gRPC off but for the gRPC row (its default port, 8001, would collide with any other server)
        argv = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--model",
            named,
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
        ]
        argv += ["--log-level", "warning"]
    else:
        python = sys.executable if kind == "bare" else peers_python
        argv = [python, __file__, "--serve", kind, str(port), model]
    # own process group: the others are paused (SIGSTOP) while one is measured, so an idle
    # server that polls (LitServe's worker) or spins does not take CPU from the one under load
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    return Running(kind, port, proc, log, grpc_port)


def pause(servers: list[Running], keep: Running | None) -> None:
    """SIGSTOP every server's process group but ``keep``'s (SIGCONT that one)."""
    for server in servers:
        os.killpg(server.proc.pid, signal.SIGCONT if server is keep else signal.SIGSTOP)


def wait_ready(server: Running, timeout: float = 180) -> None:
    path = {
        "stlight": "/readyz",
        "stlight-nospin": "/readyz",
        "stlight-1t": "/readyz",
        "stlight-v2": "/readyz",
        "stlight-grpc": "/readyz",
        "bare": "/ready",
        "litserve": "/health",
    }.get(server.kind, "/v2/models/stlight/ready")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.kind} exited with {server.proc.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{server.kind} not ready within {timeout:g} s:\n{server.log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children that were waited for... and of
    its threads (``/proc/PID/stat``), so an idle server that spins shows up."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return [pid] + [d for k in kids for d in descendants(k)]


def idle_cpu_percent(server: Running, seconds: float = 2.0) -> float:
    pids = descendants(server.proc.pid)
    before = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
    time.sleep(seconds)
    after = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
    return 100 * (after - before) / seconds


def in_process(model: str, clip: np.ndarray, seconds: float) -> dict[str, float]:
    """Back-to-back batch-1 session.run (the decode included: uint8 -> float32)."""
    sess = session(model)
    x = (clip.astype(np.float32) / 255)[None]
    for _ in range(10):
        sess.run(None, {"frames": x})
    latencies, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        sess.run(None, {"frames": (clip.astype(np.float32) / 255)[None]})
        latencies.append(time.perf_counter() - t)
    return {"clips_per_s": len(latencies) / (time.perf_counter() - began), "p50_ms": 1000 * statistics.median(latencies)}


def moving_digit_clip() -> np.ndarray:
    """(10, 1, 64, 64) uint8: a bright square moving diagonally (the model's input shape)."""
    clip = np.zeros((10, 1, 64, 64), np.uint8)
    for t in range(10):
        clip[t, 0, 10 + 3 * t : 24 + 3 * t, 8 + 2 * t : 22 + 2 * t] = 230
    return clip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX file (default: the shipped model)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each cell (default 0.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="connections (default 1 8 32)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["stlight", "stlight-nospin", "stlight-v2", "stlight-grpc", "bare", "litserve", "kserve", "kserve-grpc"],
        choices=[
            "stlight",
            "stlight-nospin",
            "stlight-1t",
            "stlight-v2",
            "stlight-grpc",
            "bare",
            "litserve",
            "kserve",
            "kserve-grpc",
        ],
        help="servers to run (default: all)",
    )
    parser.add_argument("--peers-python", default="/work/peers-venv/bin/python", help="python of the peers' venv")
    parser.add_argument("--serve", nargs=3, metavar=("NAME", "PORT", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        SERVERS[args.serve[0]](int(args.serve[1]), args.serve[2])
        return 0
    needs_peers = {"litserve", "kserve", "kserve-grpc"} & set(args.only)
    if needs_peers and not Path(args.peers_python).exists():
        print(f"serve_peers: {args.peers_python} not found; create the peers' venv (see --help) or pass --only stlight bare")
        return 2

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, {threads()} CPUs, intra-op threads {threads()}, model {args.model}", flush=True)
    clip = moving_digit_clip()
    expected = session(args.model).run(None, {"frames": (clip.astype(np.float32) / 255)[None]})[0][0]
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "serve_peers_logs"
    logs.mkdir(exist_ok=True)
    servers = [start(kind, args.model, args.peers_python, logs) for kind in args.only]
    results: dict[tuple[str, int], list[Cell]] = {}
    baseline: list[dict[str, float]] = []
    idle: dict[str, float] = {}
    try:
        for server in servers:
            wait_ready(server)
            if server.kind in GRPC_KINDS:
                asyncio.run(check_grpc_answer(server.kind, server.grpc_port, grpc_request_bytes(clip), expected))
            else:
                asyncio.run(check_answer(server.kind, server.port, request_bytes(server.kind, clip, server.port), expected))
        print("all servers ready and answering correctly", flush=True)
        cells = len(servers) * len(args.concurrency) * args.rounds
        done = 0
        for round_ in range(args.rounds):
            pause(servers, keep=None)
            baseline.append(in_process(args.model, clip, args.seconds))
            order = servers[round_ % len(servers) :] + servers[: round_ % len(servers)]
            for concurrency in args.concurrency:
                for server in order:
                    pause(servers, keep=server)
                    if server.kind in GRPC_KINDS:
                        payload = grpc_request_bytes(clip)
                        cell = asyncio.run(drive_grpc(server.grpc_port, payload, concurrency, args.seconds, args.warmup))
                    else:
                        payload = request_bytes(server.kind, clip, server.port)
                        cell = asyncio.run(drive(server.port, payload, concurrency, args.seconds, args.warmup))
                    results.setdefault((server.kind, concurrency), []).append(cell)
                    done += 1
                    print(
                        f"[{done}/{cells}] round {round_ + 1} {server.kind:<15} c={concurrency:<3} "
                        f"{cell.clips_per_s:7.1f} clips/s  p50 {cell.p(50):6.2f} ms  errors {cell.errors}",
                        flush=True,
                    )
        for server in servers:  # each alone, after a pause to let spinning threads settle
            pause(servers, keep=server)
            time.sleep(1.0)
            idle[server.kind] = idle_cpu_percent(server)
    finally:
        # whole process groups: LitServe's inference workers are children of its server, and a
        # left-behind worker busy-polls a core and skews every later measurement on the host
        for server in servers:
            os.killpg(server.proc.pid, signal.SIGCONT)
            os.killpg(server.proc.pid, signal.SIGTERM)
        for server in servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
    report(args, servers, results, baseline, idle)
    return 0


def report(args, servers, results, baseline, idle) -> None:
    base_rate = statistics.median(b["clips_per_s"] for b in baseline)
    base_p50 = statistics.median(b["p50_ms"] for b in baseline)
    spread = (max(b["clips_per_s"] for b in baseline) - min(b["clips_per_s"] for b in baseline)) / base_rate
    print()
    print(
        f"in-process session.run, batch 1: {base_rate:.1f} clips/s, p50 {base_p50:.2f} ms "
        f"(spread {100 * spread:.0f}% over {len(baseline)} rounds)"
    )
    bare_p50 = {
        c: statistics.median(x.p(50) for x in results.get(("bare", c), [])) for c in args.concurrency if ("bare", c) in results
    }
    print()
    print(
        "| server | conc | p50 ms | p99 ms | clips/s | clips/s spread | vs in-process batch-1 | p50 vs bare | errors | idle CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        for server in servers:
            cells = results[(server.kind, concurrency)]
            rates = [c.clips_per_s for c in cells]
            rate = statistics.median(rates)
            p50 = statistics.median(c.p(50) for c in cells)
            p99 = statistics.median(c.p(99) for c in cells)
            noise = (max(rates) - min(rates)) / rate if rate else float("nan")
            vs_bare = f"{p50 / bare_p50[concurrency]:.2f}x" if concurrency in bare_p50 else "-"
            print(
                f"| {server.kind} | {concurrency} | {p50:.2f} | {p99:.2f} | {rate:.1f} | ±{50 * noise:.0f}% | "
                f"{rate / base_rate:.2f}x | {vs_bare} | {sum(c.errors for c in cells)} | {idle[server.kind]:.0f}% |"
            )
    grpc_vs_http(args, results)


def grpc_vs_http(args, results) -> None:
    """Each gRPC row against the same server's OIP route over HTTP (binary tensors): the targets
    are gRPC clips/s >= HTTP's at 8 and 32 clients, gRPC p50 <= 1.15x HTTP's at 1."""
    pairs = [(g, h) for g, h in (("stlight-grpc", "stlight-v2"), ("kserve-grpc", "kserve")) if g in args.only and h in args.only]
    if not pairs:
        return
    print()
    print("| gRPC vs /v2 binary over HTTP | conc | clips/s gRPC / HTTP | p50 gRPC / HTTP |")
    print("|---|---:|---:|---:|")
    for grpc_kind, http_kind in pairs:
        for concurrency in args.concurrency:
            grpc_cells, http_cells = results[(grpc_kind, concurrency)], results[(http_kind, concurrency)]
            rate = statistics.median(c.clips_per_s for c in grpc_cells) / statistics.median(c.clips_per_s for c in http_cells)
            p50 = statistics.median(c.p(50) for c in grpc_cells) / statistics.median(c.p(50) for c in http_cells)
            print(f"| {grpc_kind} / {http_kind} | {concurrency} | {rate:.2f}x | {p50:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
