"""STLight: a fully convolutional spatio-temporal predictor (Alfarano et al., WACV).

One file, top to bottom: the blocks, then the model (config and presets: ``model/config.py``). The module
names match the paper's appendix listing (Fig. 10) so its ``state_dict`` loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import PRESETS, STLightConfig, preset

__all__ = ["PRESETS", "STLight", "STLightConfig", "count_macs", "count_params", "preset"]

# ---------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------


class Residual(nn.Module):
    """``x + fn(x)``; the listing wraps the depthwise branch in this (``net.{i}.0.fn``)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


def patch_encoder(config: STLightConfig) -> nn.Sequential:
    """Stacked frames -> latent grid: one strided conv, BatchNorm, GELU."""
    return nn.Sequential(
        nn.Conv2d(
            config.in_frames * config.channels,
            config.dim,
            kernel_size=config.encoder_kernel,
            stride=config.patch_size,
            padding=config.encoder_padding,
        ),
        nn.BatchNorm2d(config.dim),
        nn.GELU(),
    )


def stl_mixer(dim: int, kernel_1: int, kernel_2: int) -> nn.Sequential:
    """A ConvMixer block with a dilated second depthwise conv (paper §3, Fig. 10)."""
    return nn.Sequential(
        Residual(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel_1, groups=dim, padding="same"),
                nn.Conv2d(dim, dim, kernel_2, groups=dim, padding="same", dilation=3),
                nn.GELU(),
                nn.BatchNorm2d(dim),
            )
        ),
        nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=1),
            nn.GELU(),
            nn.BatchNorm2d(dim),
        ),
    )


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


class STLight(nn.Module):
    """(B, T, C, H, W) in [0, 1] -> (B, T', C, H, W), one forward pass, no recurrence."""

    def __init__(self, config: STLightConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_encoder = patch_encoder(config)
        self.net = nn.Sequential(*[stl_mixer(config.dim, config.kernel_1, config.kernel_2) for _ in range(config.depth)])
        self.up = nn.PixelShuffle(config.patch_size)
        self.patch_reassemble = nn.Conv2d(config.dim // config.patch_size**2, config.out_frames * config.channels, kernel_size=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Hybrid init (App. D): Kaiming fan-out on encoder and mixer convs, zero bias;
        the reassemble conv keeps PyTorch's default; BatchNorm keeps its defaults."""
        for module in [*self.patch_encoder.modules(), *self.net.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = frames.shape
        cfg = self.config
        x = frames.reshape(b, t * c, h, w)  # (B, T·C, H, W): time stacked into channels
        x = self.patch_encoder(x)  # (B, d, H/p, W/p)
        x1 = x
        for i, block in enumerate(self.net):
            if i == cfg.depth // 3:
                x1 = x
            if i == 2 * cfg.depth // 3:
                x = x + x1  # inter-block skip
            x = block(x)  # (B, d, H/p, W/p)
        x = self.up(x)  # (B, d/p², H, W)
        x = self.patch_reassemble(x)  # (B, T'·C, H, W)
        return x.reshape(b, cfg.out_frames, cfg.channels, h, w)  # (B, T', C, H, W)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(config: STLightConfig) -> int:
    """Multiply-accumulates of one clip (convs only; BN, GELU and adds are not counted)."""
    hp, wp = config.height // config.patch_size, config.width // config.patch_size
    d = config.dim
    encoder = hp * wp * d * config.in_frames * config.channels * config.encoder_kernel**2
    block = hp * wp * d * (config.kernel_1**2 + config.kernel_2**2 + d)
    decoder = config.height * config.width * (d // config.patch_size**2) * config.out_frames * config.channels
    return encoder + config.depth * block + decoder
