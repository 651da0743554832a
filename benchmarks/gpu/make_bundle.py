"""Build the offline bundle that installs ``stlight serve --device cuda`` and
``benchmarks/gpu_check.py`` on a machine without network access (the GPU host), on a machine
that has it.

    python benchmarks/gpu/make_bundle.py                     # for the GPU host: out/gpu-bundle/
    python benchmarks/gpu/make_bundle.py --list              # what it would download, nothing more

What it does:

1. resolves, from wheels only, what ``stlight`` needs at run time for the target (CPython 3.12 on
   manylinux x86_64 by default: the GPU host), with ONNX Runtime's GPU build and the build backend
   (setuptools) that installing the project from its checkout needs;
2. leaves out what the target already has (``--host-packages``, by default
   ``benchmarks/gpu/host-packages.txt``, the host's list: its torch, numpy, onnx... stay);
3. downloads the rest (``pip download``), rewrites each wheel with its members stored
   uncompressed (the same files, so the same RECORD; a wheel's own deflate leaves xz nothing to
   find), writes ``requirements.txt`` (what the host installs) and ``bundle.json``;
4. packs them as one tar compressed with xz (Python's ``lzma``: the host unpacks with the standard
   library alone, where ``zstd`` may be missing), in independent chunks compressed in parallel,
   and splits it into numbered parts small enough to travel with the repository in one command
   each (at most 60 MiB, less when the working tree is large), with ``manifest.json`` (the SHA-256
   and size of every part and of the whole) and ``SHA256SUMS``.

The host side is ``benchmarks/gpu/host_install.py``; docs/gpu.md walks through both. ``--for-this-
machine`` builds for the Python and platform running this script instead (how the tests run the
whole path on a CPU machine); ``--runtime onnxruntime`` bundles ONNX Runtime's CPU build.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "out" / "gpu-bundle"
DEFAULT_HOST_PACKAGES = Path(__file__).with_name("host-packages.txt")
MIB = 1 << 20
MAX_PART = 60 * MIB
UPLOAD_LIMIT = 64 * MIB  # what one command may carry to the GPU host: the working tree included
MAX_CARRY = 8  # git-ignored paths one command may name (the manifest is one)
ARCHIVE = "bundle.tar.xz"
FORMAT = "stlight-offline-bundle/1"  # host_install.py reads this one
CHUNK = 32 * MIB  # raw bytes per independently compressed xz stream (8 MiB dictionary at preset 6)
RUNTIMES = ("onnxruntime-gpu", "onnxruntime")

# The GPU host (../shared/GPU-HOST.md): Python 3.12.3 on Linux x86_64; a glibc recent enough for
# every manylinux tag up to 2_39 (pip does not widen an explicit --platform, so each is named).
TARGET_PYTHON = "3.12"
TARGET_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + ["manylinux2014_x86_64"]
TARGET_MARKERS = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}

# pip evaluates environment markers against the interpreter it runs on, even under --platform and
# --python-version: this runs pip with the target's marker values patched in.
PIP_FOR_TARGET = """
import json, sys
import pip._vendor.packaging.markers as markers
_host = markers.default_environment
_target = json.loads(sys.argv[1])
markers.default_environment = lambda: {**_host(), **_target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


class BundleError(Exception):
    """What stops a bundle from being built, said in one line."""


def canonical(name: str) -> str:
    """PEP 503's normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the wheels are for; ``None`` fields: the running ones."""

    python: str | None = TARGET_PYTHON
    platforms: tuple[str, ...] = tuple(TARGET_PLATFORMS)
    markers: dict[str, str] = field(default_factory=lambda: dict(TARGET_MARKERS))

    @classmethod
    def here(cls) -> Target:
        return cls(python=None, platforms=(), markers={})

    def describe(self) -> str:
        if self.python is None:
            return f"this machine: CPython {platform.python_version()} on {sys.platform} {platform.machine()}"
        glibc = sorted(int(m.group(1)) for tag in self.platforms if (m := re.match(r"manylinux_2_(\d+)_", tag)))
        kinds = sorted({re.sub(r"_2_\d+|2014", "", tag) for tag in self.platforms})
        span = f" (glibc 2.{glibc[0]} to 2.{glibc[-1]})" if glibc else ""
        return f"CPython {self.python} on {', '.join(kinds)}{span}"

    def pip(self, *args: str) -> list[str]:
        """``python -m pip ARGS`` for this target, wheels only."""
        if self.python is None:
            return [sys.executable, "-m", "pip", *args, "--only-binary=:all:"]
        markers = {**self.markers, "python_version": self.python, "python_full_version": f"{self.python}.0"}
        flags = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp"]
        flags += [f"--platform={tag}" for tag in self.platforms]
        return [sys.executable, "-c", PIP_FOR_TARGET, json.dumps(markers), *args, *flags]


# ---------------------------------------------------------------------------------------
# what to bundle
# ---------------------------------------------------------------------------------------


def read_host_packages(spec: str) -> list[str]:
    """Name patterns (canonical) from a host list file, or none for ``none``."""
    if spec == "none":
        return []
    path = Path(spec)
    if not path.is_file():
        raise BundleError(f"--host-packages: expected a file of package names (or 'none'), {spec} is not a file")
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            patterns.append(canonical(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]).replace("-*", "*"))
    return patterns


