"""The distribution as users get it: an sdist and a wheel that pass ``twine check``, a wheel that
resolves from wheels alone on every platform we promise, and a clean venv that serves from it.

Needs PyPI (the build backend and the platform resolution); skipped with the reason when PyPI
cannot be reached.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving import REPO, npy_bytes

# pip evaluates environment markers against the interpreter it runs on, even under --platform, so
# the wheel-only resolution below runs pip with the markers of the target platform patched in.
RESOLVE = """
import json, sys
import pip._vendor.packaging.markers as markers
_host = markers.default_environment
_target = json.loads(sys.argv[1])
markers.default_environment = lambda: {**_host(), **_target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _manylinux(arch: str) -> list[str]:
    # pip does not widen an explicit --platform: name every glibc tag a wheel may carry, from the
    # manylinux2014 baseline up to glibc 2.28 (RHEL 8, Ubuntu 20.04 era GPU hosts have more)
    return [f"manylinux_2_{minor}_{arch}" for minor in range(17, 29)] + [f"manylinux2014_{arch}"]


def _macos(arch: str) -> list[str]:
    return [f"macosx_{major}_0_{arch}" for major in range(11, 16)] + [f"macosx_{major}_0_universal2" for major in range(11, 16)]


# platform -> (pip platform tags, marker values, the ONNX Runtime package that must be chosen)
PLATFORMS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "linux-x86_64": (
        _manylinux("x86_64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
        "onnxruntime-gpu",
    ),
    "linux-aarch64": (
        _manylinux("aarch64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
        "onnxruntime",
    ),
    "macos-arm64": (
        _macos("arm64"),
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
        "onnxruntime",
    ),
    "windows-amd64": (
        ["win_amd64"],
        {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"},
        "onnxruntime-gpu",
    ),
}


def _pythons() -> list[str]:
    """Every minor version the classifiers promise (they and requires-python must agree)."""
    text = (REPO / "pyproject.toml").read_text()
    found = sorted(set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)), key=lambda v: int(v.split(".")[1]))
    assert found, "pyproject.toml lists no Python version classifiers"
    floor = re.search(r'requires-python = ">=(3\.\d+)"', text)
    assert floor and floor.group(1) == found[0], "requires-python and the oldest classifier disagree"
    return found


PYTHONS = _pythons()


@pytest.fixture(scope="module")
def pypi() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "onnxruntime"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"building and resolving the wheel needs PyPI, which cannot be reached: {probe.stderr.strip().splitlines()[-1:]}"
        )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, pypi: None) -> Path:
    """``python -m build``: an sdist and a wheel, built from the sources as a user's build would."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("stlight-*.whl")
    return wheel


def test_twine_check_passes(dist: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir())
    assert any(f.endswith(".tar.gz") for f in files) and any(f.endswith(".whl") for f in files), files
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_wheel_holds_packages_and_default_model_only(dist: Path) -> None:
    names = zipfile.ZipFile(_wheel(dist)).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"model", "export", "service"} <= tops
    assert not tops & {"tests", "benchmarks", "deploy", "docs"}, tops
    assert "service/assets/default.onnx" in names
    assert any(n.startswith("service/assets/examples/") for n in names)
    meta = zipfile.ZipFile(_wheel(dist)).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert re.search(r"^Project-URL: ", meta, re.M)
    assert re.search(r"^Classifier: Programming Language :: Python :: 3\.\d+$", meta, re.M)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def _resolution_cases() -> list[pytest.ParameterSet]:
    """Every platform × every Python; one diagonal of it (each platform once, each Python once,
    Linux x86-64 with the Docker image's 3.11) runs by default, the rest is marked ``extended``:
    each case is a full pip resolution against PyPI (15-40 s), and the whole matrix alone would
    take a third of CI's time."""
    platforms = sorted(PLATFORMS)
    shift = platforms.index("linux-x86_64") - PYTHONS.index("3.11")
    diagonal = {(platform, PYTHONS[(i - shift) % len(PYTHONS)]) for i, platform in enumerate(platforms)}
    return [
        pytest.param(platform, python, id=f"{platform}-{python}", marks=() if (platform, python) in diagonal else EXTENDED)
        for platform in platforms
        for python in PYTHONS
    ]


EXTENDED = pytest.mark.extended


@pytest.mark.parametrize(("platform", "python"), _resolution_cases())
def test_wheel_resolves_from_wheels_only(dist: Path, tmp_path: Path, platform: str, python: str) -> None:
    tags, marker_env, runtime = PLATFORMS[platform]
    extras = "[cuda]" if runtime == "onnxruntime-gpu" else ""
    report = tmp_path / "report.json"
    env = {**marker_env, "python_version": python, "python_full_version": f"{python}.0"}
    argv = [sys.executable, "-c", RESOLVE, json.dumps(env), "install", "--dry-run", "--ignore-installed", "--only-binary=:all:"]
    # the pip a new Python 3.11 venv brings (23.2) takes --platform only with --target, even for a
    # dry run; a dry run writes nothing there, and newer pips accept it as well
    argv += ["--target", str(tmp_path / "never-written")]
    argv += [f"--platform={tag}" for tag in tags]
    argv += ["--python-version", python, "--implementation", "cp", "--report", str(report), "--quiet", f"{_wheel(dist)}{extras}"]
    resolved = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert resolved.returncode == 0, f"{platform} / Python {python} does not resolve from wheels:\n{resolved.stderr[-3000:]}"
    assert not (tmp_path / "never-written").exists()
    names = {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}
    assert runtime in names, f"{platform}: expected {runtime}, resolved {sorted(names)}"
    assert not {"onnxruntime", "onnxruntime-gpu"} - {runtime} & names, f"{platform}: both ONNX Runtime packages resolved"
    assert "torch" not in names
    if extras:  # the `cuda` extra brings cuDNN as a wheel where the GPU build exists
        assert any(n.startswith("nvidia-cudnn") for n in names), sorted(names)


@pytest.mark.slow
def test_clean_venv_from_the_wheel_serves(dist: Path, tmp_path: Path) -> None:
    """Only the wheel (and what it depends on) in a new venv: ``stlight --version`` and a real
    ``/predict`` on the shipped default model, run outside the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    # without PYTHONPATH: a source tree on it (with its stlight.egg-info) would count as installed
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    installed = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", str(_wheel(dist))],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert installed.returncode == 0 and (bin_dir / "stlight").exists(), installed.stdout[-3000:] + installed.stderr[-3000:]
    version = subprocess.run([str(bin_dir / "stlight"), "--version"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert version.returncode == 0 and re.fullmatch(r"stlight \d+\.\d+\.\d+\S*\n", version.stdout), version
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import service; print(service.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert str(venv) in where.stdout, "the venv imported the source tree, not the installed wheel"

    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(bin_dir / "stlight"), "serve", "--port", "0", "--grpc-port", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", (tmp_path / "serve.log").read_text(errors="replace"))
            if found and httpx.get(found.group(1) + "/readyz").status_code == 200:
                url = found.group(1)
                break
            time.sleep(0.1)
        assert url, (tmp_path / "serve.log").read_text(errors="replace")
        clip = np.load(REPO / "service" / "assets" / "examples" / "clip0.npy")
        body = npy_bytes(clip)
        answer = httpx.post(
            url + "/predict",
            content=body,
            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        predicted = np.load(io.BytesIO(answer.content))
        assert predicted.shape[-3:] == clip.shape[-3:] and np.isfinite(predicted).all()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
