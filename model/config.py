"""STLight's configuration and named presets. Pure Python (no torch), so the CLI can list
presets and the service can read a model card's config without PyTorch installed.

The clip shape (T, T', C, H, W) is :class:`service.core.card.ClipSpec`'s; the config adds the
network's own fields to it, so a config is accepted wherever a clip shape is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from service.core.card import ClipSpec

# ---------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class STLightConfig(ClipSpec):
    """Everything needed to rebuild an STLight model; stored whole in every checkpoint.

    The clip shape comes first (from :class:`ClipSpec`, no defaults: a model is built for its
    data), then the network."""

    dim: int = 800  # d, mixer width; the paper's XS on Moving MNIST
    depth: int = 16  # number of STLMixer blocks; the paper uses 16 throughout
    patch_size: int = 2  # p, encoder stride; latent grid is (H/p, W/p)
    overlap: int = 0  # O; 0 is best for small models, 2 for large ones (paper §4.5)
    kernel_1: int = 3  # k1, first depthwise conv
    kernel_2: int = 7  # k2, second depthwise conv (dilation 3)

    def __post_init__(self) -> None:
        for name in (f.name for f in dataclasses.fields(self) if f.name != "overlap"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"overlap must be an integer >= 0, got {self.overlap!r}")
        for name in ("kernel_1", "kernel_2"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(
                    f"{name} must be odd so that padding='same' is symmetric, got {getattr(self, name)}; use "
                    f"{getattr(self, name) + 1}"
                )
        p = self.patch_size
        if self.dim % (p * p):
            lo = self.dim - self.dim % (p * p)
            fix = f"dim={lo} or dim={lo + p * p}" if lo else f"dim={p * p}"
            raise ValueError(
                f"dim ({self.dim}) must be divisible by patch_size**2 ({p * p}) for the PixelShuffle decoder; use {fix}"
            )
        for name in ("height", "width"):
            size = getattr(self, name)
            if size % p:
                raise ValueError(
                    f"{name} ({size}) must be divisible by patch_size ({p}); resize frames or choose another patch_size"
                )
        out = self.latent_size(self.height)
        if out != self.height // p:
            raise ValueError(
                f"overlap={self.overlap} with patch_size={p} makes the encoder output {out} rows instead of "
                f"height/patch_size={self.height // p}; use overlap 0 or 1, or an even (overlap-1)*patch_size"
            )

    # derived sizes -------------------------------------------------------------------
    @property
    def encoder_kernel(self) -> int:
        return self.patch_size * max(1, self.overlap)

    @property
    def encoder_padding(self) -> int:
        return max(0, self.overlap - 1) * self.patch_size // 2

    def latent_size(self, size: int) -> int:
        """Rows (or columns) the patch encoder produces from ``size`` input rows."""
        return (size + 2 * self.encoder_padding - self.encoder_kernel) // self.patch_size + 1

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> STLightConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown STLightConfig fields: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: int) -> STLightConfig:
        return dataclasses.replace(self, **changes)


# the dataset kinds `stlight train` reads (model/data.py); here so the CLI can offer them without torch
DATASETS = ("mmnist", "npz", "taxibj", "frames", "videos")

# ---------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------

_MMNIST = STLightConfig(in_frames=10, out_frames=10, channels=1, height=64, width=64, depth=16, patch_size=2)
_TAXIBJ = STLightConfig(in_frames=4, out_frames=4, channels=2, height=32, width=32, depth=16, patch_size=1)
_KTH = STLightConfig(in_frames=10, out_frames=20, channels=1, height=128, width=128, depth=16, patch_size=2)

PRESETS: dict[str, STLightConfig] = {
    # Moving MNIST, Table 3: 11.1 / 17.1 / 24.3 / 32.9 M parameters
    "mmnist-xs": _MMNIST.replace(dim=800),
    "mmnist-s": _MMNIST.replace(dim=1000),
    "mmnist-m": _MMNIST.replace(dim=1200),
    "mmnist-l": _MMNIST.replace(dim=1400),
    # TaxiBJ, Table 3: 0.99 / 1.65 / 2.96 M (d chosen for depth 16)
    "taxibj-s": _TAXIBJ.replace(dim=218),
    "taxibj-m": _TAXIBJ.replace(dim=290),
    "taxibj-l": _TAXIBJ.replace(dim=398),
    # KTH 10 -> 20, Table 3: 1.4 / 5.4 / 9.5 / 14.6 M (d chosen for depth 16, multiple of 4)
    "kth-xs": _KTH.replace(dim=264),
    "kth-s": _KTH.replace(dim=548),
    "kth-m": _KTH.replace(dim=736),
    "kth-l": _KTH.replace(dim=920),
    # CPU tests and the shipped demo model: Moving MNIST shapes, 229 k parameters. Patch 4 and
    # 4 wide blocks: the dilated depthwise convs dominate CPU time, so 4 blocks of d=192 train
    # ~3x faster per clip than 16 of d=96, and d/p² = 12 channels feed the reassemble conv.
    "tiny": _MMNIST.replace(dim=192, depth=4, patch_size=4),
}


def preset(name: str) -> STLightConfig:
    """The named preset; raises with the list of names when unknown."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def configure(name: str, **overrides: int) -> STLightConfig:
    """The named preset with some fields changed; ``ValueError`` says how to fix an invalid combination."""
    return dataclasses.replace(preset(name), **overrides)
