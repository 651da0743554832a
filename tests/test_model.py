"""The architecture, config validation, presets and `stlight summary`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from model import PRESETS, STLight, STLightConfig, count_params, load_checkpoint, preset, save_checkpoint

# ---------------------------------------------------------------------------------------
# shapes, gradients, NaN — every preset family at a small width
# ---------------------------------------------------------------------------------------

FAMILIES = {
    "mmnist": "mmnist-xs",
    "taxibj": "taxibj-s",
    "kth": "kth-xs",
    "tiny": "tiny",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_shapes_gradients_no_nan(family: str) -> None:
    base = preset(FAMILIES[family])
    p2 = base.patch_size**2
    # small width and depth keep this fast; depth 6 still exercises the inter-block skip
    config = base.replace(dim=8 * p2, depth=6, height=min(base.height, 32), width=min(base.width, 32))
    torch.manual_seed(0)
    net = STLight(config)
    x = torch.rand(2, *config.input_shape)
    y = net(x)
    assert y.shape == (2, *config.output_shape)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_ten_to_twenty_frames() -> None:
    config = preset("kth-xs").replace(dim=16, depth=3, height=32, width=32)
    assert config.out_frames == 20
    y = STLight(config).eval()(torch.rand(1, 10, 1, 32, 32))
    assert y.shape == (1, 20, 1, 32, 32)


def test_overlap_two_keeps_latent_grid() -> None:
    config = preset("tiny").replace(dim=32, depth=2, patch_size=2, overlap=2)
    net = STLight(config)
    assert net.patch_encoder[0].kernel_size == (4, 4) and net.patch_encoder[0].padding == (1, 1)
    assert net(torch.rand(1, *config.input_shape)).shape == (1, *config.output_shape)


# ---------------------------------------------------------------------------------------
# parameter counts against the paper's Table 3
# ---------------------------------------------------------------------------------------

PAPER_PARAMS_M = {"mmnist-xs": 11.1, "mmnist-s": 17.1, "mmnist-m": 24.3, "mmnist-l": 32.9}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_mmnist_parameter_counts_match_paper(name: str) -> None:
    with torch.device("meta"):  # no memory for 33 M parameters, counts only
        net = STLight(preset(name))
    assert abs(count_params(net) / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.005


@pytest.mark.parametrize(
    ("name", "paper_m"),
    [
        ("taxibj-s", 0.99),
        ("taxibj-m", 1.65),
        ("taxibj-l", 2.96),
        ("kth-xs", 1.4),
        ("kth-s", 5.4),
        ("kth-m", 9.5),
        ("kth-l", 14.6),
    ],
)
def test_other_presets_near_paper_counts(name: str, paper_m: float) -> None:
    with torch.device("meta"):
        net = STLight(preset(name))
    assert abs(count_params(net) / 1e6 - paper_m) / paper_m < 0.01


def test_tiny_is_under_300k() -> None:
    assert count_params(STLight(preset("tiny"))) < 300_000


# ---------------------------------------------------------------------------------------
# config validation: each mistake raises with a hint
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "hint"),
    [
        ({"dim": 801}, "use dim=800 or dim=804"),
        ({"height": 63}, "height (63) must be divisible by patch_size"),
        ({"width": 65}, "width (65) must be divisible by patch_size"),
        ({"patch_size": 1, "overlap": 2}, "use overlap 0 or 1"),
        ({"patch_size": 3, "overlap": 2, "height": 63, "width": 63, "dim": 801}, "use overlap 0 or 1, or an even"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"in_frames": -1}, "in_frames must be a positive integer"),
        ({"kernel_1": 4}, "kernel_1 must be odd"),
        ({"kernel_2": 6}, "use 7"),
        ({"overlap": -1}, "overlap must be an integer >= 0"),
    ],
)
def test_invalid_config_raises_with_hint(changes: dict[str, int], hint: str) -> None:
    with pytest.raises(ValueError, match=hint.replace("(", r"\(").replace(")", r"\)")):
        STLightConfig(**{**preset("mmnist-xs").to_dict(), **changes})


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError, match="choose one of: mmnist-xs"):
        preset("mmnist-xxl")


def test_config_is_frozen_and_round_trips() -> None:
    config = preset("tiny")
    with pytest.raises(AttributeError):
        config.dim = 3  # type: ignore[misc]
    assert STLightConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown STLightConfig fields: colour"):
        STLightConfig.from_dict({**config.to_dict(), "colour": 1})


# ---------------------------------------------------------------------------------------
# an independent transcription of the paper's listing (PAPER.md), loaded by name
# ---------------------------------------------------------------------------------------


class _PaperResidual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class _PaperSTLight(nn.Module):
    """Written from PAPER.md's description alone, not from model/stlight.py."""

    def __init__(self, T: int, T_out: int, C: int, d: int, depth: int, p: int, O: int, k1: int, k2: int) -> None:  # noqa: E741
        super().__init__()
        self.T_out, self.C, self.depth = T_out, C, depth
        self.patch_encoder = nn.Sequential(
            nn.Conv2d(T * C, d, kernel_size=p * max(1, O), stride=p, padding=max(0, O - 1) * p // 2),
            nn.BatchNorm2d(d),
            nn.GELU(),
        )
        self.net = nn.Sequential(
            *[
                nn.Sequential(
                    _PaperResidual(
                        nn.Sequential(
                            nn.Conv2d(d, d, k1, groups=d, padding="same"),
                            nn.Conv2d(d, d, k2, groups=d, padding="same", dilation=3),
                            nn.GELU(),
                            nn.BatchNorm2d(d),
                        )
                    ),
                    nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU(), nn.BatchNorm2d(d)),
                )
                for _ in range(depth)
            ]
        )
        self.up = nn.PixelShuffle(p)
        self.patch_reassemble = nn.Conv2d(d // (p * p), T_out * C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C, H, W = x.shape
        x = self.patch_encoder(x.view(B, T * C, H, W))
        for i in range(self.depth):
            if i == self.depth // 3:
                x1 = x
            if i == 2 * self.depth // 3:
                x = x + x1
            x = self.net[i](x)
        return self.patch_reassemble(self.up(x)).view(B, self.T_out, self.C, H, W)


@pytest.mark.parametrize("overlap", [0, 2])
def test_paper_transcription_loads_by_name_and_matches(overlap: int) -> None:
    config = STLightConfig(
        in_frames=5, out_frames=7, channels=2, height=16, width=24, dim=32, depth=7, patch_size=2, overlap=overlap
    )
    torch.manual_seed(1)
    reference = _PaperSTLight(5, 7, 2, 32, 7, 2, overlap, 3, 7)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, 0.2)
                module.bias.normal_(0, 0.1)
            if isinstance(module, nn.BatchNorm2d):  # random statistics, so eval mode matters
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    reference.eval()
    ours = STLight(config).eval()
    assert ours.state_dict().keys() == reference.state_dict().keys()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(3, 5, 2, 16, 24)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5


