"""``torchrun ... --no-python stlight train`` with 2 CPU processes (gloo), the command the docs give:
the same weights as one process with the same global batch, a split run that resumes under
torchrun to the weights of a straight one, and rank 0 as the only writer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import preset
from model.distributed import Ranks, ranks_from_env
from model.stlight import STLight
from model.train import EpochBatches, rng_of_rank, seed_everything
from service.cli.stlight import main

STLIGHT = Path(sys.executable).with_name("stlight")
# a small model predicting 1 frame from 4; 24 clips per epoch = 3 global batches of 8
RUN = ["--preset", "tiny", "--dim", "32", "--depth", "2", "--in-frames", "4", "--out-frames", "1", "--threads", "1"]
RUN += ["--no-progress", "--clips-per-epoch", "24", "--max-steps", "7", "--val-clips", "8", "--lr", "5e-4"]
TOLERANCE = 1e-4  # relative L2 over all weights


def torchrun(*args: str, procs: int = 2) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    command += ["--no-python", str(STLIGHT), "train", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over every floating-point tensor together (parameters and BN statistics):
    Adam turns float noise in mathematically zero gradients (a conv bias feeding BatchNorm) into
    lr-sized steps, so single weights may differ visibly while the model as a whole agrees."""
    keys = [k for k in b if b[k].is_floating_point()]
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in keys)
    return math.sqrt(num / sum(float((b[k].double() ** 2).sum()) for k in keys))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Path]:
    if not STLIGHT.is_file():
        pytest.skip(f"no stlight script beside {sys.executable} (install the project: pip install -e .)")
    root = tmp_path_factory.mktemp("ddp")
    data = ["--data-dir", str(mnist_dir)]
    out = {name: root / name for name in ("two", "split", "one")}
    done = torchrun(*RUN, *data, "--batch-size", "4", "--out", str(out["two"]))
    (root / "two.stdout").write_text(done.stdout)
    torchrun(*RUN, *data, "--batch-size", "4", "--stop-after", "4", "--out", str(out["split"]))
    torchrun("--out", str(out["split"]), "--resume", "--threads", "1", "--no-progress")
    assert main(["train", *RUN, *data, "--batch-size", "8", "--out", str(out["one"])]) == 0
    return out


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(runs: dict[str, Path]) -> None:
    two, one = weights(runs["two"] / "last.pt"), weights(runs["one"] / "last.pt")
    assert relative_l2(two, one) <= TOLERANCE
    seed_everything(0)
    start = STLight(preset("tiny").replace(dim=32, depth=2, in_frames=4, out_frames=1)).state_dict()
    assert relative_l2(start, one) > 1000 * TOLERANCE  # the runs did move the weights
    # validation is reduced over both processes' halves of the clips
    m2, m1 = (json.loads((runs[r] / "metrics.jsonl").read_text().splitlines()[-1]) for r in ("two", "one"))
    assert m2["step"] == m1["step"] == 7
    for key in ("mse", "mae", "ssim", "psnr"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4), key


@pytest.mark.slow
def test_resume_under_torchrun_equals_a_straight_run(runs: dict[str, Path]) -> None:
    straight, split = (torch.load(runs[r] / "last.pt", weights_only=True) for r in ("two", "split"))
    assert split["step"] == straight["step"] == 7
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    assert straight["run"]["world_size"] == 2 and straight["run"]["batch_size"] == 4
    assert len(straight["rng_ranks"]) == 2  # each process resumes its own RNG states


@pytest.mark.slow
def test_rank_zero_is_the_only_writer(runs: dict[str, Path]) -> None:
    folder = runs["two"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "val_step0000003.png",
        "val_step0000006.png",
        "val_step0000007.png",
    ]
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 7]  # one line per validation, not one per process
    stdout = (folder.parent / "two.stdout").read_text()
    assert stdout.count("finished:") == 1 and stdout.count("step 3: val mse") == 1, stdout


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(runs["two"]), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained in 2 process(es) × batch 4, this launch has 1" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------
# pieces, without launching processes
# ---------------------------------------------------------------------------------------


def test_ranks_slice_the_global_batches_of_one_process() -> None:
    one = EpochBatches(37, 8, seed=3)
    shares = [EpochBatches(37, 4, seed=3, rank=r, world=2) for r in range(2)]
    for epoch, start in ((0, 0), (5, 2)):
        for sampler in (one, *shares):
            sampler.set_epoch(epoch, start)
        together = [a + b for a, b in zip(*shares, strict=True)]
        assert together == list(one) and len(one) == len(shares[0]) == 4 - start


def test_each_rank_resumes_its_own_rng_states() -> None:
    payload = {"rng": {"who": "rank 0"}, "rng_ranks": [{"who": 0}, {"who": 1}]}
    assert rng_of_rank(payload, 1) == {"who": 1}
    assert rng_of_rank(payload, 2) == {"who": "rank 0"}  # more processes than saved states
    assert rng_of_rank({"rng": {"who": "alone"}, "rng_ranks": None}, 1) == {"who": "alone"}


def test_launcher_environment() -> None:
    assert ranks_from_env({}) == Ranks(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    ranks = ranks_from_env(env)
    assert ranks == Ranks(3, 4, 1, 2) and ranks.distributed and not ranks.main
    with pytest.raises(ValueError, match="not an integer"):
        ranks_from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="inconsistent"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})
