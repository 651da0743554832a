"""Install an offline bundle from ``make_bundle.py`` on the machine without network (the GPU host)
and run the GPU check. Python's standard library only: this runs before anything is installed.

    python benchmarks/gpu/host_install.py receive              # one per command, as each part arrives
    python benchmarks/gpu/host_install.py install              # every part here: check, unpack, install
    python benchmarks/gpu/host_install.py check --out "$OUT"   # benchmarks/gpu_check.py --quick

``receive`` copies the manifest and whichever parts ``out/gpu-bundle/`` holds now into the store
(``~/stlight-bundle``), each checked against the manifest's SHA-256 as it arrives, and says which
are still missing. ``install`` receives too, then checks every part and the whole archive,
reassembles and unpacks it (the xz-compressed tar, read as one stream across the parts), removes
every installed ONNX Runtime that is not the bundle's (the host's CPU ``onnxruntime`` and
``onnxruntime-gpu`` install the same ``onnxruntime`` module), runs ``pip install --no-index
--find-links`` on the bundle's requirements, installs this checkout without dependencies
(editable), and says what ONNX Runtime now offers. It installs into the environment of the Python
that runs it; run again, it skips what is already done. ``check`` runs
``benchmarks/gpu_check.py --quick`` with the rest of its arguments.

Exit status: 0 done; 1 the bundle is incomplete or damaged, or an install step failed (the
message names the part or the step); the check's own status for ``check``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = REPO / "out" / "gpu-bundle"
DEFAULT_STORE = Path.home() / "stlight-bundle"
FORMAT = "stlight-offline-bundle/1"
RUNTIMES = ("onnxruntime", "onnxruntime-gpu")
MIB = 1 << 20


class BundleError(Exception):
    """The bundle cannot be installed as it is; the message names the part or step and why."""


def say(message: str) -> None:
    print(f"host_install: {message}", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(
            f"no manifest at {path}: make_bundle.py writes manifest.json beside the parts; carry it with every part"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a bundle manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(
            f"{path}: expected a manifest of format {FORMAT!r}, got "
            f"{manifest.get('format') if isinstance(manifest, dict) else type(manifest).__name__!r}"
        )
    for part in manifest["parts"]:
        if Path(part["name"]).name != part["name"] or not part["name"].startswith(manifest["archive"] + "."):
            raise BundleError(f"{path}: part name {part['name']!r} is not a plain {manifest['archive']}.NNN file name")
    return manifest


def check_part(path: Path, entry: dict[str, Any]) -> None:
    size = path.stat().st_size
    if size != entry["size"]:
        raise BundleError(f"{path.name}: expected {entry['size']} bytes, got {size} (cut short in transit? upload it again)")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise BundleError(
            f"{path.name}: SHA-256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}... "
            "(damaged; upload it again)"
        )


def missing_parts(store: Path, manifest: dict[str, Any]) -> list[str]:
    return [p["name"] for p in manifest["parts"] if not (store / p["name"]).is_file()]


def receive(folder: Path, store: Path) -> dict[str, Any]:
    """Copy the manifest and the parts in ``folder`` into ``store``, each checked on arrival."""
    manifest = load_manifest(folder / "manifest.json")
    store.mkdir(parents=True, exist_ok=True)
    kept = store / "manifest.json"
    if kept.is_file() and load_manifest(kept)["sha256"] != manifest["sha256"]:
        say(f"{store} held another bundle: starting afresh")
        for old in store.iterdir():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    shutil.copyfile(folder / "manifest.json", kept)
    for entry in manifest["parts"]:
        source, dest = folder / entry["name"], store / entry["name"]
        if not source.is_file() or (dest.is_file() and dest.stat().st_size == entry["size"]):
            continue
        check_part(source, entry)
        shutil.copyfile(source, dest.with_suffix(dest.suffix + ".partial"))
        dest.with_suffix(dest.suffix + ".partial").replace(dest)
        say(f"received {entry['name']} ({entry['size'] / MIB:.1f} MiB, SHA-256 ok)")
    missing = missing_parts(store, manifest)
    have = len(manifest["parts"]) - len(missing)
    say(
        f"{have} of {len(manifest['parts'])} parts in {store}"
        + (f"; still missing: {', '.join(missing)}" if missing else ": complete")
    )
    return manifest


class Parts(io.RawIOBase):
    """The parts read back to back as one file, hashed on the way (no reassembled copy on disk)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.index, self.handle = paths, 0, open(paths[0], "rb")  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            n = self.handle.readinto(buffer)
            if n:
                self.digest.update(memoryview(buffer)[:n])
                return n
            if self.index + 1 == len(self.paths):
                return 0
            self.handle.close()
            self.index += 1
            self.handle = open(self.paths[self.index], "rb")  # noqa: SIM115

    def close(self) -> None:
        self.handle.close()
        super().close()