def test_hybrid_init() -> None:
    net = STLight(preset("tiny").replace(dim=32, depth=2))
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith("patch_reassemble"):
            assert torch.count_nonzero(module.bias) == 0, name
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]  # torch's fan_out, groups ignored
            assert abs(module.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.5 * (2.0 / fan_out) ** 0.5, name
    assert torch.count_nonzero(net.patch_reassemble.bias) > 0  # PyTorch's default init kept


# ---------------------------------------------------------------------------------------
# checkpoints and the summary command
# ---------------------------------------------------------------------------------------


def test_checkpoint_rebuilds_exact_model(tmp_path) -> None:
    config = preset("tiny").replace(dim=32, depth=2)
    net = STLight(config).eval()
    path = save_checkpoint(tmp_path / "c.pt", net, config, step=7, preset="tiny")
    loaded, loaded_config = load_checkpoint(path)
    assert loaded_config == config and not loaded.training
    x = torch.rand(1, *config.input_shape)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_load_checkpoint_rejects_bad_file(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable STLight checkpoint"):
        load_checkpoint(bad)


def _stlight(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120)


def test_summary_json_mmnist_l() -> None:
    result = _stlight("summary", "--preset", "mmnist-l", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert abs(report["params"] / 1e6 - 32.9) < 0.1
    assert report["config"] == PRESETS["mmnist-l"].to_dict()
    assert 30e9 < report["macs"] < 36e9  # the paper's column: 32.3 G


def test_summary_override_and_error() -> None:
    ok = _stlight("summary", "--preset", "tiny", "--dim", "128", "--depth", "4", "--json")
    assert json.loads(ok.stdout)["config"]["dim"] == 128
    bad = _stlight("summary", "--preset", "tiny", "--dim", "100")
    assert bad.returncode == 2
    assert "must be divisible by patch_size**2" in bad.stderr and "Traceback" not in bad.stderr
