"""The training code's CUDA branches, checked on CPU with fakes of ``torch.cuda`` where no GPU is
needed to show the behaviour (precision choice, RNG states, TF32 flags), and the data-loading
fixes that CPU shows for real (persistent workers, memory-mapped clips sent to spawned workers).
Unverified here and left to a GPU machine: real autocast/GradScaler numerics and cuDNN's choices."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model.config import preset
from model.data import ClipArray, DataSpec, load_clip_file
from model.train import (
    LOSS_READ_EVERY,
    EpochBatches,
    EpochClips,
    LossMeter,
    RunSettings,
    Runtime,
    configure_cuda,
    evaluate,
    loader_for,
    rng_states,
    set_rng_states,
    strict_fp32,
    train,
    training_precision,
)

CUDA0 = torch.device("cuda", 0)


# ---------------------------------------------------------------------------------------
# precision: bf16 only where the GPU computes it natively
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_bf16_only_on_gpus_that_compute_it_natively(monkeypatch: pytest.MonkeyPatch, native: bool, expected: Any) -> None:
    calls = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return native or including_emulation  # a T4: bf16 "supported" by emulation only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert training_precision(CUDA0, amp=True) == expected
    assert calls == [False]
    assert training_precision(CUDA0, amp=False) is None
    assert training_precision(torch.device("cpu"), amp=True) is None


def test_no_amp_turns_tf32_off_and_evaluation_never_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark
    try:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = True, True, False
        configure_cuda(amp=True)
        assert cudnn.benchmark and cudnn.allow_tf32  # mixed precision: torch's defaults kept
        configure_cuda(amp=False)
        assert not cudnn.allow_tf32 and not matmul.allow_tf32

        cudnn.allow_tf32 = matmul.allow_tf32 = True
        seen = []

        class Probe(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                seen.append((cudnn.allow_tf32, matmul.allow_tf32, torch.is_autocast_enabled("cuda"), x.dtype))
                return x[:, :1]

        clips = [(torch.rand(2, 1, 8, 8), torch.rand(1, 1, 8, 8)) for _ in range(3)]
        evaluate(Probe(), clips, torch.device("cpu"), batch_size=2)  # type: ignore[arg-type]
        assert seen == [(False, False, False, torch.float32)] * 2
        assert cudnn.allow_tf32 and matmul.allow_tf32  # restored for training
        with pytest.raises(RuntimeError), strict_fp32():
            raise RuntimeError
        assert cudnn.allow_tf32 and matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


# ---------------------------------------------------------------------------------------
# RNG states: the device in use only; any number of saved states is tolerated
# ---------------------------------------------------------------------------------------


class FakeCudaRng:
    def __init__(self) -> None:
        self.state = {0: torch.tensor([7], dtype=torch.uint8)}
        self.set_calls: list[tuple[int, torch.device]] = []

    def get_rng_state(self, device: Any = "cuda") -> torch.Tensor:
        return self.state[torch.device(device).index or 0].clone()

    def set_rng_state(self, new_state: torch.Tensor, device: Any = "cuda") -> None:
        device = torch.device(device)
        if (device.index or 0) not in self.state:
            raise IndexError(device)
        self.state[device.index or 0] = new_state
        self.set_calls.append((int(new_state[0]), device))


@pytest.fixture
def fake_cuda_rng(monkeypatch: pytest.MonkeyPatch) -> FakeCudaRng:
    fake = FakeCudaRng()  # one visible GPU
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)

    def no_all(*_: Any) -> None:
        raise AssertionError("the states of all devices must not be used")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", no_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", no_all)
    return fake


def test_rng_state_of_the_device_in_use_round_trips(fake_cuda_rng: FakeCudaRng) -> None:
    states = rng_states(CUDA0)
    assert torch.equal(states["cuda"], torch.tensor([7], dtype=torch.uint8))
    assert "cuda" not in rng_states(torch.device("cpu"))
    random.random()
    set_rng_states(states, CUDA0)
    assert random.getstate() == states["python"] and fake_cuda_rng.set_calls == [(7, CUDA0)]


def test_resume_of_a_checkpoint_saved_with_more_gpus_than_visible(tmp_path: Path, fake_cuda_rng: FakeCudaRng) -> None:
    # what older checkpoints hold: torch.cuda.get_rng_state_all() of a 4-GPU machine, by index
    states = rng_states(torch.device("cpu"))
    states["cuda"] = [torch.tensor([10 + i], dtype=torch.uint8) for i in range(4)]
    torch.save({"rng": states}, tmp_path / "last.pt")
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)["rng"]
    set_rng_states(loaded, CUDA0)  # one GPU visible now: torch.cuda.set_rng_state_all would raise IndexError
    assert fake_cuda_rng.set_calls == [(10, CUDA0)]  # the run's device was its first
    set_rng_states({**loaded, "cuda": []}, CUDA0)  # and none saved at all
    set_rng_states(loaded, torch.device("cpu"))  # a CPU resumption ignores GPU states
    assert len(fake_cuda_rng.set_calls) == 1


# ---------------------------------------------------------------------------------------
# the loss stays on the device; a NaN still never reaches a checkpoint
# ---------------------------------------------------------------------------------------


class PoisonedClips(Dataset):
    """Random 16x16 clips; every clip of epoch >= 1 has a NaN target."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        target = torch.rand(1, 1, 16, 16, generator=g)
        if self.epoch >= 1:
            target[0, 0, 0, 0] = float("nan")
        return torch.rand(4, 1, 16, 16, generator=g), target


