"""The VQ image tokenizer's configuration and its presets, apart from the network.

:mod:`worldvla.tokenizers.vq` builds and trains the network a :class:`VQConfig` describes;
this module holds only the config and the named presets, so that whatever composes
presets (the experiments, ``worldvla presets``, the commands' help) reads them without
importing torch (docs/ARCHITECTURE.md, "Configuration code does not load torch").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from worldvla.errors import ConfigError
from worldvla.utils.registry import Registry


@dataclass(frozen=True)
class VQConfig:
    """Architecture and quantizer of a VQ tokenizer; saved next to the weights.

    ``name`` labels a preset (the run records of an experiment name their tokenizer by it);
    it is not part of the architecture, so it is neither saved (:meth:`to_dict`) nor
    compared: a tokenizer read back from its files equals the preset it was trained from.
    """

    name: str = field(default="custom", compare=False)
    image_size: int = 64
    downsample: int = 8  # image_size / grid side; 2 ** len(channels)
    channels: tuple[int, ...] = (32, 64, 128)  # one entry per stride-2 stage
    stem_channels: int = 16  # channels of the full-resolution conv in/out
    blocks: tuple[int, ...] = (0, 1, 2)  # residual blocks after each stride-2 stage (CPU cost lives here)
    mid_blocks: int = 2  # residual blocks at the lowest resolution (decoder input)
    latent_dim: int = 64
    quantizer: str = "fsq"  # "fsq" | "vq" (comparison in docs/image_tokenizer.md)
    codebook_size: int = 1024  # "vq" only; for "fsq" the product of fsq_levels
    codebook_dim: int = 16  # "vq": the codebook's own (projected) space
    ema_decay: float = 0.95
    dead_code_threshold: float = 1.0  # "vq": replace codes with EMA cluster size below this
    commitment_weight: float = 0.25
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # "fsq": 1,000 codes
    groups: int = 16  # GroupNorm groups (must divide every channel count)
    norm: str = "group"  # "group" (whole-frame statistics) | "channel" (per position; local codes)

    def __post_init__(self) -> None:
        if self.norm not in ("group", "channel"):
            raise ConfigError(f"norm must be 'group' or 'channel', got {self.norm!r}")
        if self.quantizer not in ("vq", "fsq"):
            raise ConfigError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        n = round(math.log2(self.downsample)) if self.downsample > 0 else -1
        if self.downsample < 2 or 2**n != self.downsample or len(self.channels) != n:
            raise ConfigError(
                f"downsample={self.downsample} needs one channel entry per stride-2 stage "
                f"(log2 = {n}); got channels={self.channels}"
            )
        if self.image_size % self.downsample:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of downsample {self.downsample}"
            )
        if len(self.blocks) != len(self.channels):
            raise ConfigError(f"blocks {self.blocks} needs one entry per stage (channels {self.channels})")
        for c in (*self.channels, self.stem_channels):
            if c % self.groups:
                raise ConfigError(f"channel count {c} is not divisible by groups={self.groups}")
        if self.quantizer == "fsq" and any(level < 3 for level in self.fsq_levels):
            raise ConfigError(f"fsq_levels must all be >= 3, got {self.fsq_levels}")
        if self.vocab_size > 65536:
            raise ConfigError(f"codebook of {self.vocab_size} codes does not fit the uint16 token cache")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return (side, side)

    @property
    def vocab_size(self) -> int:
        """Number of distinct codes (the ``codebook_size`` the rest of the project sees)."""
        return int(np.prod(self.fsq_levels)) if self.quantizer == "fsq" else self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["name"]  # a label, not the architecture: saved configs and fingerprints never had it
        d["channels"] = list(self.channels)
        d["blocks"] = list(self.blocks)
        d["fsq_levels"] = list(self.fsq_levels)
        if d["norm"] == "group":
            del d["norm"]  # added later: at its default a tokenizer keeps the fingerprint it had
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        d = dict(d)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown VQ config fields: {sorted(unknown)}")
        for k in ("channels", "blocks", "fsq_levels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


PRESETS: Registry[VQConfig] = Registry("tokenizer preset")
PRESETS.register(
    "mw64",
    VQConfig(name="mw64"),
    "Meta-World frames, 64x64 -> 8x8 codes, FSQ 8*5*5*5 = 1,000 codes; the default",
)
# Per-position normalisation and no blocks at 8×8, so that a code sees a 41-pixel window
# around its patch and stays put where the image does not change
# (docs/image_tokenizer.md, "Codes that stay put").
PRESETS.register(
    "mw64-local",
    VQConfig(name="mw64-local", blocks=(1, 1, 0), norm="channel"),
    "mw64 with local codes: per-position normalisation, no blocks at 8x8",
)
PRESETS.register(
    "mw64-vq",
    VQConfig(name="mw64-vq", quantizer="vq"),
    "mw64 with a learned codebook (VectorQuantize, 1,024 codes): the runner-up",
)
PRESETS.register(
    "libero256",
    VQConfig(
        name="libero256",
        image_size=256,
        downsample=16,
        channels=(32, 64, 128, 128),
        blocks=(0, 1, 1, 1),
        stem_channels=32,
        fsq_levels=(8, 8, 8, 4, 4),  # 8,192 codes, the reference codebook size
    ),
    "LIBERO-sized frames with our own tokenizer: 256x256 -> 16x16 codes, 8,192 codes",
)
# Tiny debug siblings: seconds on a laptop, used by the tests.
PRESETS.register(
    "tiny",
    VQConfig(
        name="tiny",
        image_size=16,
        downsample=4,
        channels=(16, 16),
        blocks=(1, 1),
        stem_channels=16,
        latent_dim=8,
        fsq_levels=(4, 4, 3),
        groups=4,
    ),
    "tests: 16x16 -> 4x4 codes, FSQ, seconds on a laptop",
)
PRESETS.register(
    "tiny-vq",
    replace(
        PRESETS.get("tiny"),
        name="tiny-vq",
        quantizer="vq",
        codebook_size=32,
        codebook_dim=4,
        fsq_levels=VQConfig.fsq_levels,  # unused by "vq"; the default keeps its fingerprint
    ),
    "tests: tiny with a learned codebook of 32 codes",
)


def vq_preset(name: str, **overrides: Any) -> VQConfig:
    """The tokenizer preset called ``name`` with ``overrides``; a typo gets a "did you mean"."""
    cfg = PRESETS.get(name)
    return replace(cfg, **overrides) if overrides else cfg
