"""The GPU training recipe, checked on CPU: Moving MNIST made as tensors (OpenSTL's rules; each
clip a pure function of seed, epoch and index), the square-root learning-rate rule, the time
limit, held-out digits, the compiled step, and the host run script end to end at smoke scale.
What only a GPU shows (bf16 numerics, cuDNN's NHWC kernels, compile's speed-up there) is what
``benchmarks/gpu/train_host.py`` measures on the GPU host."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from serving import REPO

from model.config import preset
from model.data import TEST_SEED, DataError, DataSpec, MovingMNIST, build_datasets, build_test_dataset, random_trajectory
from model.device_data import TensorMovingMNIST, _mul32, clip_draws, fold32, hash32
from model.plan import TrainRequest, plan_run, scaled_lr
from model.train import LOSS_READ_EVERY, RunSettings, Runtime, train
from service.cli.stlight import main

CPU = torch.device("cpu")
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
sys.path.insert(0, str(REPO / "benchmarks"))


# ---------------------------------------------------------------------------------------
# Moving MNIST made as tensors
# ---------------------------------------------------------------------------------------


def lowbias32(x: int) -> int:
    """The hash in plain Python integers (the reference for the int64 tensor version)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_32_bit_arithmetic_in_int64_is_exact() -> None:
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *np.random.default_rng(0).integers(0, 2**32, 1000).tolist()]
    x = torch.tensor(values, dtype=torch.int64)
    assert _mul32(x, 0x846CA68B).tolist() == [(v * 0x846CA68B) % 2**32 for v in values]
    assert hash32(x).tolist() == [lowbias32(v) for v in values]
    assert fold32(-1) == 0 and fold32(2**40 + 5) == (2**40 + 5) % 2**32 ^ 2**8
    draws = clip_draws(0, 0, torch.arange(4096), 3)
    assert draws.dtype == torch.float64 and float(draws.min()) >= 0 and float(draws.max()) < 1
    assert abs(float(draws.mean()) - 0.5) < 0.01 and abs(float(draws.var()) - 1 / 12) < 0.003  # uniform
    assert abs(float(torch.corrcoef(draws.T)[0, 1])) < 0.05  # draws of one clip are not correlated


def test_a_clip_depends_only_on_seed_epoch_and_index(digits: np.ndarray) -> None:
    maker = TensorMovingMNIST(digits, CPU, seed=3)
    a_in, a_out = maker.clips(0, torch.tensor([5, 3]))
    b_in, b_out = maker.clips(0, torch.tensor([3, 7, 5]))  # another batch holding the same clips
    assert a_in.shape == (2, 10, 1, 64, 64) and a_out.shape == (2, 10, 1, 64, 64)
    assert torch.equal(a_in[0], b_in[2]) and torch.equal(a_out[1], b_out[0])
    assert not torch.equal(maker.clips(1, torch.tensor([5]))[0][0], a_in[0])  # each epoch new clips
    assert not torch.equal(TensorMovingMNIST(digits, CPU, seed=4).clips(0, torch.tensor([5]))[0][0], a_in[0])
    again = TensorMovingMNIST(digits, CPU, seed=3).clips(0, torch.tensor([5, 3]))
    assert torch.equal(again[0], a_in) and torch.equal(again[1], a_out)
    values = torch.cat([a_in, a_out], dim=1) * 255
    assert torch.equal(values, values.round()) and float(values.max()) <= 255  # uint8 pixels / 255, as the loader's


