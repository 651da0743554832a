"""The offline bundle for the GPU host (benchmarks/gpu/): parts that reassemble to what was packed,
damage and tampering caught before anything is installed, and the whole path on this machine —
bundle, parts, one part at a time into the store, a fresh venv standing in for the host, the CPU
ONNX Runtime swapped for the bundle's, ``stlight serve`` answering ``/predict``.

The end-to-end test builds a small bundle for this machine (ONNX Runtime's CPU build, the host
standing in has everything else heavy), not the 255 MB GPU one; docs/gpu.md has the GPU bundle's
own figures. The tests that resolve or download need PyPI and skip with the reason without it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from importlib import metadata
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
from serving import REPO, load_npy, npy_bytes

GPU = REPO / "benchmarks" / "gpu"


def _module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the process pool look the module up by name
    spec.loader.exec_module(module)
    return module


make_bundle = _module("make_bundle")
host_install = _module("host_install")


def _staging(root: Path) -> Path:
    """What make_bundle stages: a wheel (incompressible, so it spans several parts), the files beside it."""
    staging = root / "bundle"
    (staging / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(staging / "wheels" / "blob-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("blob/__init__.py", "")
        wheel.writestr("blob/data.bin", np.random.default_rng(0).bytes(300_000))
    (staging / "requirements.txt").write_text("blob\n")
    (staging / "bundle.json").write_text("{}\n")
    return staging


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A bundle in 64 KiB parts, compressed as several xz streams (small chunks), in ``tmp/out``."""
    monkeypatch.setattr(make_bundle, "CHUNK", 100_000)
    meta = {"runtime": "onnxruntime", "runtime_version": "0"}
    manifest = make_bundle.write_bundle(_staging(tmp_path), tmp_path / "out", 64 * 1024, 0, 2, meta)
    return tmp_path / "out", manifest