def unpack(store: Path, manifest: dict[str, Any]) -> Path:
    """Check every part, then stream them through xz and tar into ``store/bundle``."""
    missing = missing_parts(store, manifest)
    if missing:
        raise BundleError(
            f"cannot install: {len(missing)} of {len(manifest['parts'])} parts missing ({', '.join(missing)}); receive them first"
        )
    for entry in manifest["parts"]:
        check_part(store / entry["name"], entry)
    dest, done = store / "bundle", store / "bundle" / ".unpacked"
    if done.is_file() and done.read_text() == manifest["sha256"]:
        say(f"already unpacked in {dest}")
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    began = time.perf_counter()
    parts = Parts([store / p["name"] for p in manifest["parts"]])
    try:
        with lzma.open(parts) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                # the "data" filter refuses absolute paths, "..", links out of dest and devices
                tar.extract(member, dest, filter="data")
            while stream.read(MIB):  # the tar's end-of-archive padding, so the hash covers everything
                pass
    except (lzma.LZMAError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"the archive does not unpack: {type(exc).__name__}: {exc}") from None
    finally:
        parts.close()
    if parts.digest.hexdigest() != manifest["sha256"]:
        raise BundleError("the reassembled archive's SHA-256 does not match the manifest's")
    done.write_text(manifest["sha256"])
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    say(f"unpacked {manifest['size'] / MIB:.1f} MiB into {size / MIB:.1f} MiB in {time.perf_counter() - began:.1f} s: {dest}")
    return dest


def run(*command: str, what: str) -> None:
    say(f"{what}: {' '.join(command)}")
    began = time.perf_counter()
    done = subprocess.run(command)
    if done.returncode != 0:
        raise BundleError(f"{what} failed (exit {done.returncode}); pip's message is above")
    say(f"{what}: done in {time.perf_counter() - began:.1f} s")


def installed_runtimes() -> dict[str, str]:
    """ONNX Runtime distributions installed in this environment, name -> version."""
    from importlib import metadata

    found = {}
    for name in RUNTIMES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def install(folder: Path, store: Path, repo: Path) -> None:
    manifest = receive(folder, store) if (folder / "manifest.json").is_file() else load_manifest(store / "manifest.json")
    bundle = unpack(store, manifest)
    if importlib.util.find_spec("pip") is None:  # a venv made --without-pip: Python carries its own copy
        run(sys.executable, "-m", "ensurepip", what="installing pip from Python's own copy")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    runtime, version = manifest["runtime"], manifest["runtime_version"]
    present = installed_runtimes()
    if present != {runtime: version}:
        if present:  # any other ONNX Runtime: both own the same module, so one removal would break the other
            run(*pip, "uninstall", "--yes", *present, what=f"removing {', '.join(f'{n} {v}' for n, v in present.items())}")
        offline = ["--no-index", "--find-links", str(bundle / "wheels")]
        run(*pip, "install", *offline, "-r", str(bundle / "requirements.txt"), what="installing from the bundle")
    else:
        say(f"{runtime} {version} is installed already")
    offline = ["--no-index", "--find-links", str(bundle / "wheels")]
    run(
        *pip,
        "install",
        "--quiet",
        *offline,
        "--no-deps",
        "--editable",
        str(repo),
        what="installing this checkout (no dependencies)",
    )
    probe = "import onnxruntime as o; print(o.__version__, ' '.join(o.get_available_providers()))"
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=store)
    if shown.returncode != 0:
        raise BundleError(f"onnxruntime does not import after the install: {shown.stderr.strip()[-500:]}")
    say(f"onnxruntime {shown.stdout.strip()}")
    if runtime == "onnxruntime-gpu" and "CUDAExecutionProvider" not in shown.stdout:
        raise BundleError("onnxruntime-gpu is installed but offers no CUDAExecutionProvider")


def check(repo: Path, rest: list[str]) -> int:
    command = [sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--quick", *rest]
    say(f"running {' '.join(command)}")
    return subprocess.run(command, cwd=repo).returncode


@contextlib.contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except BundleError as exc:
        print(f"host_install: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help=f"where parts are kept and unpacked (default {DEFAULT_STORE})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("receive", "copy the parts present into the store, checked"),
        ("install", "receive, check, unpack, install"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help=f"where the parts arrive (default {DEFAULT_FOLDER})"
        )
    text = "benchmarks/gpu_check.py --quick ARGS: every further argument goes to it (e.g. --out DIR)"
    sub.add_parser("check", help=text, description=text)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "check":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    with errors():
        if args.command == "receive":
            receive(args.folder, args.store)
        elif args.command == "install":
            began = time.perf_counter()
            install(args.folder, args.store, REPO)
            say(f"installed in {time.perf_counter() - began:.0f} s")
        else:
            return check(REPO, rest)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