class Draws:
    """A numpy-Generator stand-in that hands out given numbers (for model.data.random_trajectory)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def random(self) -> float:
        return self.values.pop(0)


def test_trajectories_and_frames_follow_openstls_rules(digits: np.ndarray) -> None:
    maker = TensorMovingMNIST(digits, CPU, in_frames=10, out_frames=10, seed=11)
    indices = torch.arange(64)
    where = maker.placements(2, indices)
    draws = clip_draws(11, 2, indices, 8).view(64, 2, 4).numpy()
    bounced = 0
    for n in range(64):
        for k in range(2):
            y0, x0, direction = draws[n, k, :3]
            rows, cols = random_trajectory(Draws([y0, x0, direction]), 20, 64 - 28)  # the loader's own code
            assert rows.tolist() == where.rows[n, k].tolist() and cols.tolist() == where.cols[n, k].tolist(), (n, k)
            bounced += bool({0, 36} & {*rows.tolist(), *cols.tolist()})
    assert bounced > 10  # the walls were hit: the reflection was checked, not only straight lines
    clips = maker.render(where).numpy()  # (N, T, 64, 64)
    for n in (0, 17, 63):
        for t in (0, 9, 19):
            frame = np.zeros((64, 64), np.uint8)
            for k in range(2):
                r, c = int(where.rows[n, k, t]), int(where.cols[n, k, t])
                np.maximum(frame[r : r + 28, c : c + 28], digits[int(where.digit[n, k])], out=frame[r : r + 28, c : c + 28])
            assert np.array_equal(clips[n, t], frame), (n, t)
    chosen = where.digit.flatten()
    assert int(chosen.min()) >= 0 and int(chosen.max()) < len(digits) and len(set(chosen.tolist())) > 60


def test_held_out_digits_never_reach_training_or_validation(mnist_dir: Path, digits: np.ndarray) -> None:
    config = preset("tiny")
    spec = DataSpec("mmnist", data_dir=str(mnist_dir), clips_per_epoch=8, val_clips=4, held_out_digits=100)
    train_set, val_set = build_datasets(spec, config)
    assert isinstance(train_set, MovingMNIST) and isinstance(val_set, MovingMNIST)
    assert np.array_equal(train_set.digits, digits[:-100]) and np.array_equal(val_set.digits, digits[:-100])
    assert torch.equal(TensorMovingMNIST.like(train_set, CPU).digits, torch.tensor(digits[:-100]))
    test = build_test_dataset(spec, config)
    assert isinstance(test, MovingMNIST) and np.array_equal(test.digits, digits[-100:]) and test.seed == TEST_SEED
    assert len(test) == 4
    with pytest.raises(DataError, match="hold out between 0 and"):
        build_datasets(DataSpec("mmnist", data_dir=str(mnist_dir), held_out_digits=len(digits)), config)


# ---------------------------------------------------------------------------------------
# planning: the learning-rate rule, the default clip maker
# ---------------------------------------------------------------------------------------


def plan(tmp_path: Path, mnist_dir: Path, **fields: Any) -> Any:
    request = TrainRequest(out=tmp_path / "run", data_dir=str(mnist_dir), preset="tiny", clips_per_epoch=256, **fields)
    return plan_run(request)


def test_lr_follows_the_square_root_rule_of_the_global_batch(tmp_path: Path, mnist_dir: Path) -> None:
    assert scaled_lr(3e-3, 16, 16) == 3e-3 and scaled_lr(3e-3, 16, 256) == pytest.approx(1.2e-2)
    paper = plan(tmp_path, mnist_dir)
    assert paper.settings.lr == 3e-3 and paper.lr_rule == ""  # Table 2 unchanged at its own batch
    big = plan(tmp_path, mnist_dir, batch_size=64)
    assert big.settings.lr == pytest.approx(6e-3)
    assert "lr 0.006 = 0.003 × sqrt(64 / 16)" in big.lr_rule and "--lr sets it" in big.lr_rule
    two = plan(tmp_path, mnist_dir, batch_size=32, processes=2)  # torchrun: 2 × 32 is a global batch of 64
    assert two.settings.lr == pytest.approx(6e-3) and two.settings.global_batch == 64
    assert plan(tmp_path, mnist_dir, batch_size=64, lr=1e-3).settings.lr == 1e-3  # --lr wins
    assert not plan(tmp_path, mnist_dir).settings.clips_on_device  # CPU: loader workers
    assert plan(tmp_path, mnist_dir, device="cuda").settings.clips_on_device  # CUDA: made on the GPU
    assert not plan(tmp_path, mnist_dir, device="cuda", clips_on_device=False).settings.clips_on_device


def test_recipe_flags_refuse_what_cannot_work(capsys: pytest.CaptureFixture[str], tmp_path: Path, mnist_dir: Path) -> None:
    np.save(tmp_path / "clips.npy", np.zeros((8, 20, 1, 64, 64), np.uint8))
    npz = ["train", "--dataset", "npz", "--data-path", str(tmp_path / "clips.npy"), "--out", str(tmp_path / "x")]
    for extra, message in (
        (["--clips-on-device"], "--clips-on-device makes Moving MNIST clips; --dataset npz is read by loader workers"),
        (["--held-out-digits", "10"], "--held-out-digits holds MNIST digits out of Moving MNIST clips"),
    ):
        assert main([*npz, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    out = str(tmp_path / "run")
    small = ["--preset", "tiny", "--dim", "32", "--depth", "2", "--in-frames", "4", "--out-frames", "1", "--threads", "1"]
    run = ["train", *small, "--data-dir", str(mnist_dir), "--clips-per-epoch", "8", "--batch-size", "4", "--val-clips", "4"]
    assert main([*run, "--max-steps", "2", "--clips-on-device", "--no-progress", "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", "--out", out, "--resume", "--no-clips-on-device"]) == 2
    assert "--no-clips-on-device (run: --clips-on-device)" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--held-out-digits", "5"]) == 2
    assert "--held-out-digits 5 (run: 0)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# the loop: time limit, compiled steps
# ---------------------------------------------------------------------------------------


class RandomClips(torch.utils.data.Dataset):
    """Seeded random 16×16 clips, 4 → 1 frames."""

    def __init__(self, n: int) -> None:
        self.n = n

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        return torch.rand(4, 1, 16, 16, generator=g), torch.rand(1, 1, 16, 16, generator=g)


SMALL = preset("tiny").replace(dim=32, depth=2, in_frames=4, out_frames=1, height=16, width=16)


def small_run(tmp_path: Path, name: str, total: int, resume: dict[str, Any] | None = None, **runtime: Any) -> dict[str, Any]:
    settings = RunSettings("npz", "tiny", 1e-3, "onecycle", 1e4, 2, total, total, 0, 0, 4, 0.1)
    options = {"threads": 1, "progress": False, **runtime}
    return train(settings, SMALL, DataSpec("npz"), Runtime(out=tmp_path / name, device="cpu", **options), resume=resume,
                 datasets=(RandomClips(2 * total), RandomClips(4)))  # fmt: skip


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_time_limit_stops_at_a_loss_read_and_the_run_resumes_exactly(tmp_path: Path) -> None:
    total = LOSS_READ_EVERY + 6
    stopped = small_run(tmp_path, "split", total, time_limit=1e-9)  # past the limit at the first read
    assert stopped["step"] == LOSS_READ_EVERY and stopped["stopped_by_time"] and not stopped["finished"]
    payload = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    resumed = small_run(tmp_path, "split", total, resume=payload)
    whole = small_run(tmp_path, "whole", total)
    assert resumed["finished"] and not resumed["stopped_by_time"] and whole["step"] == resumed["step"] == total
    a, b = weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["steady_samples_per_s"] > 0 and whole["warmup_seconds"] > 0


@pytest.mark.slow
def test_a_compiled_run_trains_the_same_model_and_saves_plain_weights(tmp_path: Path) -> None:
    eager = small_run(tmp_path, "eager", 4)
    compiled = small_run(tmp_path, "compiled", 4, compile=True, channels_last=True)
    assert compiled["step"] == eager["step"] == 4
    a, b = weights(tmp_path / "eager" / "last.pt"), weights(tmp_path / "compiled" / "last.pt")
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes: export and eval load it as any checkpoint
    diff = math.sqrt(sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a))
    norm = math.sqrt(sum(float(a[k].float().pow(2).sum()) for k in a))
    assert diff / norm < 1e-4, diff / norm  # float rounding only (relative L2 over all weights)


# ---------------------------------------------------------------------------------------
# the host run script
# ---------------------------------------------------------------------------------------


def test_packing_splits_large_files_and_names_what_does_not_fit(tmp_path: Path) -> None:
    from train_host import pack, sha256

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.md").write_text("# results\n")
    small = tmp_path / "results.json"
    small.write_text("{}")
    big, bigger = tmp_path / "model.pt", tmp_path / "model.onnx"
    big.write_bytes(np.random.default_rng(0).bytes(2500))
    bigger.write_bytes(b"x" * 6000)
    packed = pack(tmp_path / "out", [small], [big, bigger], part_mib=1000 / 2**20, max_files=6)
    assert packed["model.pt"]["parts"] == 3 and "left_out" not in packed["model.pt"]
    assert packed["model.onnx"]["left_out"] == "needs 6 file(s), 1 left"
    joined = b"".join((tmp_path / "out" / f"model.pt.part{i:02d}").read_bytes() for i in range(3))
    assert joined == big.read_bytes() and packed["model.pt"]["sha256"] == sha256(big)
    assert len(list((tmp_path / "out").iterdir())) == 5
    with tarfile.open(tmp_path / "out" / "run.tar") as tar:
        assert tar.getnames() == ["results.json"]


def test_compile_is_chosen_only_when_it_trains_more_clips_in_the_box() -> None:
    import argparse

    from train_host import Clock, plan_training

    args = argparse.Namespace(train_minutes=5.0, reserve=60.0, batch=128, epoch_seconds=60.0, min_steps=50)
    clock = Clock(minutes=9.0)
    eager = {"samples_per_s": 1000.0, "warmup_seconds": 5.0}
    fast = {"samples_per_s": 1500.0, "warmup_seconds": 60.0}
    slow_to_compile = {"samples_per_s": 1100.0, "warmup_seconds": 120.0}
    chosen = plan_training(args, {"eager": eager, "compiled": fast}, clock)
    assert chosen["compile"] and chosen["seconds"] == 300
    assert chosen["steps"] == int((300 * 0.9 - 60) * 1500 / 128) and chosen["clips_per_epoch"] % 128 == 0
    assert not plan_training(args, {"eager": eager, "compiled": slow_to_compile}, clock)["compile"]
    assert not plan_training(args, {"eager": eager, "compiled": None}, clock)["compile"]


BLOCKED = ["fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "multipart", "httptools", "av"]


@pytest.mark.slow
def test_host_script_runs_end_to_end_with_only_what_the_host_has(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "out"
    code = (  # the host lacks these: importing one fails
        f"import runpy, sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    script = str(REPO / "benchmarks" / "gpu" / "train_host.py")
    args = ["--smoke", "--out", str(out), "--data-dir", str(mnist_dir), "--held-out-digits", "100", "--part-mib", "0.03"]
    done = subprocess.run([sys.executable, "-c", code, script, *args], capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("preflight", "benchmark", "training", "results"):
        assert f"] {name}" in done.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 0.03 * 2**20 or f in ("run.tar", "results.md") for f in files)
    with tarfile.open(out / "run.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    results = json.loads((tmp_path / "unpacked" / "results.json").read_text())
    assert results["preflight"]["onnx_validation_passed"] and results["onnx_validation"]["passed"]
    assert results["training"]["step"] > 0 and results["training"]["loop_seconds"] < 60
    test = results["test"]
    assert test["model"]["mse"] > 0 and test["all zeros"]["mse"] > 0 and len(test["model"]["per_frame_mse"]) == 10
    assert results["projection"]["hours_at_steady_rate"] > 0
    assert (tmp_path / "unpacked" / "run.log").read_text().count("stlight train") == 2
    weights_file = results["packed"]["tiny.pt"]
    parts = sorted(out.glob("tiny.pt.part*"))
    assert len(parts) == weights_file["parts"] > 1
    (tmp_path / "tiny.pt").write_bytes(b"".join(p.read_bytes() for p in parts))
    from model.checkpoint import load_checkpoint

    _, config = load_checkpoint(tmp_path / "tiny.pt")
    assert config.dim == 32 and config.depth == 2
    markdown = (out / "results.md").read_text()
    assert "| STLight-L (paper) | 32.9 | 200 | 21.80 | 66.92 | 0.9515 |" in markdown
    assert "| **this run**: tiny" in markdown and "200 epochs (2,000,000 clips) would take" in markdown
    assert "cat tiny.pt.part* > tiny.pt" in markdown