def _arrive(out: Path, part: str, where: Path) -> Path:
    """What one command brings to the host: the manifest and one part, in the repository's folder."""
    where.mkdir(parents=True)
    (where / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    (where / part).write_bytes((out / part).read_bytes())
    return where


def test_parts_arrive_one_by_one_and_unpack_to_what_was_packed(
    bundle: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, manifest = bundle
    parts = manifest["parts"]
    assert len(parts) >= 4 and all(p["size"] <= 64 * 1024 for p in parts), parts
    assert (out / "SHA256SUMS").read_text().splitlines() == [f"{p['sha256']}  {p['name']}" for p in parts]
    store = tmp_path / "store"
    for i, part in enumerate(parts):
        host_install.receive(_arrive(out, part["name"], tmp_path / f"command{i}"), store)
        said = capsys.readouterr().out
        assert f"{i + 1} of {len(parts)} parts" in said, said
    assert said.rstrip().endswith(": complete")
    unpacked = host_install.unpack(store, host_install.load_manifest(store / "manifest.json"))
    staged = tmp_path / "bundle"
    for path in staged.rglob("*"):
        if path.is_file():
            assert (unpacked / path.relative_to(staged)).read_bytes() == path.read_bytes(), path
    host_install.unpack(store, manifest)  # a second time: nothing to redo
    assert "already unpacked" in capsys.readouterr().out
    # the parts are one .xz file for the usual tools as well (several streams, read back to back)
    joined = b"".join((out / p["name"]).read_bytes() for p in parts)
    assert lzma.decompress(joined)[257:262] == b"ustar"


def test_a_damaged_short_or_missing_part_is_named_before_anything_is_installed(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = bundle
    second = out / manifest["parts"][1]["name"]
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(host_install.BundleError, match=r"bundle\.tar\.xz\.002: SHA-256 .* does not match"):
        host_install.receive(out, tmp_path / "store")
    second.write_bytes(bytes(data[:-10]))
    with pytest.raises(host_install.BundleError, match=r"bundle\.tar\.xz\.002: expected \d+ bytes, got \d+"):
        host_install.receive(out, tmp_path / "store")
    second.unlink()
    host_install.receive(out, tmp_path / "store")  # the others are taken; 002 is still to come
    with pytest.raises(host_install.BundleError, match=r"1 of \d+ parts missing \(bundle\.tar\.xz\.002\)"):
        host_install.unpack(tmp_path / "store", manifest)
    assert not (tmp_path / "store" / "bundle").exists()


def test_verify_checks_the_parts_and_prints_the_run_sequence(bundle: tuple[Path, dict]) -> None:
    out, manifest = bundle
    assert make_bundle.verify(out, REPO)["sha256"] == manifest["sha256"]
    calls = make_bundle.run_sequence(manifest, out, REPO).splitlines()
    assert calls[-1] == "give_back()" and calls[-3].startswith("# only if the check must run again")
    uploads = [json.loads(re.search(r"carry=(\[.*?\])", call).group(1)) for call in calls[:-3]]
    assert all(u[0] == f"{out}/manifest.json" and len(u) <= 8 for u in uploads)
    assert [path for u in uploads for path in u[1:]] == [f"{out}/{p['name']}" for p in manifest["parts"]]
    assert len(uploads) == 1 and "timeout_s=420" in calls[0]  # parts this small all ride in one upload
    assert "host_install.py install" in calls[-4] and 'check --out \\"$OUT/gpu-check\\"' in calls[-4]
    stale = manifest | {"requirements": ["onnxruntime-gpu>=1.20", "numpy>=1.24"]}
    (out / "manifest.json").write_text(json.dumps(stale))
    with pytest.raises(make_bundle.BundleError, match=r"requirements changed since the bundle was built \(new: .*fastapi"):
        make_bundle.verify(out, REPO)
    (out / "manifest.json").write_text(json.dumps(manifest))
    last = out / manifest["parts"][-1]["name"]
    last.write_bytes(last.read_bytes()[:-1] + b"?")
    with pytest.raises(make_bundle.BundleError, match="SHA-256 does not match"):
        make_bundle.verify(out, REPO)


def test_short_parts_share_an_upload_and_a_part_too_large_for_the_tree_is_refused() -> None:
    mib = 2**20
    parts = [
        {"name": f"bundle.tar.xz.00{i}", "size": size} for i, size in enumerate((57 * mib, 57 * mib, 57 * mib, mib // 10), 1)
    ]
    groups = make_bundle.uploads({"parts": parts}, 5 * mib, 4000)
    assert [[p["name"][-1] for p in group] for group in groups] == [["1"], ["2"], ["3", "4"]]
    small = [{"name": f"p{i}", "size": mib} for i in range(10)]
    assert [len(g) for g in make_bundle.uploads({"parts": small}, 5 * mib, 4000)] == [7, 3]  # 8 carried paths at most
    with pytest.raises(make_bundle.BundleError, match=r"exceed the 64 MiB one command carries"):
        make_bundle.uploads({"parts": parts}, 8 * mib, 4000)


def test_a_store_holding_another_bundle_starts_afresh(bundle: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = bundle
    store = tmp_path / "store"
    host_install.receive(out, store)
    (store / "stale.txt").write_text("from an older bundle")
    other = json.loads((out / "manifest.json").read_text()) | {"sha256": "0" * 64}
    (store / "manifest.json").write_text(json.dumps(other))
    host_install.receive(out, store)
    assert not (store / "stale.txt").exists() and not host_install.missing_parts(store, manifest)


def test_a_member_outside_the_folder_and_a_foreign_manifest_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"owned"))
    writer = make_bundle.PartWriter(tmp_path, 1 << 20)
    writer.write(lzma.compress(buffer.getvalue()))
    writer.close()
    manifest = {
        "format": make_bundle.FORMAT,
        "archive": make_bundle.ARCHIVE,
        "sha256": writer.whole.hexdigest(),
        "size": writer.size,
        "parts": writer.parts,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = tmp_path / "store"
    host_install.receive(tmp_path, store)
    with pytest.raises(host_install.BundleError, match="does not unpack: OutsideDestinationError"):
        host_install.unpack(store, host_install.load_manifest(store / "manifest.json"))
    assert not (store / "escaped.txt").exists()
    (tmp_path / "manifest.json").write_text(
        json.dumps(manifest | {"parts": [{"name": "../../etc/passwd", "size": 1, "sha256": ""}]})
    )
    with pytest.raises(host_install.BundleError, match=r"is not a plain bundle\.tar\.xz\.NNN file name"):
        host_install.receive(tmp_path, store)
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(host_install.BundleError, match="expected a manifest of format"):
        host_install.receive(tmp_path, store)


def test_a_stored_wheel_holds_the_same_files_uncompressed(tmp_path: Path) -> None:
    source = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("pkg/__init__.py", "x = 1\n" * 1000)
        script = zipfile.ZipInfo("pkg-1.0.data/scripts/run")
        script.external_attr = 0o100755 << 16
        wheel.writestr(script, "#!/bin/sh\n")
    stored = tmp_path / "stored" / source.name
    stored.parent.mkdir()
    make_bundle.store_wheel(source, stored)
    with zipfile.ZipFile(source) as before, zipfile.ZipFile(stored) as after:
        assert after.namelist() == before.namelist()
        for a, b in zip(before.infolist(), after.infolist(), strict=True):
            assert after.read(b) == before.read(a) and b.compress_type == zipfile.ZIP_STORED
            assert b.external_attr == a.external_attr
    assert stored.stat().st_size > source.stat().st_size


def test_parts_leave_room_for_the_tree_that_travels_with_them() -> None:
    size, why = make_bundle.part_size(None, REPO)
    assert size <= 60 * 2**20 and size + make_bundle.travelling_bytes(REPO) <= 64 * 2**20, why
    assert make_bundle.part_size(4, REPO)[0] == 4 * 2**20
    with pytest.raises(make_bundle.BundleError, match="at most 60"):
        make_bundle.part_size(61, REPO)


def test_the_host_list_keeps_the_hosts_torch_numpy_onnx_and_cuda_libraries() -> None:
    patterns = make_bundle.read_host_packages(str(make_bundle.DEFAULT_HOST_PACKAGES))
    for name in ("torch", "numpy", "onnx", "nvidia-cudnn-cu13", "nvidia_cublas", "Pillow", "prometheus_client", "onnxruntime"):
        assert make_bundle.on_host(name, patterns), name
    for name in ("onnxruntime-gpu", "fastapi", "uvicorn", "pydantic", "av", "setuptools", "httptools"):
        assert not make_bundle.on_host(name, patterns), name
    assert make_bundle.read_host_packages("none") == []


# ---------------------------------------------------------------------------------------
# with PyPI: the GPU host's bundle resolves; the whole path on this machine
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pypi() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "onnxruntime"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip(f"PyPI cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")


def _listed(output: str, label: str) -> set[str]:
    found = re.search(rf"^{label} \(\d+\): (.*)$", output, re.M)
    assert found, output
    return {item.split("==")[0] for item in found.group(1).split(", ")}


def test_the_gpu_hosts_bundle_brings_what_the_host_lacks_and_keeps_what_it_has(pypi: None) -> None:
    listed = subprocess.run(
        [sys.executable, str(GPU / "make_bundle.py"), "--list"], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert listed.returncode == 0, listed.stderr
    assert "CPython 3.12 on manylinux_x86_64" in listed.stdout
    bundled, left = _listed(listed.stdout, "bundled"), _listed(listed.stdout, "left to the host")
    lacking = {"onnxruntime-gpu", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-settings", "python-multipart"}
    assert lacking | {"httptools", "av", "fastapi-offline", "setuptools"} <= bundled, bundled
    assert not {"numpy", "torch", "onnx", "onnxruntime", "pillow", "httpx", "uvloop"} & bundled, bundled
    assert {"numpy", "pillow", "httpx"} <= left
    assert not any(name.startswith("nvidia-") for name in bundled)


def _pin(name: str) -> str:
    return f"{name}=={metadata.version(name)}"


@pytest.mark.slow
def test_bundle_parts_install_into_a_fresh_venv_that_serves(pypi: None, tmp_path: Path) -> None:
    """The whole path on this machine: a venv standing in for the host (an older CPU ONNX Runtime,
    numpy, pillow, av... already there), a bundle of what it lacks in 4 MiB parts, each received on
    its own, then ``install``: the old ONNX Runtime out, the bundle's in, the project without
    dependencies; ``stlight serve --device cpu`` from that venv answers ``/predict``."""
    host = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", str(host)], check=True)
    python = str(host / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    runtime = next(n for n in ("onnxruntime-gpu", "onnxruntime") if _installed(n))
    has = [_pin(n) for n in ("numpy", "pillow", "httpx", "uvloop", "prometheus-client", "tqdm", "av")]
    has.append(f"onnxruntime<{metadata.version(runtime)}")  # older than the bundle's: the swap must happen
    made = subprocess.run([python, "-m", "pip", "install", "-q", *has], capture_output=True, text=True, timeout=600, env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    freeze = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, env=env).stdout
    (tmp_path / "has.txt").write_text(freeze)
    old = re.search(r"^onnxruntime==(\S+)$", freeze, re.M)
    assert old, freeze

    out = tmp_path / "out"
    argv = ["--for-this-machine", "--runtime", "onnxruntime", "--host-packages", str(tmp_path / "has.txt")]
    argv += ["--part-mib", "4", "--preset", "0", "--out", str(out)]
    built = subprocess.run([sys.executable, str(GPU / "make_bundle.py"), *argv], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["parts"]) >= 2 and manifest["runtime_version"] != old.group(1), manifest
    assert {"fastapi", "uvicorn", "setuptools"} <= _listed(built.stdout, "bundled")
    assert not {"numpy", "av", "pillow"} & _listed(built.stdout, "bundled")

    script, store = str(GPU / "host_install.py"), tmp_path / "store"
    for i, part in enumerate(manifest["parts"]):
        arrived = _arrive(out, part["name"], tmp_path / f"command{i}" / "out" / "gpu-bundle")
        got = subprocess.run(
            [python, script, "--store", str(store), "receive", str(arrived)], capture_output=True, text=True, env=env
        )
        assert got.returncode == 0 and f"{i + 1} of {len(manifest['parts'])} parts" in got.stdout, got.stdout + got.stderr
    began = time.perf_counter()
    installed = subprocess.run(
        [python, script, "--store", str(store), "install", str(arrived)], capture_output=True, text=True, timeout=900, env=env
    )
    said = installed.stdout + installed.stderr
    assert installed.returncode == 0, said[-4000:]
    print(f"install took {time.perf_counter() - began:.1f} s")
    assert f"removing onnxruntime {old.group(1)}" in said and "installing from the bundle: done" in said, said[-3000:]
    assert re.search(rf"onnxruntime {re.escape(manifest['runtime_version'])} .*CPUExecutionProvider", said), said[-2000:]
    again = subprocess.run(
        [python, script, "--store", str(store), "install", str(arrived)], capture_output=True, text=True, env=env
    )
    assert again.returncode == 0 and "already unpacked" in again.stdout and "installed already" in again.stdout, again.stdout

    _serves(host, tmp_path, env)
    # the check, from the host script: this ONNX Runtime has no CUDA, so it stops with that reason
    checked = subprocess.run(
        [python, script, "check", "--out", str(tmp_path / "check")], capture_output=True, text=True, timeout=300, env=env
    )
    assert checked.returncode == 2 and "CUDA did not load" in checked.stderr, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert json.loads((tmp_path / "check" / "gpu_check.json").read_text())["phases"]["cuda"]["status"] == "failed"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _serves(host: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """``stlight serve --device cpu`` from ``host``'s venv, outside the checkout, answers /predict
    as in-process ONNX Runtime does."""
    import onnxruntime as ort

    from service.core.assets import DEFAULT_MODEL

    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(host / "bin" / "stlight"), "serve", "--device", "cpu", "--port", "0", "--grpc-port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    try:
        url, deadline = "", time.monotonic() + 120
        while not url and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", log_path.read_text(errors="replace"))
            if found and httpx.get(found.group(1) + "/readyz").status_code == 200:
                url = found.group(1)
            time.sleep(0.1)
        assert url, log_path.read_text(errors="replace")
        clip = np.load(REPO / "service" / "assets" / "examples" / "clip0.npy")
        answer = httpx.post(url + "/predict", content=npy_bytes(clip), headers={"Content-Type": "application/x-npy"}, timeout=60)
        assert answer.status_code == 200, answer.text
        session = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"frames": (clip.astype(np.float32) / 255)[None]})[0][0]
        np.testing.assert_allclose(load_npy(answer.content), expected, atol=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
