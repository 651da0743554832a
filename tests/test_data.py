"""Datasets: the idx reader, the Moving MNIST generator's rules, the users' data loaders on good
and bad input, and the checksum-verified MNIST download (served from loopback)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import preset
from model.data import (
    MMNIST_TEST_FILE,
    MNIST_TRAIN_FILE,
    VAL_SEED,
    DataError,
    DataSpec,
    MovingMNIST,
    build_datasets,
    build_test_dataset,
    data_shape,
    download_mnist,
    infer_dataset,
    load_mnist_digits,
    moving_mnist_clip,
    random_trajectory,
    read_idx_images,
)

TINY = preset("tiny").replace(dim=32, depth=2, in_frames=4, out_frames=2)  # 6 frames of 1×64×64


@pytest.fixture(scope="module")
def mnist_gz(mnist_dir: Path) -> Path:
    return next(mnist_dir.glob("*-images-idx3-ubyte.gz"))


# ---------------------------------------------------------------------------------------
# idx reader
# ---------------------------------------------------------------------------------------


def test_idx_reader_reads_gzipped_and_plain_files_alike(mnist_gz: Path, tmp_path: Path) -> None:
    plain = tmp_path / "train-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(mnist_gz.read_bytes()))
    a, b = read_idx_images(mnist_gz), read_idx_images(plain)
    assert a.shape == b.shape and a.shape[1:] == (28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.max() == 255 and a.mean() > 10  # real digits, not blank


def test_idx_reader_rejects_wrong_magic_and_truncation(mnist_gz: Path, tmp_path: Path) -> None:
    raw = gzip.decompress(mnist_gz.read_bytes())
    (tmp_path / "labels-idx3-ubyte").write_bytes((2049).to_bytes(4, "big") + raw[4:])
    with pytest.raises(DataError, match="magic number 2051"):
        read_idx_images(tmp_path / "labels-idx3-ubyte")
    (tmp_path / "short-idx3-ubyte").write_bytes(raw[:10_000])
    with pytest.raises(DataError, match="truncated"):
        read_idx_images(tmp_path / "short-idx3-ubyte")


# ---------------------------------------------------------------------------------------
# Moving MNIST rules
# ---------------------------------------------------------------------------------------


def test_trajectories_stay_on_the_canvas_move_by_the_step_and_bounce() -> None:
    rng = np.random.default_rng(0)
    canvas = 36
    bounced = 0
    for _ in range(50):
        rows, cols = random_trajectory(rng, 60, canvas)
        for pos in (rows, cols):
            assert pos.min() >= 0 and pos.max() <= canvas
            assert np.abs(np.diff(pos)).max() <= 4  # 0.1 of the unit square = 3.6 pixels
            moves = np.sign(np.diff(pos))
            moves = moves[moves != 0]
            bounced += int(np.any(moves[1:] != moves[:-1]))
    assert bounced > 20  # 60 frames of 0.1 cross the unit square several times


def test_single_digit_clip_keeps_the_whole_digit_inside_every_frame(digits: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        clip = moving_mnist_clip(rng, digits, 20, 64, num_digits=1)
        mass = clip.reshape(20, -1).sum(axis=1, dtype=np.int64)
        assert np.all(mass == mass[0]) and mass[0] > 0  # never cut by the border


def test_two_digits_combine_by_maximum(digits: np.ndarray) -> None:
    clip = moving_mnist_clip(np.random.default_rng(2), digits, 20, 64)
    one_a = moving_mnist_clip(np.random.default_rng(2), digits, 20, 64, num_digits=1)
    assert clip.dtype == np.uint8 and clip.shape == (20, 64, 64)
    assert np.all(clip >= one_a)  # the first digit is drawn identically, the second only raises pixels


def test_dataset_is_a_function_of_seed_epoch_and_index(digits: np.ndarray) -> None:
    a = MovingMNIST(digits, 8, 4, 2, seed=5)
    b = MovingMNIST(digits, 8, 4, 2, seed=5)
    x, y = a[3]
    assert x.shape == (4, 1, 64, 64) and y.shape == (2, 1, 64, 64)
    assert x.dtype.is_floating_point and float(x.min()) >= 0 and float(x.max()) <= 1
    assert x.equal(b[3][0]) and y.equal(b[3][1])
    b.set_epoch(1)
    assert not x.equal(b[3][0])
    assert not x.equal(a[4][0])
    assert not x.equal(MovingMNIST(digits, 8, 4, 2, seed=6)[3][0])


def test_validation_clips_are_the_same_every_run(mnist_dir: Path) -> None:
    spec = DataSpec("mmnist", data_dir=str(mnist_dir), clips_per_epoch=16, val_clips=4, seed=123)
    _, val_a = build_datasets(spec, TINY)
    _, val_b = build_datasets(DataSpec("mmnist", data_dir=str(mnist_dir), clips_per_epoch=16, val_clips=4, seed=7), TINY)
    assert val_a.seed == VAL_SEED
    for i in range(4):
        assert val_a[i][0].equal(val_b[i][0])


def test_mnist_test_seq_layout_is_read(tmp_path: Path, digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    clips = np.stack([moving_mnist_clip(rng, digits, 20, 64) for _ in range(3)])  # (N, 20, 64, 64)
    np.save(tmp_path / MMNIST_TEST_FILE, clips.transpose(1, 0, 2, 3))  # the standard file: (20, N, 64, 64)
    test = build_test_dataset(DataSpec("mmnist", data_dir=str(tmp_path)), preset("tiny"))
    assert len(test) == 3
    x, y = test[2]
    assert np.allclose(x.numpy()[:, 0] * 255, clips[2, :10]) and np.allclose(y.numpy()[:, 0] * 255, clips[2, 10:])


# ---------------------------------------------------------------------------------------
# npz / npy, TaxiBJ, frames
# ---------------------------------------------------------------------------------------


def test_npz_uint8_and_npy_float_load_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (20, 6, 1, 64, 64), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", clips=data)
    np.save(tmp_path / "mine.npy", data.astype(np.float32) / 255)
    for name in ("mine.npz", "mine.npy"):
        train, val = build_datasets(DataSpec("npz", data_path=str(tmp_path / name), val_fraction=0.25, seed=1), TINY)
        assert (len(train), len(val)) == (15, 5)
        assert set(train.indices).isdisjoint(val.indices)
        x, y = val[0]
        clip = data[val.indices[0]]
        assert np.allclose(x.numpy(), clip[:4] / 255, atol=1e-6) and np.allclose(y.numpy(), clip[4:] / 255, atol=1e-6)
    other = build_datasets(DataSpec("npz", data_path=str(tmp_path / "mine.npz"), val_fraction=0.25, seed=2), TINY)[1]
    assert list(other.indices) != list(val.indices)
    np.savez(tmp_path / "val.npz", clips=data[:3])
    train, val = build_datasets(DataSpec("npz", data_path=str(tmp_path / "mine.npz"), val_path=str(tmp_path / "val.npz")), TINY)
    assert (len(train), len(val)) == (20, 3)
    assert data_shape(DataSpec("npz", data_path=str(tmp_path / "mine.npz"))) == {
        "frames": 6,
        "channels": 1,
        "height": 64,
        "width": 64,
    }


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 6, 64, 64), np.uint8), "rank 4"),
        (np.zeros((4, 5, 1, 64, 64), np.uint8), "clips have 5 frames"),
        (np.zeros((4, 6, 3, 32, 32), np.uint8), "--channels 3 --height 32 --width 32"),
        (np.full((4, 6, 1, 64, 64), np.nan, np.float32), "NaN"),
        (np.full((4, 6, 1, 64, 64), 7.0, np.float32), r"expected \[0, 1\]"),
        (np.zeros((0, 6, 1, 64, 64), np.uint8), "no clips"),
        (np.zeros((4, 6, 1, 64, 64), np.int64), "dtype int64"),
    ],
)
def test_npz_loader_refuses_bad_data_with_what_was_expected(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", clips=array)
    with pytest.raises(DataError, match=message):
        build_datasets(DataSpec("npz", data_path=str(tmp_path / "bad.npz")), TINY)


def test_npz_loader_refuses_missing_or_ambiguous_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(DataSpec("npz", data_path=str(tmp_path / "none.npz")), TINY)
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(DataError, match="named 'clips'"):
        build_datasets(DataSpec("npz", data_path=str(tmp_path / "two.npz")), TINY)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        build_datasets(DataSpec("npz", data_path=str(tmp_path / "junk.npz")), TINY)
    with pytest.raises(DataError, match="--data-path"):
        build_datasets(DataSpec("npz"), TINY)


def test_taxibj_maps_minus_one_one_to_unit_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, 4, 2, 32, 32)).astype(np.float32)
    y = rng.uniform(-1, 1, (6, 4, 2, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "dataset.npz", X_train=x, Y_train=y, X_test=x[:2], Y_test=y[:2])
    config = preset("taxibj-s")
    train, test = build_datasets(DataSpec("taxibj", data_dir=str(tmp_path)), config)
    assert (len(train), len(test)) == (6, 2)
    inputs, targets = train[1]
    assert np.allclose(inputs.numpy(), (x[1] + 1) / 2, atol=1e-6) and np.allclose(targets.numpy(), (y[1] + 1) / 2, atol=1e-6)
    np.savez(tmp_path / "dataset.npz", X_train=x, Y_train=y)
    with pytest.raises(DataError, match="missing X_test, Y_test"):
        build_datasets(DataSpec("taxibj", data_dir=str(tmp_path)), config)


def _write_clip(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{t:03d}.png")


def test_frame_folders_load_sorted_images(tmp_path: Path, digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    clips = [moving_mnist_clip(rng, digits, 7, 64) for _ in range(5)]
    for i, clip in enumerate(clips):
        _write_clip(tmp_path / f"clip{i}", clip)
    train, val = build_datasets(DataSpec("frames", data_dir=str(tmp_path), val_fraction=0.2), TINY)
    assert (len(train), len(val)) == (4, 1)
    test = build_test_dataset(DataSpec("frames", data_dir=str(tmp_path)), TINY)
    x, y = test[3]
    assert np.allclose(x.numpy()[:, 0] * 255, clips[3][:4], atol=1e-3) and np.allclose(
        y.numpy()[:, 0] * 255, clips[3][4:6], atol=1e-3
    )
    assert data_shape(DataSpec("frames", data_dir=str(tmp_path))) == {"frames": 7, "channels": 1, "height": 64, "width": 64}


def test_frame_folders_refuse_short_clips_and_mixed_sizes(tmp_path: Path, digits: np.ndarray) -> None:
    clip = moving_mnist_clip(np.random.default_rng(0), digits, 6, 64)
    _write_clip(tmp_path / "a" / "clip0", clip)
    _write_clip(tmp_path / "a" / "clip1", clip[:3])
    with pytest.raises(DataError, match="has 3 image files"):
        build_test_dataset(DataSpec("frames", data_dir=str(tmp_path / "a")), TINY)
    _write_clip(tmp_path / "b" / "clip0", clip)
    _write_clip(tmp_path / "b" / "clip1", np.zeros((6, 48, 64), np.uint8))
    with pytest.raises(DataError, match="is 64x48"):
        build_test_dataset(DataSpec("frames", data_dir=str(tmp_path / "b")), TINY)


def test_data_path_alone_says_which_dataset_it_is(tmp_path: Path) -> None:
    np.savez(tmp_path / "clips.npz", clips=np.zeros((2, 6, 1, 64, 64), np.uint8))
    taxibj = {k: np.zeros((2, 4, 2, 32, 32), np.float32) for k in ("X_train", "Y_train", "X_test", "Y_test")}
    np.savez(tmp_path / "dataset.npz", **taxibj)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert infer_dataset(tmp_path / "clips.npz") == "npz"
    assert infer_dataset(tmp_path / "dataset.npz") == "taxibj"
    assert infer_dataset(tmp_path / "mine.npy") == infer_dataset(tmp_path / "missing.npz") == "npz"
    assert infer_dataset(tmp_path / "mnist_test_seq.npy") == "mmnist"
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        infer_dataset(tmp_path / "broken.npz")
    with pytest.raises(DataError, match="add --dataset"):
        infer_dataset(tmp_path / "walk.mp4")


# ---------------------------------------------------------------------------------------
# MNIST download, against a real HTTP server on loopback
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, mnist_gz: Path) -> Iterator[str]:
    """A loopback HTTP server whose root holds the shared digits under the standard name."""
    root = tmp_path_factory.mktemp("mirror")
    shutil.copy(mnist_gz, root / MNIST_TRAIN_FILE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_checksums_and_lands_under_the_standard_name(mirror: str, mnist_gz: Path, tmp_path: Path) -> None:
    blob = mnist_gz.read_bytes()
    md5, sha = hashlib.md5(blob).hexdigest(), hashlib.sha256(blob).hexdigest()
    dead = "http://127.0.0.1:9/nothing.gz"  # discard port: refused, then the next mirror is tried
    path = download_mnist(tmp_path / "mnist", urls=[dead, mirror + MNIST_TRAIN_FILE], md5=md5, sha256=sha)
    assert path == tmp_path / "mnist" / MNIST_TRAIN_FILE and path.read_bytes() == blob
    assert np.array_equal(load_mnist_digits(tmp_path / "mnist", download=False), read_idx_images(mnist_gz))


def test_download_with_wrong_checksum_keeps_nothing_and_says_what_to_put_where(mirror: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"checksum mismatch.*Put the standard MNIST training images {MNIST_TRAIN_FILE}"):
        download_mnist(tmp_path, urls=[mirror + MNIST_TRAIN_FILE])  # the real MNIST checksums: these bytes differ
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        load_mnist_digits(tmp_path / "empty", urls=["http://127.0.0.1:9/x.gz"])


def test_file_urls_work_too(mnist_gz: Path, tmp_path: Path) -> None:
    blob = mnist_gz.read_bytes()
    path = download_mnist(
        tmp_path, urls=[mnist_gz.resolve().as_uri()], md5=hashlib.md5(blob).hexdigest(), sha256=hashlib.sha256(blob).hexdigest()
    )
    assert path.read_bytes() == blob