def on_host(name: str, patterns: list[str]) -> bool:
    name = canonical(name)
    return any(fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name.replace("-", ""), pattern) for pattern in patterns)


def project_requirements(runtime: str, cuda_libraries: bool = False) -> tuple[list[str], list[str]]:
    """The project's run-time requirements with ONNX Runtime's two lines replaced by ``runtime``
    (without the CUDA and cuDNN wheels unless ``cuda_libraries``: the GPU host's come with its
    torch), and its build requirements."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise BundleError("make_bundle.py needs Python 3.11 or newer (tomllib) to read pyproject.toml") from None
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime_lines = [r for r in project["project"]["dependencies"] if canonical(re.split(r"[=<>!~ ;\[]", r)[0]) not in RUNTIMES]
    floor = next(
        (m.group(1) for r in project["project"]["dependencies"] if (m := re.match(r"onnxruntime(?:-gpu)?(>=[\d.]+)", r))), ""
    )
    extras = "[cuda,cudnn]" if cuda_libraries else ""
    return [f"{runtime}{extras}{floor}", *runtime_lines], list(project["build-system"]["requires"])


def resolve(target: Target, requirements: list[str], work: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution ``requirements`` need on ``target``, from wheels."""
    report = work / "resolved.json"
    # --target: older pips (23.x, what a new venv brings) refuse --platform without it, even with --dry-run
    argv = ["install", "--dry-run", "--ignore-installed", "--quiet", "--target", str(work / "target"), "--report", str(report)]
    command = target.pip(*argv, *requirements)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BundleError(f"pip could not resolve the requirements for {target.describe()} from wheels:\n{tail}")
    items = json.loads(report.read_text())["install"]
    return sorted((canonical(i["metadata"]["name"]), i["metadata"]["version"]) for i in items)


def download(target: Target, pins: list[tuple[str, str]], dest: Path) -> list[Path]:
    command = target.pip("download", "--no-deps", "--quiet", "--dest", str(dest), *(f"{n}=={v}" for n, v in pins))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"pip download failed:\n{done.stderr.strip()[-3000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(pins):
        raise BundleError(f"expected {len(pins)} wheels in {dest}, found {len(wheels)}: {[w.name for w in wheels]}")
    return wheels


# ---------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------