def test_nan_loss_is_caught_at_the_next_read_before_any_checkpoint(tmp_path: Path) -> None:
    config = preset("tiny").replace(dim=32, depth=2, in_frames=4, out_frames=1, height=16, width=16)
    steps_per_epoch = 3  # the NaN starts at step 4, the epoch ends at step 6, before the read of step LOSS_READ_EVERY
    assert 2 * steps_per_epoch < LOSS_READ_EVERY
    settings = RunSettings("npz", "tiny", 1e-3, "onecycle", 1e4, 2, 4 * steps_per_epoch, steps_per_epoch, 0, 0, 4, 0.1)
    runtime = Runtime(out=tmp_path, device="cpu", threads=1, progress=False, val_every=0)
    clips = PoisonedClips(2 * steps_per_epoch)
    with pytest.raises(FloatingPointError, match=f"loss became nan by step {2 * steps_per_epoch};"):
        train(settings, config, DataSpec("npz"), runtime, datasets=(clips, PoisonedClips(4)))
    # epoch 0 ended clean: one checkpoint, from before the NaN
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == steps_per_epoch


def test_loss_is_read_from_the_device_every_n_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    syncs = []
    real_read = LossMeter.read

    def read(self: LossMeter, step: int) -> None:
        if self.pending_steps:  # a read that fetches from the device
            syncs.append(step)
        real_read(self, step)

    monkeypatch.setattr(LossMeter, "read", read)
    config = preset("tiny").replace(dim=32, depth=2, in_frames=4, out_frames=1, height=16, width=16)
    total = 2 * LOSS_READ_EVERY + 3
    settings = RunSettings("npz", "tiny", 1e-3, "onecycle", 1e4, 2, total, total, 0, 0, 4, 0.1)
    runtime = Runtime(out=tmp_path, device="cpu", threads=1, progress=False)
    summary = train(settings, config, DataSpec("npz"), runtime, datasets=(PoisonedClips(2 * total), PoisonedClips(4)))
    assert summary["step"] == total and summary["metrics"]["train_loss"] > 0
    assert syncs == [LOSS_READ_EVERY, 2 * LOSS_READ_EVERY, total]  # not once per step


# ---------------------------------------------------------------------------------------
# loader workers persist across epochs, and still see each epoch's clips
# ---------------------------------------------------------------------------------------


class EpochTagged(Dataset):
    """Clip ``i`` of epoch ``e`` is the number ``1000 e + i``."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(1000 * self.epoch + index)


def test_persistent_workers_see_every_epochs_clips() -> None:
    sampler = EpochBatches(12, 4, seed=0)
    loader = loader_for(EpochClips(EpochTagged()), 4, 1, torch.device("cpu"), batch_sampler=sampler)
    assert loader.persistent_workers
    worker_pids = set()
    for epoch, start in ((0, 0), (1, 0), (2, 1)):  # the last as a resumed run: its first batch skipped
        sampler.set_epoch(epoch, start)
        got = torch.cat(list(loader)).tolist()
        order = torch.randperm(12, generator=torch.Generator().manual_seed(epoch)).tolist()
        assert got == [1000 * epoch + i for i in order[4 * start :]], epoch
        worker_pids.add(id(loader._iterator))
    assert len(worker_pids) == 1  # the same worker process served all three epochs


# ---------------------------------------------------------------------------------------
# memory-mapped .npy clips travel to workers as a path
# ---------------------------------------------------------------------------------------


def test_memory_mapped_clips_pickle_as_a_path(tmp_path: Path) -> None:
    clips = np.random.default_rng(0).integers(0, 256, (64, 5, 1, 64, 64), dtype=np.uint8)  # 1.3 MB
    np.save(tmp_path / "clips.npy", clips)
    dataset = ClipArray(load_clip_file(tmp_path / "clips.npy"), 4, 1, indices=np.arange(10, 40))
    blob = pickle.dumps(dataset)
    assert len(blob) < 4096, len(blob)
    copy = pickle.loads(blob)
    for i in (0, 7, 29):
        for a, b in zip(dataset[i], copy[i], strict=True):
            assert torch.equal(a, b)
    assert isinstance(copy.clips, np.memmap)
    in_memory = ClipArray(clips, 4, 1)  # an array in memory (a .npz) still pickles whole
    assert len(pickle.dumps(in_memory)) > clips.nbytes


@pytest.mark.slow
def test_spawned_workers_read_memory_mapped_clips(tmp_path: Path) -> None:
    clips = np.random.default_rng(1).random((12, 5, 1, 16, 16), dtype=np.float32)
    np.save(tmp_path / "clips.npy", clips)
    dataset = ClipArray(load_clip_file(tmp_path / "clips.npy"), 4, 1)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    got = torch.cat([targets for _, targets in loader])
    assert torch.equal(got, torch.from_numpy(clips[:, 4:5]))
