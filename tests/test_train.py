"""`stlight train` / `stlight eval` end to end on CPU: a short run learns, a split run resumes to
the same weights, eval agrees with training's validation, and user mistakes get one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import VAL_SEED, MovingMNIST, load_mnist_digits
from service.cli.stlight import main

# a small model predicting 1 frame from 4: learns visibly in ~150 CPU steps
SMALL = [
    "--preset",
    "tiny",
    "--dim",
    "32",
    "--depth",
    "2",
    "--in-frames",
    "4",
    "--out-frames",
    "1",
    "--threads",
    "1",
    "--no-progress",
]


def train(*args: str) -> int:
    return main(["train", *SMALL, *args])


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("learn")
    rc = train(
        "--data-dir",
        str(mnist_dir),
        "--max-steps",
        "150",
        "--lr",
        "2e-2",
        "--batch-size",
        "16",
        "--val-clips",
        "64",
        "--out",
        str(out),
    )
    assert rc == 0
    return out


@pytest.mark.slow
def test_short_run_learns_well_below_the_all_zeros_prediction(learned_run: Path, mnist_dir: Path) -> None:
    lines = [json.loads(line) for line in (learned_run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 150
    val = MovingMNIST(load_mnist_digits(mnist_dir, download=False), 64, 4, 1, seed=VAL_SEED)
    truth = np.stack([val[i][1].numpy() for i in range(len(val))])
    zeros_mse = float(np.mean(np.sum(truth**2, axis=(2, 3, 4))))  # OpenSTL MSE of predicting black frames
    assert lines[0]["mse"] < 0.7 * zeros_mse, (lines[0]["mse"], zeros_mse)
    assert lines[0]["ssim"] > 0.3 and len(lines[0]["per_frame_mse"]) == 1


@pytest.mark.slow
def test_run_folder_holds_checkpoints_and_a_picture(learned_run: Path) -> None:
    last = torch.load(learned_run / "last.pt", weights_only=True)
    for key in (
        "config",
        "model",
        "optimizer",
        "scheduler",
        "step",
        "epoch",
        "rng",
        "metrics",
        "best_mse",
        "preset",
        "dataset",
        "run",
    ):
        assert key in last, key
    assert last["step"] == 150 and last["preset"] == "tiny" and last["dataset"] == "mmnist"
    assert last["config"]["dim"] == 32 and last["run"]["total_steps"] == 150
    assert (learned_run / "best.pt").is_file()
    strip = Image.open(learned_run / "val_step0000150.png")
    assert strip.size == (2 * (4 * 64 + 3 * 2), 2 * (3 * 64 + 2 * 2))  # 3 rows (input, truth, prediction), 4 columns, x2


@pytest.mark.slow
def test_eval_reproduces_the_validation_metrics(
    learned_run: Path, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    validated = json.loads((learned_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (
        main(
            ["eval", str(learned_run / "best.pt"), "--data-dir", str(mnist_dir), "--val-clips", "64", "--json", "--threads", "1"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"mse", "mae", "ssim", "psnr", "per_frame_mse"}
    assert report["mse"] == pytest.approx(validated["mse"], rel=1e-6)
    # the same clips as a user's npz file: every clip of it is evaluated
    val = MovingMNIST(load_mnist_digits(mnist_dir, download=False), 64, 4, 1, seed=VAL_SEED)
    clips = np.stack([torch.cat(val[i]).numpy() for i in range(len(val))])  # (64, 5, 1, 64, 64)
    np.savez(tmp_path / "mine.npz", clips=np.round(clips * 255).astype(np.uint8))
    assert main(["eval", str(learned_run / "best.pt"), "--data-path", str(tmp_path / "mine.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mse"] == pytest.approx(validated["mse"], rel=1e-5)


@pytest.mark.parametrize("dataset", ["mmnist", "npz", "mmnist-on-device"])
def test_split_run_resumes_to_identical_weights(dataset: str, mnist_dir: Path, tmp_path: Path) -> None:
    if dataset == "mmnist":
        data = ["--data-dir", str(mnist_dir), "--clips-per-epoch", "24"]
    elif dataset == "mmnist-on-device":  # the GPU recipe's data path and layout, on CPU
        data = ["--data-dir", str(mnist_dir), "--clips-per-epoch", "24", "--clips-on-device", "--channels-last"]
    else:
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "clips.npz", clips=rng.integers(0, 256, (30, 5, 1, 64, 64), dtype=np.uint8))
        data = ["--data-path", str(tmp_path / "clips.npz"), "--val-fraction", "0.2"]  # npz: told by the file
    run = [*data, "--batch-size", "8", "--max-steps", "7", "--val-clips", "8"]  # 3 steps per epoch
    assert train(*run, "--out", str(tmp_path / "whole")) == 0
    assert train(*run, "--stop-after", "4", "--out", str(tmp_path / "split")) == 0  # stops mid-epoch
    half = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert half["step"] == 4
    layout = ["--channels-last"] if "--channels-last" in data else []  # a runtime flag: given again, as --threads is
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--threads", "1", "--no-progress", *layout]) == 0
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert split["step"] == whole["step"] == 7
    assert whole["dataset"] == split["dataset"] == dataset.removesuffix("-on-device")
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, split["model"][name]), name
    assert whole["scheduler"]["last_epoch"] == split["scheduler"]["last_epoch"]
    assert not torch.equal(half["model"]["patch_reassemble.weight"], whole["model"]["patch_reassemble.weight"])


# ---------------------------------------------------------------------------------------
# user mistakes: one line on stderr, exit status 2, no traceback
# ---------------------------------------------------------------------------------------


def expect_error(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_mistakes_give_messages(capsys: pytest.CaptureFixture[str], tmp_path: Path, mnist_dir: Path) -> None:
    out = str(tmp_path / "run")
    expect_error(capsys, ["train", "--out", out, "--resume"], "does not exist; start the run without --resume")
    expect_error(capsys, ["train", "--dataset", "npz", "--out", out], "--dataset npz needs --data-path")
    expect_error(capsys, ["train", "--data-path", str(tmp_path / "clip.mp4"), "--out", out], "add --dataset")
    np.save(tmp_path / "flat.npy", np.zeros((4, 64, 64), np.uint8))
    expect_error(capsys, ["train", "--dataset", "npz", "--data-path", str(tmp_path / "flat.npy"), "--out", out], "got rank 3")
    np.save(tmp_path / "nan.npy", np.full((4, 20, 1, 64, 64), np.nan, np.float32))
    expect_error(capsys, ["train", "--dataset", "npz", "--data-path", str(tmp_path / "nan.npy"), "--out", out], "NaN")
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "train-images-idx3-ubyte").write_bytes(b"\x00" * 64)
    expect_error(capsys, ["train", "--data-dir", str(tmp_path / "digits"), "--out", out], "not an idx3 image file")
    expect_error(
        capsys,
        ["train", "--data-dir", str(mnist_dir), "--preset", "tiny", "--dim", "30", "--out", out],
        "divisible by patch_size**2",
    )
    expect_error(
        capsys, ["train", "--data-dir", str(mnist_dir), "--preset", "tiny", "--channels", "3", "--out", out], "channels=1"
    )
    expect_error(capsys, ["eval", str(tmp_path / "none.pt")], "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    expect_error(capsys, ["eval", str(tmp_path / "junk.pt")], "not a readable STLight checkpoint")
    if not torch.cuda.is_available():
        expect_error(capsys, ["train", "--data-dir", str(mnist_dir), "--device", "cuda", "--out", out], "no CUDA GPU")
    for bad in (["--batch-size", "0"], ["--lr", "-1"], ["--val-every", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--out", out, *bad])
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_resume_refuses_flags_that_change_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path, mnist_dir: Path) -> None:
    out = str(tmp_path / "run")
    assert (
        train(
            "--data-dir",
            str(mnist_dir),
            "--clips-per-epoch",
            "8",
            "--batch-size",
            "4",
            "--max-steps",
            "2",
            "--val-clips",
            "4",
            "--out",
            out,
        )
        == 0
    )
    capsys.readouterr()
    expect_error(capsys, ["train", *SMALL, "--out", out], "already holds a run")
    expect_error(capsys, ["train", "--out", out, "--resume", "--lr", "0.1"], "--lr 0.1 (run: 0.0015)")
    expect_error(capsys, ["train", "--out", out, "--resume", "--dim", "64"], "--dim 64 (run: 32)")
