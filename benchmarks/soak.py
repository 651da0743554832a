"""Soak test of ``stlight serve``: hours-long health in minutes. A real server (API keys on, JSON
logs) under ``--concurrency`` clients for ``--duration`` seconds, mixing good requests of every
body format (npy, JSON, PNG/JPEG parts, MP4 and GIF videos; Open Inference Protocol JSON and
binary tensors when the server has /v2 routes) and answer type (npy, JSON, zip, GIF, MP4),
rollouts past the model's horizon, and bad ones — wrong shapes, corrupt files, oversize bodies
(declared and streamed), missing or wrong keys, clients that hang up mid-body or before their
answer, slow bodies. The server's RSS, open file descriptors and threads are sampled every few
seconds.

    python benchmarks/soak.py                             # 10 minutes, the shipped default model
    python benchmarks/soak.py --duration 60 --model m.onnx

Prints requests served, the 5xx count (must be 0), outcomes by class (unexpected ones are
errors), and RSS / FD / thread growth from minute 1 to the end. Exit status 1 on any 5xx, any
unexpected outcome, any wrong answer or a traceback in the server log. Good answers are checked
against in-process ONNX Runtime on the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common
import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from service.core import video

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "service" / "assets" / "default.onnx"
EXAMPLES = REPO / "service" / "assets" / "examples"
NPY, JSON, ZIP, GIF = "application/x-npy", "application/json", "application/zip", "image/gif"
BODY_LIMIT_MB = 1  # the server's --max-body-mb: oversize bodies stay cheap to send


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX file to serve (default: the shipped model)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600 = 10 min)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending back to back (default 32)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/FD/thread samples (default 5)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"), help="server device (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix (default 0)")
    parser.add_argument("--log", type=Path, help="keep the server's log here (default: a temporary file)")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if args.duration <= 0 or args.concurrency < 1 or args.sample_every <= 0:
        parser.error("--duration and --sample-every must be > 0 and --concurrency >= 1")
    if not args.model.is_file():
        parser.error(f"--model {args.model} does not exist")
    return args


# ---------------------------------------------------------------------------------------
# the request mix: every body built once, before the clock starts
# ---------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def image_bytes(frame: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=fmt)
    return buffer.getvalue()


def multipart(frames: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``frames`` parts, and its Content-Type."""
    boundary = secrets.token_hex(16)
    disposition = 'Content-Disposition: form-data; name="frames"; filename='
    parts = [
        f'--{boundary}\r\n{disposition}"{name}"\r\nContent-Type: {kind}\r\n\r\n'.encode() + data + b"\r\n"
        for name, data, kind in frames
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Kind:
    """One class of request: how to send it and which answers are right."""

    name: str
    weight: float
    expect: tuple[int, ...]  # acceptable statuses; () for a client that hangs up (no answer read)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # "" (sent by httpx), or a socket scenario: declared-oversize, streamed-oversize,
    # hang-up-mid-body, hang-up-before-answer, slow-body
    raw: str = ""
    check: Callable[[httpx.Response], str] | None = None  # "" when the answer is right, else why not
    path: str = "/predict"
    # errors that are the client's own doing: data still in flight when the server, having
    # answered 413 and closed, resets the connection can take the unread answer with it (TCP)
    tolerate: tuple[str, ...] = ()


def examples() -> np.ndarray:
    return np.stack([np.load(p) for p in sorted(EXAMPLES.glob("clip*.npy"))])  # (3, T, C, H, W) uint8, real digits


def build_kinds(model: Path) -> list[Kind]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    clips = examples()
    t, c, h, w = clips.shape[1:]
    run = lambda x: session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]  # noqa: E731

    def npy_answer(expected: np.ndarray) -> Callable[[httpx.Response], str]:
        def check(response: httpx.Response) -> str:
            got = np.load(io.BytesIO(response.content), allow_pickle=False)
            if got.shape != expected.shape:
                return f"shape {got.shape} != {expected.shape}"
            error = float(np.abs(got - expected).max())
            return "" if error <= 1e-4 else f"max error {error:.2e}"

        return check

    def json_answer(expected: np.ndarray) -> Callable[[httpx.Response], str]:
        def check(response: httpx.Response) -> str:
            got = np.asarray(response.json()["frames"], np.float32)
            error = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
            return "" if error <= 1e-4 else f"shape {got.shape} or max error {error:.2e}"

        return check

    def zip_answer(frames: int) -> Callable[[httpx.Response], str]:
        def check(response: httpx.Response) -> str:
            with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                n = len(archive.namelist())
            return "" if n == frames else f"{n} PNGs, expected {frames}"

        return check

    def shape_answer(shape: tuple[int, ...]) -> Callable[[httpx.Response], str]:
        """Lossy inputs (video): the answer's shape and finiteness; its values follow the codec."""

        def check(response: httpx.Response) -> str:
            got = np.load(io.BytesIO(response.content), allow_pickle=False)
            ok = got.shape == shape and bool(np.isfinite(got).all())
            return "" if ok else f"shape {got.shape} (expected {shape}) or non-finite values"

        return check

    def mp4_answer(response: httpx.Response) -> str:
        return "" if response.content[4:8] == b"ftyp" else f"not an MP4: {response.content[:12]!r}"

    def gif_answer(frames: int) -> Callable[[httpx.Response], str]:
        def check(response: httpx.Response) -> str:
            n = Image.open(io.BytesIO(response.content)).n_frames
            return "" if n == frames else f"{n} GIF frames, expected {frames}"

        return check

    one = clips[0]
    floats = (clips[2] / 255.0).astype(np.float32)
    out_frames = run(one[None] / 255.0).shape[1]
    want_one, want_floats = run(one[None] / 255.0)[0], run(floats[None])[0]
    png_parts, png_type = multipart([(f"f{i}.png", image_bytes(one[i, 0], "PNG"), "image/png") for i in range(t)])
    jpeg_frames = [image_bytes(clips[1][i, 0], "JPEG") for i in range(t)]
    jpeg_parts, jpeg_type = multipart([(f"f{i}.jpg", f, "image/jpeg") for i, f in enumerate(jpeg_frames)])
    corrupt_png, corrupt_type = multipart(
        [(f"f{i}.png", image_bytes(one[i, 0], "PNG")[: 40 if i == 3 else None], "image/png") for i in range(t)]
    )
    mp4 = video.encode_video(one, container="mp4")
    gif = video.encode_video(clips[1], container="gif")
    ok = (200,)
    return [
        # good: every body format, every answer type
        Kind("npy uint8 -> npy", 10, ok, npy_bytes(one), {"Content-Type": NPY, "Accept": NPY}, check=npy_answer(want_one)),
        Kind("npy float32 batch of 3 -> npy", 6, ok, npy_bytes((clips / 255.0).astype(np.float32)),
             {"Content-Type": NPY, "Accept": NPY}, check=npy_answer(run(clips / 255.0))),
        Kind("json float -> json", 4, ok, json.dumps({"frames": floats.tolist()}).encode(),
             {"Content-Type": JSON}, check=json_answer(want_floats)),
        Kind("json uint8 -> json", 4, ok, json.dumps({"frames": one.tolist(), "dtype": "uint8"}).encode(),
             {"Content-Type": JSON}, check=json_answer(want_one)),
        Kind("png parts -> zip", 5, ok, png_parts, {"Content-Type": png_type}, check=zip_answer(out_frames)),
        Kind("jpeg parts -> gif", 4, ok, jpeg_parts, {"Content-Type": jpeg_type, "Accept": GIF},
             check=gif_answer(t + out_frames)),
        Kind("npy -> zip", 3, ok, npy_bytes(one), {"Content-Type": NPY, "Accept": ZIP}, check=zip_answer(out_frames)),
        Kind("mp4 video -> npy", 3, ok, mp4, {"Content-Type": "video/mp4", "Accept": NPY},
             check=shape_answer((out_frames, c, h, w))),
        Kind("gif animation -> mp4", 2, ok, gif, {"Content-Type": "image/gif", "Accept": "video/mp4"}, check=mp4_answer),
        Kind("npy, horizon 20 (rollout) -> npy", 2, ok, npy_bytes(one), {"Content-Type": NPY, "Accept": NPY},
             path="/predict?horizon=20", check=shape_answer((20, c, h, w))),
        Kind("slow body (8 pieces, 0.25 s apart)", 2, ok, npy_bytes(one), {"Content-Type": NPY}, raw="slow-body"),
        # bad: each must be a 4xx naming the problem, never a 5xx
        Kind("wrong frame count", 3, (422,), npy_bytes(one[: t - 3]), {"Content-Type": NPY}),
        Kind("wrong frame size", 3, (422,), npy_bytes(np.zeros((t, c, h // 2, w // 2), np.uint8)), {"Content-Type": NPY}),
        Kind("floats out of range", 2, (422,), npy_bytes(clips[0].astype(np.float32)), {"Content-Type": NPY}),
        Kind("truncated npy", 3, (400,), npy_bytes(one)[: len(npy_bytes(one)) // 2], {"Content-Type": NPY}),
        Kind("corrupt png part", 3, (400,), corrupt_png, {"Content-Type": corrupt_type}),
        Kind("truncated mp4", 2, (400, 422), mp4[: len(mp4) // 2], {"Content-Type": "video/mp4"}),
        Kind("broken json", 2, (400,), b'{"frames": [[[', {"Content-Type": JSON}),
        Kind("unsupported content type", 2, (415,), b"hello", {"Content-Type": "text/plain"}),
        Kind("no api key", 2, (401,), npy_bytes(one), {"Content-Type": NPY, "Authorization": ""}),
        Kind("wrong api key", 2, (401,), npy_bytes(one), {"Content-Type": NPY, "Authorization": "Bearer not-the-key"}),
        Kind("oversize, declared", 2, (413,), b"", {"Content-Type": NPY}, raw="declared-oversize"),
        Kind("oversize, streamed", 2, (413,), b"", {"Content-Type": NPY}, raw="streamed-oversize",
             tolerate=("ConnectionResetError", "BrokenPipeError", "IncompleteReadError")),
        Kind("hang-up mid-body", 2, (), npy_bytes(one), {"Content-Type": NPY}, raw="hang-up-mid-body"),
        Kind("hang-up before the answer", 2, (), npy_bytes(one), {"Content-Type": NPY}, raw="hang-up-before-answer"),
    ]  # fmt: skip


def oip_kinds(url: str, key: str, model: Path) -> list[Kind]:
    """Open Inference Protocol infer requests (JSON tensors), when the server has /v2 routes."""
    auth = {"Authorization": f"Bearer {key}"}
    name = httpx.get(url + "/v1/model", headers=auth).json().get("name", "")
    if httpx.get(f"{url}/v2/models/{name}/ready", headers=auth).status_code != 200:
        print("note: no /v2 routes on this server; the soak sends no Open Inference Protocol requests", file=sys.stderr)
        return []
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    one = examples()[0]
    want = session.run(None, {session.get_inputs()[0].name: (one[None] / 255.0).astype(np.float32)})[0]

    def check(response: httpx.Response) -> str:
        output = response.json()["outputs"][0]
        got = np.asarray(output["data"], np.float32).reshape(output["shape"])
        error = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        return "" if error <= 1e-4 else f"shape {got.shape} or max error {error:.2e}"

    def infer(frames: np.ndarray) -> bytes:
        tensor = {"name": "frames", "shape": list(frames.shape), "datatype": "UINT8", "data": frames.ravel().tolist()}
        return json.dumps({"id": "soak", "inputs": [tensor]}).encode()

    def binary(frames: np.ndarray) -> tuple[bytes, dict[str, str]]:
        """The binary tensor extension: a JSON header, then the raw bytes; binary output asked for."""
        tensor = {"name": "frames", "shape": list(frames.shape), "datatype": "UINT8",
                  "parameters": {"binary_data_size": frames.nbytes}}  # fmt: skip
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
        return header + frames.tobytes(), headers

    def check_binary(response: httpx.Response) -> str:
        length = int(response.headers["Inference-Header-Content-Length"])
        output = json.loads(response.content[:length])["outputs"][0]
        got = np.frombuffer(response.content[length:], np.float32).reshape(output["shape"])
        error = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        return "" if error <= 1e-4 else f"shape {got.shape} or max error {error:.2e}"

    path = f"/v2/models/{name}/infer"
    body, headers = binary(one[None])
    return [
        Kind("OIP infer, binary tensors", 4, (200,), body, headers, path=path, check=check_binary),
        Kind("OIP infer, JSON UINT8", 6, (200,), infer(one[None]), {"Content-Type": JSON}, path=path, check=check),
        Kind("OIP infer, wrong shape", 2, (400, 422), infer(one[None, :5]), {"Content-Type": JSON}, path=path),
    ]


# ---------------------------------------------------------------------------------------
# raw-socket scenarios (what httpx will not do on purpose)
# ---------------------------------------------------------------------------------------


async def read_status(reader: asyncio.StreamReader, timeout: float = 120) -> int:
    """The status code of the answer, reading its head and body (Content-Length) so the
    connection ends cleanly."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout)
    return status


async def raw_request(url: str, kind: Kind, key: str) -> int | None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    limit = BODY_LIMIT_MB * 2**20
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: {NPY}\r\n"
    try:
        if kind.raw == "declared-oversize":
            writer.write(f"{head}Content-Length: {limit + 1}\r\n\r\n".encode())
            return await read_status(reader)
        if kind.raw == "streamed-oversize":  # chunked, no length: refused once the limit is passed
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
            answer = asyncio.ensure_future(read_status(reader))
            for _ in range(4 * limit // 65536):
                if answer.done():
                    break
                writer.write(chunk)
                try:
                    await writer.drain()
                except ConnectionError:
                    break
            return await answer
        body = kind.body
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
        if kind.raw == "hang-up-mid-body":
            writer.write(body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(random.uniform(0, 0.2))
            return None
        if kind.raw == "hang-up-before-answer":
            writer.write(body)
            await writer.drain()
            await asyncio.sleep(random.uniform(0, 0.05))  # queued or running by now, sometimes answered
            return None
        if kind.raw == "slow-body":
            piece = -(-len(body) // 8)
            for start in range(0, len(body), piece):
                writer.write(body[start : start + piece])
                await writer.drain()
                await asyncio.sleep(0.25)
            return await read_status(reader)
        raise ValueError(kind.raw)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# ---------------------------------------------------------------------------------------
# the server and its samples
# ---------------------------------------------------------------------------------------


def start_server(args: argparse.Namespace, key: str, log: Path) -> tuple[subprocess.Popen, str]:
    serve_args = [
        "--model",
        str(args.model),
        "--device",
        args.device,
        "--max-body-mb",
        str(BODY_LIMIT_MB),
        "--log-format",
        "json",
    ]
    return common.start_server(serve_args, log, {"STLIGHT_API_KEYS": key, "STLIGHT_REQUEST_TIMEOUT_S": "120"})


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int
    served: int


def sample(pid: int, t: float, served: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return Sample(t, rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads, served)


# ---------------------------------------------------------------------------------------
# the soak
# ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    wrong: Counter[str] = field(default_factory=Counter)
    five_xx: int = 0
    answered: int = 0


CHECK_LOCK = threading.Lock()


def checked(kind: Kind, response: httpx.Response) -> str:
    """One check at a time: np.load parses .npy headers with ast.literal_eval, which is not safe in
    several threads at once (see service/frames.py); the server's own parse is serialised the same way."""
    assert kind.check is not None
    with CHECK_LOCK:
        return kind.check(response)


async def soak(args: argparse.Namespace, url: str, pid: int, kinds: list[Kind], key: str) -> tuple[Tally, list[Sample], float]:
    tally, samples = Tally(), []
    weights = [k.weight for k in kinds]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    began = time.monotonic()
    stop_at = began + args.duration
    bar = tqdm(total=int(args.duration), unit="s", disable=args.no_progress, desc="soak", dynamic_ncols=True)

    async def one(http: httpx.AsyncClient, kind: Kind) -> None:
        tally.sent[kind.name] += 1
        try:
            if kind.raw:
                status = await raw_request(url, kind, key)
                response = None
            else:
                headers = {"Authorization": f"Bearer {key}", **kind.headers}
                headers = {k: v for k, v in headers.items() if v}  # "" removes the key
                response = await http.post(kind.path, content=kind.body, headers=headers)
                status = response.status_code
        except (httpx.HTTPError, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            outcome = f"{type(exc).__name__}"
            tally.outcomes[kind.name][outcome] += 1
            if kind.expect and outcome not in kind.tolerate:  # a request that expected an answer got none
                tally.unexpected[kind.name][outcome] += 1
            return
        outcome = "no answer read" if status is None else str(status)
        tally.outcomes[kind.name][outcome] += 1
        if status is None:
            return
        tally.answered += 1
        tally.five_xx += status >= 500
        if status not in kind.expect:
            tally.unexpected[kind.name][outcome] += 1
        elif response is not None and kind.check is not None:
            why = await asyncio.to_thread(checked, kind, response)
            if why:
                tally.wrong[f"{kind.name}: {why}"] += 1

    async def worker(http: httpx.AsyncClient, index: int) -> None:
        local = random.Random(args.seed * 1000 + index)  # one generator per client: the mix does not depend on timing
        for kind in kinds[index :: args.concurrency]:  # first, every class once across the clients (short runs too)
            if time.monotonic() >= stop_at:
                return
            await one(http, kind)
        while time.monotonic() < stop_at:
            await one(http, local.choices(kinds, weights)[0])

    async def sampler() -> None:
        shown = 0
        while True:
            now = time.monotonic() - began
            samples.append(sample(pid, now, tally.answered))
            step = min(int(now), int(args.duration)) - shown
            if step > 0:
                bar.update(step)
                shown += step
            bar.set_postfix(
                answered=tally.answered, five_xx=tally.five_xx, rss_mb=f"{samples[-1].rss_mb:.0f}", fds=samples[-1].fds
            )
            if now >= args.duration:
                return
            await asyncio.sleep(min(args.sample_every, max(0.0, args.duration - now)))

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker(http, i) for i in range(args.concurrency)))
        await sampling
    bar.close()
    elapsed = time.monotonic() - began
    await asyncio.sleep(2.0)  # the server closes the last hung-up connections; then the idle sample
    samples.append(sample(pid, time.monotonic() - began, tally.answered))
    return tally, samples, elapsed


def server_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == "stlight_requests_total":
                counts[s.labels["status"]] += s.value
            elif s.name == "stlight_dropped_requests_total":
                counts[f"dropped {s.labels['reason']}"] += s.value
    return dict(counts)


def report(tally: Tally, samples: list[Sample], elapsed: float, server: dict[str, float], tracebacks: int, args) -> dict:
    server_5xx = int(sum(v for k, v in server.items() if k[:1] == "5"))
    print(f"\nsoak: {elapsed:.0f} s, {args.concurrency} clients, model {args.model.name} on --device {args.device}")
    print(f"requests sent {sum(tally.sent.values()):,}; answered {tally.answered:,} ({tally.answered / elapsed:.1f}/s)")
    print(f"5xx answers: {tally.five_xx} seen by clients, {server_5xx} counted by the server (must be 0)")
    print(f"server log tracebacks: {tracebacks}")
    print("\n| class | sent | outcomes | unexpected |\n|---|---|---|---|")
    for kind, sent in sorted(tally.sent.items(), key=lambda kv: -kv[1]):
        outcomes = ", ".join(f"{k} ×{v}" for k, v in tally.outcomes[kind].most_common())
        unexpected = ", ".join(f"{k} ×{v}" for k, v in tally.unexpected[kind].most_common()) or "0"
        print(f"| {kind} | {sent:,} | {outcomes} | {unexpected} |")
    if tally.wrong:
        print("\nwrong answers:", dict(tally.wrong))
    print("\nserver metrics, requests by status:", {k: int(v) for k, v in sorted(server.items())})
    print("\n| t (s) | RSS MiB | open FDs | threads | answered |\n|---|---|---|---|---|")
    loaded, idle_after = samples[:-1], samples[-1]  # the last sample is taken after the load stopped
    first, last = next((x for x in loaded if x.t >= 60), loaded[0]), loaded[-1]
    for i, x in enumerate(samples):
        if i in (0, len(samples) - 1) or x is first or x is last or int(x.t // 60) != int(samples[i - 1].t // 60):
            print(f"| {x.t:.0f}{' (idle)' if x is idle_after else ''} | {x.rss_mb:.1f} | {x.fds} | {x.threads} | {x.served:,} |")
    late = [x for x in loaded if x.t >= first.t]
    # a least-squares slope over every sample from minute 1 on: one noisy sample moves it little
    slope = float(np.polyfit([x.t for x in late], [x.rss_mb for x in late], 1)[0]) * 60 if len(late) > 2 else float("nan")
    growth = {
        "rss_mb": (first.rss_mb, last.rss_mb),
        "fds": (first.fds, last.fds),
        "threads": (first.threads, last.threads),
    }
    print(f"\ngrowth under load, from t={first.t:.0f} s to t={last.t:.0f} s:")
    for name, (a, b) in growth.items():
        print(f"  {name}: {a:.1f} -> {b:.1f} ({b - a:+.1f}, {100 * (b - a) / a:+.1f} %)")
    print(f"  RSS trend from t={first.t:.0f} s: {slope:+.2f} MiB/min (least squares over {len(late)} samples)")
    before = samples[0]
    print(
        f"idle before -> idle after: RSS {before.rss_mb:.1f} -> {idle_after.rss_mb:.1f} MiB, "
        f"FDs {before.fds} -> {idle_after.fds}, threads {before.threads} -> {idle_after.threads}"
    )
    return {
        "elapsed_s": elapsed,
        "concurrency": args.concurrency,
        "sent": sum(tally.sent.values()),
        "answered": tally.answered,
        "five_xx_client": tally.five_xx,
        "five_xx_server": server_5xx,
        "tracebacks": tracebacks,
        "unexpected": {k: dict(v) for k, v in tally.unexpected.items() if v},
        "wrong": dict(tally.wrong),
        "outcomes": {k: dict(v) for k, v in tally.outcomes.items()},
        "server_statuses": server,
        "growth": growth,
        "rss_mb_per_min": slope,
        "idle_before_after": {"rss_mb": (before.rss_mb, idle_after.rss_mb), "fds": (before.fds, idle_after.fds)},
        "samples": [s.__dict__ for s in samples],
    }


def main() -> int:
    args = parse_args()
    key = secrets.token_urlsafe(24)
    print(f"building requests from {EXAMPLES} and references with in-process ONNX Runtime ...", file=sys.stderr)
    kinds = build_kinds(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or Path(tmp) / "server.log"
        proc, url = start_server(args, key, log)
        try:
            kinds += oip_kinds(url, key, args.model)
            tally, samples, elapsed = asyncio.run(soak(args, url, proc.pid, kinds, key))
            server = server_counts(url)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        text = log.read_text(errors="replace")
        tracebacks = text.count("Traceback")
        figures = report(tally, samples, elapsed, server, tracebacks, args)
        figures["exit_status"] = code
        print(f"server exit status after SIGTERM: {code}")
        if key in text:
            print("the API key appears in the server log", file=sys.stderr)
            return 1
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=1, default=str))
    unexpected = any(tally.unexpected.values())
    failed = figures["five_xx_client"] or figures["five_xx_server"] or tracebacks or unexpected or tally.wrong or code
    print("FAIL" if failed else "PASS: no 5xx, every outcome as expected, every good answer right")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
