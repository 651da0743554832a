"""``stlight predict --ray`` on a real Ray cluster of two nodes on this machine.

The cluster (``ray.cluster_utils.Cluster``: a head and a second node, one CPU each, a small object
store, no dashboard) is started once for the module and shut down by its finalizer. The Ray run
must write byte for byte the files of the local run over a few hundred real Moving MNIST clips
(one-clip files, arrays of many, a windowed video) with a corrupt input among them, report the
same counts and metrics, and resume after one of its actors is killed mid-run with nothing lost
or done twice. Skipped with the install command when Ray is not installed.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import free_port

from service.batch import Summary, VideoReading, discover, predict_files
from service.batch.ray_run import RayError, RayOptions, fetch_model, predict_on_ray
from service.cli.stlight import main
from service.client import LocalClient
from service.core import video

T, T_OUT = 10, 10  # the tiny preset: 10 -> 10 frames of 1 x 64 x 64
RAY_MISSING = "Ray is an optional extra: pip install -e '.[ray]' -c constraints.txt"
ARGS = ("--has-targets", "--windows", "--batch-size", "8", "--no-progress")


def ray_or_skip() -> Any:
    return pytest.importorskip("ray.cluster_utils", reason=RAY_MISSING)


# ---------------------------------------------------------------------------------------
# fixtures: the cluster, the inputs, the local run's files
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayCluster:
    address: str
    raylets: frozenset[int]  # the nodes' raylet processes: actors run below them


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> RayCluster:
    """A head and one more node, one CPU each, shut down after the module."""
    cluster_utils = ray_or_skip()
    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = cluster_utils.Cluster(initialize_head=True, connect=False, head_node_args={**small, "include_dashboard": False})
    request.addfinalizer(cluster.shutdown)
    cluster.add_node(**small)
    cluster.wait_for_nodes()
    raylets = frozenset(node.all_processes["raylet"][0].process.pid for node in cluster.list_all_nodes())
    return RayCluster(str(cluster.address), raylets)


@pytest.fixture(scope="module")
def clip_files(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """264 clips of T + T' frames: 120 one-clip .npy files, 80 clips in a .npz, 60 in a float
    .npy, a 80-frame MP4 (4 windows) and a corrupt .npy. 33 Moving MNIST clips, each also
    turned and mirrored (the 8 symmetries of the square): real digits, cheap to make."""
    from model.data import load_mnist_digits, moving_mnist_clip

    digits = load_mnist_digits(mnist_dir, download=False)
    rng = np.random.default_rng(24)
    base = np.stack([moving_mnist_clip(rng, digits, T + T_OUT) for _ in range(33)])  # (33, 20, 64, 64)
    turned = [np.rot90(base, k, axes=(2, 3)) for k in range(4)]
    clips = np.concatenate(turned + [t[..., ::-1] for t in turned])[:, :, None].copy()  # (264, 20, 1, 64, 64)
    root = tmp_path_factory.mktemp("ray-inputs")
    (root / "singles").mkdir()
    for i in range(120):
        np.save(root / "singles" / f"clip_{i:03d}.npy", clips[i])
    np.savez_compressed(root / "archive.npz", clips=clips[120:200])
    np.save(root / "many.npy", (clips[200:260] / np.float32(255)).astype(np.float32))
    frames = clips[260:264].reshape(-1, 1, 64, 64)  # 80 frames: four windows of 20
    (root / "drive.mp4").write_bytes(video.encode_video(frames, 10.0, "mp4"))
    (root / "broken.npy").write_bytes(b"\x93NUMPY this is no array")
    return root


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_run(clip_files: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], Any]:
    """The local run's files and summary: what every Ray run must equal."""
    out = tmp_path_factory.mktemp("local-out")
    sources, failures = discover([clip_files], out)
    assert not failures
    client = LocalClient(tiny_onnx, device="cpu")
    summary = predict_files(
        sources, client, has_targets=True, reading=VideoReading(windows=True), batch_size=8, progress=False, echo_failures=False
    )
    assert summary.done == len(sources) - 1 and [Path(f[0]).name for f in summary.failures] == ["broken.npy"]
    return tree(out), summary