def store_wheel(source: Path, dest: Path) -> None:
    """``source`` rewritten with every member stored uncompressed: byte-for-byte the same files
    (RECORD's hashes still hold), but a wheel's own deflate no longer hides them from xz."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.external_attr, copy.create_system, copy.compress_type = (
                info.external_attr,
                info.create_system,
                zipfile.ZIP_STORED,
            )
            with zin.open(info) as src, zout.open(copy, "w", force_zip64=info.file_size > 2**31 - 1) as dst:
                shutil.copyfileobj(src, dst, MIB)


def _compress(chunk: bytes, preset: int) -> bytes:
    return lzma.compress(chunk, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)


class PartWriter:
    """Bytes in, numbered parts of at most ``part_size`` bytes out, each hashed as it is written."""

    def __init__(self, out: Path, part_size: int) -> None:
        self.out, self.part_size = out, part_size
        self.parts: list[dict[str, Any]] = []
        self.whole = hashlib.sha256()
        self.size = 0
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._written = 0

    def _roll(self) -> None:
        self._close_part()
        name = f"{ARCHIVE}.{len(self.parts) + 1:03d}"
        self._file = open(self.out / name, "wb")  # noqa: SIM115 - closed in _close_part
        self.parts.append({"name": name})
        self._hash, self._written = hashlib.sha256(), 0

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1].update(size=self._written, sha256=self._hash.hexdigest())
            self._file = None

    def write(self, data: bytes) -> None:
        self.whole.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            if self._file is None or self._written == self.part_size:
                self._roll()
            assert self._file is not None
            n = min(len(view), self.part_size - self._written)
            self._file.write(view[:n])
            self._hash.update(view[:n])
            self._written += n
            view = view[n:]

    def close(self) -> None:
        self._close_part()


class ParallelXz:
    """A file-like sink for ``tarfile``: raw bytes are cut into ``CHUNK``-sized pieces, each
    compressed to its own xz stream in a process pool, and written to ``sink`` in order. The
    concatenated streams are one valid .xz file (``xz -d`` and Python's ``lzma.open`` read them
    all), made in a fraction of the time one stream takes on several cores."""

    def __init__(self, sink: PartWriter, preset: int, workers: int) -> None:
        self.sink, self.preset = sink, preset
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
        self.pending: deque[concurrent.futures.Future[bytes]] = deque()
        self.buffer = bytearray()
        self.workers = workers
        self.raw = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.raw += len(data)
        while len(self.buffer) >= CHUNK:
            self._submit(bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
        return len(data)

    def _submit(self, chunk: bytes) -> None:
        self.pending.append(self.pool.submit(_compress, chunk, self.preset))
        while len(self.pending) > 2 * self.workers:  # bounded memory: a few chunks in flight
            self.sink.write(self.pending.popleft().result())

    def close(self) -> None:
        if self.buffer:
            self._submit(bytes(self.buffer))
            self.buffer.clear()
        while self.pending:
            self.sink.write(self.pending.popleft().result())
        self.pool.shutdown()


def travelling_bytes(repo: Path) -> int:
    """What travels to the GPU host with every command besides the carried part: the working
    tree's tracked and untracked-but-not-ignored files, and ``../shared``."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True
    )
    if listed.returncode != 0:  # not a checkout: nothing of it travels
        return 0
    total = 0
    for name in set(listed.stdout.decode(errors="replace").split("\0")) - {""}:
        path = repo / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    shared = repo.parent / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def part_size(requested_mib: float | None, repo: Path) -> tuple[int, str]:
    """Bytes per part and why: 60 MiB, or less where the tree that travels with it needs room."""
    if requested_mib is not None:
        size = int(requested_mib * MIB)
        if not 0 < size <= MAX_PART:
            raise BundleError(f"--part-mib must be above 0 and at most {MAX_PART // MIB}, got {requested_mib:g}")
        return size, f"{requested_mib:g} MiB (--part-mib)"
    tree = travelling_bytes(repo)
    room = UPLOAD_LIMIT - tree - 2 * MIB  # the manifest and the unexpected
    size = min(MAX_PART, room // MIB * MIB)
    if size < 8 * MIB:
        raise BundleError(
            f"the working tree and ../shared take {tree / MIB:.1f} MiB of the {UPLOAD_LIMIT // MIB} MiB per command"
        )
    return (
        size,
        f"{size / MIB:g} MiB: the {UPLOAD_LIMIT // MIB} MiB a command carries less {tree / MIB:.1f} MiB "
        "of working tree and ../shared and 2 MiB spare",
    )


def pack(staging: Path, out: Path, size: int, preset: int, workers: int) -> PartWriter:
    """``staging`` as one xz-compressed tar in parts of ``size`` bytes under ``out``."""
    writer = PartWriter(out, size)
    xz = ParallelXz(writer, preset, workers)
    try:
        with tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(staging.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(staging)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if path.is_file():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        xz.close()
    finally:
        xz.pool.shutdown(cancel_futures=True)
        writer.close()
    return writer


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="The host side: benchmarks/gpu/host_install.py. Walk-through: docs/gpu.md.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the parts and manifest (default {DEFAULT_OUT.relative_to(REPO)}; emptied first)",
    )
    parser.add_argument(
        "--host-packages",
        default=str(DEFAULT_HOST_PACKAGES),
        help="file of distribution names the target already has, left out of the bundle (default: the GPU host's list, "
        "benchmarks/gpu/host-packages.txt); 'none' bundles everything",
    )
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default=RUNTIMES[0], help="the ONNX Runtime build to bundle (default onnxruntime-gpu)"
    )
    parser.add_argument(
        "--cuda-libraries",
        action="store_true",
        help="also bundle CUDA 13 and cuDNN 9 as wheels (onnxruntime-gpu[cuda,cudnn], over 1 GB) for a machine that has "
        "neither a CUDA torch nor a system CUDA; give it a --host-packages list without nvidia-*",
    )
    parser.add_argument(
        "--for-this-machine",
        action="store_true",
        help="wheels for the Python and platform running this script (default: CPython 3.12, manylinux x86_64)",
    )
    parser.add_argument(
        "--part-mib",
        type=float,
        help="MiB per part (at most 60; default: 60, less when the working tree and ../shared need the room)",
    )
    parser.add_argument(
        "--preset",
        type=int,
        default=6,
        choices=range(10),
        metavar="0-9",
        help="xz preset (default 6; 9 with its extreme flag gained under 1%% on ONNX Runtime's CUDA library)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes compressing in parallel (default: every CPU)"
    )
    parser.add_argument("--list", action="store_true", help="print what would be bundled and left out, download nothing")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the bundle in --out against its manifest, today's pyproject.toml and today's working tree (each part "
        "must still fit one upload beside it), then print the `run` sequence for the GPU host (build nothing)",
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, work: Path) -> tuple[Target, list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """The target, the host's requirements file, and the (name, version) pins to bundle and to leave to the host."""
    target = Target.here() if args.for_this_machine else Target()
    patterns = read_host_packages(args.host_packages)
    if args.cuda_libraries and args.runtime != "onnxruntime-gpu":
        raise BundleError("--cuda-libraries goes with --runtime onnxruntime-gpu (the CPU build uses no CUDA)")
    requirements, build = project_requirements(args.runtime, args.cuda_libraries)
    resolved = resolve(target, [*requirements, *build], work)
    always = {canonical(args.runtime)} | {canonical(re.split(r"[=<>!~ ;\[]", b)[0]) for b in build}
    bundled = [(n, v) for n, v in resolved if n in always or not on_host(n, patterns)]
    left = [(n, v) for n, v in resolved if (n, v) not in bundled]
    return target, requirements, bundled, left


def stage(target: Target, requirements: list[str], bundled: list[tuple[str, str]], staging: Path, meta: dict[str, Any]) -> int:
    """Download ``bundled`` into ``staging/wheels`` (members stored), with ``requirements.txt`` and
    ``bundle.json``; the bytes pip downloaded."""
    downloaded = staging.parent / "downloaded"
    downloaded.mkdir()
    (staging / "wheels").mkdir(parents=True)
    wheels = download(target, bundled, downloaded)
    size = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        store_wheel(wheel, staging / "wheels" / wheel.name)
        wheel.unlink()
    (staging / "requirements.txt").write_text(
        "# what host_install.py installs with --no-index from wheels/ (the project's run-time\n"
        "# requirements; those the host already has are left as they are)\n" + "\n".join(requirements) + "\n"
    )
    meta["wheels"] = sorted(p.name for p in (staging / "wheels").iterdir())
    (staging / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")
    return size


def write_bundle(staging: Path, out: Path, size: int, preset: int, workers: int, meta: dict[str, Any]) -> dict[str, Any]:
    """``staging`` packed into ``out`` (emptied first): the parts, ``manifest.json``, ``SHA256SUMS``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    writer = pack(staging, out, size, preset, workers)
    manifest = {
        "format": FORMAT,
        "archive": ARCHIVE,
        "compression": f"xz (lzma preset {preset}), concatenated streams of {CHUNK // MIB} MiB raw each",
        "sha256": writer.whole.hexdigest(),
        "size": writer.size,
        "raw_size": sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()),
        "part_size": size,
        "parts": writer.parts,
        **meta,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "SHA256SUMS").write_text("".join(f"{p['sha256']}  {p['name']}\n" for p in writer.parts))
    return manifest


def verify(out: Path, repo: Path) -> dict[str, Any]:
    """The bundle in ``out`` as its manifest says, every part fitting one upload beside the tree."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"no readable manifest in {out} ({exc}); build the bundle first") from None
    if "requirements" in manifest:
        now, _ = project_requirements(manifest["runtime"], "[cuda,cudnn]" in manifest["requirements"][0])
        added, gone = set(now) - set(manifest["requirements"]), set(manifest["requirements"]) - set(now)
        if added or gone:
            raise BundleError(
                f"pyproject.toml's requirements changed since the bundle was built (new: {', '.join(sorted(added)) or '-'}; "
                f"gone: {', '.join(sorted(gone)) or '-'}): build the bundle again"
            )
    for part in manifest["parts"]:
        path = out / part["name"]
        if not path.is_file() or path.stat().st_size != part["size"]:
            raise BundleError(f"{path}: missing or not {part['size']} bytes; build the bundle again")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != part["sha256"]:
            raise BundleError(f"{path}: SHA-256 does not match the manifest; build the bundle again")
    uploads(manifest, travelling_bytes(repo), (out / "manifest.json").stat().st_size)  # raises if a part no longer fits
    return manifest


def uploads(manifest: dict[str, Any], tree: int, manifest_bytes: int) -> list[list[dict[str, Any]]]:
    """The parts grouped into as few commands as fit: consecutive parts share one while they, the
    manifest and the tree stay within one upload (a short last part rides with the one before)."""
    room = UPLOAD_LIMIT - tree - manifest_bytes - MIB // 2
    groups: list[list[dict[str, Any]]] = []
    for part in manifest["parts"]:
        if part["size"] > room:
            raise BundleError(
                f"{part['name']} ({part['size'] / MIB:.1f} MiB) and the working tree with ../shared ({tree / MIB:.1f} MiB) "
                f"exceed the {UPLOAD_LIMIT // MIB} MiB one command carries: build the bundle again (it sizes parts to the tree)"
            )
        if groups and sum(p["size"] for p in groups[-1]) + part["size"] <= room and len(groups[-1]) < MAX_CARRY - 1:
            groups[-1].append(part)
        else:
            groups.append([part])
    return groups


def run_sequence(manifest: dict[str, Any], out: Path, repo: Path) -> str:
    """The `run` calls that take the bundle to the GPU host and check it there (docs/gpu.md)."""
    folder = out.resolve().relative_to(repo) if out.resolve().is_relative_to(repo) else out
    receive = "python3 benchmarks/gpu/host_install.py receive"
    check = (
        'python3 benchmarks/gpu/host_install.py install && python3 benchmarks/gpu/host_install.py check --out "$OUT/gpu-check"'
    )
    groups = uploads(manifest, travelling_bytes(repo), len(json.dumps(manifest, indent=1)) + 1)
    lines = []
    for i, group in enumerate(groups, 1):
        carry = json.dumps([f"{folder}/manifest.json", *(f"{folder}/{p['name']}" for p in group)])
        last = i == len(groups)
        command = check.replace("install &&", f"install {folder} &&", 1) if last else f"{receive} {folder}"
        timeout = 420 if last else 300 if i == 1 else 120
        lines.append(f"run(carry={carry}, timeout_s={timeout}, command={json.dumps(command)})")
    lines.append(
        f"# only if the check must run again, while the host is still warm:\nrun(timeout_s=300, command={json.dumps(check)})"
    )
    lines.append("give_back()")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    if args.verify:
        try:
            manifest = verify(args.out, REPO)
        except BundleError as exc:
            print(f"make_bundle: {exc}", file=sys.stderr)
            return 1
        print(f"{args.out}: {len(manifest['parts'])} parts as the manifest says; they go up in these commands:")
        print(run_sequence(manifest, args.out, REPO))
        return 0
    try:
        size, why = part_size(args.part_mib, REPO)
        with tempfile.TemporaryDirectory(prefix="stlight-bundle-") as tmp:
            target, requirements, bundled, left = plan(args, Path(tmp))
            print(f"target: {target.describe()}; runtime: {args.runtime}", flush=True)
            print(f"bundled ({len(bundled)}): {', '.join(f'{n}=={v}' for n, v in bundled)}", flush=True)
            print(f"left to the host ({len(left)}): {', '.join(f'{n}=={v}' for n, v in left) or 'nothing'}", flush=True)
            if args.list:
                return 0
            meta: dict[str, Any] = {
                "target": target.describe(),
                "requirements": requirements,
                "runtime": args.runtime,
                "runtime_version": dict(bundled)[canonical(args.runtime)],
                "left_to_host": [f"{n}=={v}" for n, v in left],
            }
            meta["download_size"] = stage(target, requirements, bundled, Path(tmp) / "bundle", meta)
            print(
                f"downloaded {len(bundled)} wheels, {meta['download_size'] / MIB:.1f} MiB, in {time.perf_counter() - began:.0f} s"
            )
            t = time.perf_counter()
            manifest = write_bundle(Path(tmp) / "bundle", args.out, size, args.preset, max(1, args.workers), meta)
            packed_s = time.perf_counter() - t
    except BundleError as exc:
        print(f"make_bundle: {exc}", file=sys.stderr)
        return 1
    print(
        f"packed {manifest['raw_size'] / MIB:.1f} MiB (wheels stored) into {manifest['size'] / MIB:.1f} MiB of xz in "
        f"{packed_s:.0f} s: {len(manifest['parts'])} part(s) of at most {why}",
        flush=True,
    )
    for p in manifest["parts"]:
        print(f"  {args.out / p['name']}  {p['size'] / MIB:.1f} MiB  {p['sha256'][:16]}", flush=True)
    print(f"manifest: {args.out / 'manifest.json'}; done in {time.perf_counter() - began:.0f} s", flush=True)
    print(f"to the GPU host, back to back (docs/gpu.md):\n{run_sequence(manifest, args.out, REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