def stlight(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------


def test_killed_actor_nothing_lost_or_repeated_and_files_equal_local(
    cluster: RayCluster,
    clip_files: Path,
    local_run: tuple[dict[str, bytes], Any],
    tiny_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two actors on two nodes, one killed (SIGKILL) mid-run: the run still writes the local
    run's files byte for byte, counts each input once, reports the corrupt one and scores as the
    local run. Then `stlight predict --ray ADDRESS` resumes: it redoes nothing and reports the
    same metrics from the files (the sums of both actors added up)."""
    import ray

    files, local = local_run
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        run = functools.partial(
            predict_on_ray,
            discover([clip_files], tmp_path)[0],
            tiny_onnx,
            ray_options=RayOptions(actors=2, inputs_per_task=4),
            device="cpu",
            has_targets=True,
            reading=VideoReading(windows=True),
            progress=False,
        )
        first: dict[str, Summary | str] = {}
        driver = threading.Thread(target=lambda: first.update(outcome=_outcome(run)))
        driver.start()
        killed = _kill_an_actor_once(tmp_path, cluster.raylets, driver)
        driver.join(120)
    finally:
        ray.shutdown()
    assert killed, "no actor process was found mid-run"
    outcome = first["outcome"]
    if isinstance(outcome, Summary):  # Ray Data restarted the actor and retried its task
        assert tree(tmp_path) == files
        assert outcome.done + outcome.skipped == local.done and outcome.clips <= local.clips
        assert [Path(name).name for name, _ in outcome.failures] == ["broken.npy"]
        assert outcome.lines()[1] == local.lines()[1]  # "metrics over 264 clip(s): MSE ... MAE ... PSNR ..."
    written = len(list(tmp_path.rglob("*.npy")))

    monkeypatch.chdir(clip_files.parent)  # inputs given relative to here: actors elsewhere still find them
    code, out, err = stlight(
        capsys, clip_files.name, "--out", str(tmp_path), "--model", str(tiny_onnx), *ARGS, "--ray", cluster.address
    )
    assert code == 1, err  # the corrupt input, reported again
    assert "2 actor(s) x 1 thread(s)" in err  # the default: one actor per node, the node's CPU each
    assert tree(tmp_path) == files, outcome
    lines = out.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if " clip(s) from " in line) :]  # Ray may log a retry first
    counts = rf"from {local.done - written} input\(s\) .*; {written} skipped .*; 1 failed"
    assert re.search(counts, lines[0]), (lines, outcome)
    assert lines[1] == local.lines()[1]
    assert lines[-2:] == ["failed (1):", f"  {Path(clip_files.name, 'broken.npy')}: {local.failures[0][1]}"]  # as given
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def _kill_an_actor_once(out: Path, raylets: frozenset[int], driver: threading.Thread) -> int:
    """SIGKILL one prediction actor once 20 outputs exist; its pid (0 if none was found)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and driver.is_alive():
        if len(list(out.rglob("*.npy"))) >= 20:
            pids = _actor_pids(raylets)
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                return pids[0]
        time.sleep(0.02)
    return 0


def _actor_pids(root_pids: frozenset[int]) -> list[int]:
    """Processes below this test's own Ray nodes whose title names the prediction actor."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def below(pid: int) -> bool:
        while pid > 1:
            if pid in root_pids:
                return True
            pid = parents.get(pid, 0)
        return False

    return [pid for pid, title in titles.items() if "PredictActor" in title and below(pid)]


def _outcome(run: Callable[[], Summary]) -> Summary | str:
    try:
        return run()
    except RayError as exc:
        return str(exc)


def test_a_model_uri_is_copied_for_the_actor(tiny_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.fs", reason=RAY_MISSING)
    copy = fetch_model(tiny_onnx.absolute().as_uri(), tmp_path)
    assert copy.parent == tmp_path and copy.read_bytes() == tiny_onnx.read_bytes()
    assert fetch_model(str(tiny_onnx), tmp_path) == tiny_onnx  # a path is used where it is
    with pytest.raises(RayError, match=r"cannot read the model at file://.*missing\.onnx"):
        fetch_model((tmp_path / "missing.onnx").as_uri(), tmp_path)


def test_unreachable_address_and_missing_ray_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((T, 1, 64, 64), np.uint8))
    if sys.modules.get("ray") is None:
        ray_or_skip()
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    code, _, err = stlight(capsys, str(clip), "--out", str(tmp_path / "o"), "--model", str(tiny_onnx), "--ray", address)
    assert code == 2 and time.monotonic() - began < 30
    assert err.strip().count("\n") == 0 and f"cannot reach the Ray cluster at {address}" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    with pytest.raises(RayError, match=r"pip install -e '\.\[ray\]'"):
        predict_on_ray(discover([clip], tmp_path / "o")[0], tiny_onnx)
    code, _, err = stlight(capsys, str(clip), "--out", str(tmp_path / "o"), "--model", str(tiny_onnx), "--ray")
    assert code == 2 and err.count("\n") == 1 and "Ray Data, which is not installed" in err, err
