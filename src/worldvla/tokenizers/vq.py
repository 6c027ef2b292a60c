"""Our VQ image tokenizer: a small convolutional autoencoder with a discrete bottleneck (SPEC §2).

The reference tokenizer (Chameleon's VQGAN, :mod:`worldvla.tokenizers.chameleon`) has ~70M
parameters and turns 256×256 frames into 16×16 codes. The embedded benchmark stores 64×64
frames, so the project trains its own tokenizer on CPU in minutes: 64×64 -> 8×8 = 64 codes
(downsampling 8), i.e. a frame costs 76 tokens in the stream instead of 276.

Architecture (read top to bottom)::

    encoder: conv3x3(3 -> stem) ; per stage i: [conv3x3 stride 2 (c_{i-1} -> c_i), ResBlock × blocks_i]
             ; GroupNorm, SiLU, conv1x1 (c_last -> latent_dim)
    quantizer: VectorQuantize (EMA codebook, k-means init, dead-code replacement) or FSQ
    decoder: conv3x3(latent_dim -> c_last), ResBlock × mid_blocks ; per stage (reversed):
             [nearest ×2, conv3x3 (c_i -> c_{i-1}), ResBlock × blocks_{i-1}]
             ; GroupNorm, SiLU, conv3x3 (stem -> 3)

Residual blocks sit only at the downsampled resolutions (by default none at 1/2 and none at
full resolution, where single convolutions do the work), which is what keeps a CPU
training step cheap: the cost of a block grows with the pixels it sees. ResBlock =
``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` with a 1×1 projection when channels change.

Normalisation (``norm``): ``"group"`` (GroupNorm, statistics over the whole frame) or
``"channel"`` (a LayerNorm over the channels of each position). GroupNorm couples every
code to every pixel: when the arm moves, the statistics of the whole feature map shift and
FSQ codes flip on patches whose pixels did not change (48% of the codes of consecutive
frames differ with ``mw64``), which a world model then has to predict as noise the action
does not explain. ``"channel"`` with no blocks at the coarsest resolution (``mw64-local``)
bounds what a code sees to a window around its patch; ``code_stability`` in the tokenizer's
metrics measures the effect (docs/image_tokenizer.md).

Quantizers come from ``vector-quantize-pytorch`` (one file per idea):

- ``"vq"``: ``VectorQuantize`` with EMA codebook updates (decay ``ema_decay``), k-means
  initialisation on the first batch and replacement of codes whose EMA cluster size falls
  below ``dead_code_threshold`` by random encoder outputs; the codebook lives in a
  low-dimensional space (``codebook_dim``), which raises usage. Loss: commitment.
- ``"fsq"``: finite scalar quantization with ``fsq_levels`` (codebook = product of the
  levels): no codebook to collapse, no auxiliary loss.

The comparison (held-out PSNR, codebook usage) and the choice of default are in
``docs/image_tokenizer.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from worldvla.errors import ConfigError, DataError
from worldvla.tokenizers.image_base import (
    VQ_CONFIG_FILE,
    VQ_FORMAT,
    VQ_WEIGHTS_FILE,
    check_codes,
    images_to_tensor,
    state_fingerprint,
    tensor_to_images,
)
from worldvla.tokenizers.vq_config import (  # noqa: F401 - re-exported: the names this module always offered
    PRESETS,
    VQConfig,
    vq_preset,
)
from worldvla.utils.io import atomic_path, atomic_write_text

FORMAT_VERSION = 1


# ---------------------------------------------------------------------------- network
class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each position of ``(N, C, H, W)``: no spatial statistics."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    return ChannelNorm(channels) if kind == "channel" else nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int, norm: str = "group") -> None:
        super().__init__()
        self.norm1 = make_norm(norm, c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = make_norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, cfg.stem_channels, 3, padding=1)
        layers: list[nn.Module] = []
        c = cfg.stem_channels
        for c_out, n in zip(cfg.channels, cfg.blocks):
            layers.append(nn.Conv2d(c, c_out, 3, stride=2, padding=1))  # halves H and W
            layers += [ResBlock(c_out, c_out, cfg.groups, cfg.norm) for _ in range(n)]
            c = c_out
        self.stages = nn.Sequential(*layers)
        self.norm = make_norm(cfg.norm, c, cfg.groups)
        self.out = nn.Conv2d(c, cfg.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (N, c_last, h, w)
        return self.out(F.silu(self.norm(h)))  # (N, latent_dim, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        c = cfg.channels[-1]
        self.inp = nn.Conv2d(cfg.latent_dim, c, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(c, c, cfg.groups, cfg.norm) for _ in range(cfg.mid_blocks)]
        # Mirror of the encoder: after upsampling to stage i's resolution, stage i's blocks.
        targets = (*cfg.channels[::-1][1:], cfg.stem_channels)  # channels after each upsampling
        n_blocks = (*cfg.blocks[::-1][1:], 0)
        for c_out, n in zip(targets, n_blocks):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1)]
            layers += [ResBlock(c_out, c_out, cfg.groups, cfg.norm) for _ in range(n)]
            c = c_out
        self.stages = nn.Sequential(*layers)
        self.norm = make_norm(cfg.norm, c, cfg.groups)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.inp(z))  # (N, stem, H, W)
        return self.out(F.silu(self.norm(h)))  # (N, 3, H, W)


class VQModel(nn.Module):
    """Encoder -> quantizer -> decoder. ``forward`` returns (reconstruction, codes, aux loss)."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ, VectorQuantize

        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.quantizer == "vq":
            self.quantizer: nn.Module = VectorQuantize(
                dim=cfg.latent_dim,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim,
                decay=cfg.ema_decay,
                kmeans_init=True,
                kmeans_iters=10,
                threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
            )
        else:
            self.quantizer = FSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z (N, d, h, w)`` -> quantized ``(N, d, h, w)``, codes ``(N, h, w)``, aux loss (scalar)."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(n, h * w, d)  # (N, h*w, d)
        if self.cfg.quantizer == "vq":
            q, idx, aux = self.quantizer(flat)
        else:
            q, idx = self.quantizer(flat)
            aux = z.new_zeros(())
        q = q.reshape(n, h, w, d).permute(0, 3, 1, 2)  # (N, d, h, w)
        return q, idx.reshape(n, h, w).long(), aux.sum()

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """``(N, h, w)`` codes -> ``(N, d, h, w)`` quantized latents (the decoder's input)."""
        n, h, w = codes.shape
        flat = codes.reshape(n, h * w)  # (N, h*w)
        if self.cfg.quantizer == "vq":
            q = self.quantizer.get_output_from_indices(flat)
        else:
            q = self.quantizer.indices_to_codes(flat)
        return q.reshape(n, h, w, -1).permute(0, 3, 1, 2)  # (N, d, h, w)

    @property
    def codebook_ready(self) -> bool:
        """False for a ``"vq"`` codebook still waiting for its k-means init (all zeros until then)."""
        return self.cfg.quantizer != "vq" or bool(self.quantizer._codebook.initted)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, codes, aux = self.quantize(self.encoder(x))
        return self.decoder(q), codes, aux


# ---------------------------------------------------------------------------- tokenizer
@dataclass
class VQTokenizer:
    """:class:`~worldvla.tokenizers.image_base.ImageTokenizer` over a :class:`VQModel`."""

    cfg: VQConfig
    model: VQModel = field(default=None)  # type: ignore[assignment]
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = VQModel(self.cfg)
        self.model.to(self.device)
        self._fingerprint: str | None = None

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def codebook_size(self) -> int:
        return self.cfg.vocab_size

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, S, S, 3)`` -> int64 ``(N, h, w)`` codes (eval mode: the codebook is not updated)."""
        x = images_to_tensor(images, self.image_size, self.device)
        if not self.model.codebook_ready:
            # The library would run k-means on these images even in eval mode, silently
            # changing the weights (and the fingerprint) of the tokenizer.
            raise ConfigError(
                "the VQ codebook is not initialised (k-means runs on the first training batch); "
                "train the tokenizer or call init_codebook(images) first"
            )
        was = self.model.training
        self.model.eval()
        try:
            _, codes, _ = self.model.quantize(self.model.encoder(x))
        finally:
            self.model.train(was)
        return codes.cpu()

    @torch.no_grad()
    def init_codebook(self, images: np.ndarray | torch.Tensor) -> None:
        """k-means-initialise a fresh ``"vq"`` codebook from ``images`` (as the first training step does)."""
        x = images_to_tensor(images, self.image_size, self.device)
        was = self.model.training
        self.model.train()
        try:
            self.model.quantize(self.model.encoder(x))
        finally:
            self.model.train(was)
        self._fingerprint = None

    @torch.no_grad()
    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(N, h, w)`` codes -> uint8 ``(N, S, S, 3)``."""
        c = check_codes(codes, self.grid, self.codebook_size).to(self.device)
        was = self.model.training
        self.model.eval()
        try:
            x = self.model.decoder(self.model.codes_to_latent(c))
        finally:
            self.model.train(was)
        return tensor_to_images(x)

    def fingerprint(self) -> str:
        """Hash of config + weights; recomputed while training (``model.training``), cached otherwise."""
        if self._fingerprint is None or self.model.training:
            fp = state_fingerprint(self.cfg.to_dict(), self.model.state_dict())
            if self.model.training:
                return fp
            self._fingerprint = fp
        return self._fingerprint

    def save(self, path: str | Path) -> None:
        """Write ``model.safetensors`` then ``config.json`` (each atomically) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(path / VQ_WEIGHTS_FILE, suffix=".safetensors") as tmp:
            save_file(state, str(tmp))
        meta = {
            "format": VQ_FORMAT,
            "version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            "fingerprint": state_fingerprint(self.cfg.to_dict(), state),
        }
        atomic_write_text(path / VQ_CONFIG_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> VQTokenizer:
        path = Path(path)
        try:
            meta = json.loads((path / VQ_CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path / VQ_CONFIG_FILE}: unreadable tokenizer config: {e}") from e
        if meta.get("format") != VQ_FORMAT:
            raise DataError(
                f"{path / VQ_CONFIG_FILE}: not a {VQ_FORMAT} tokenizer (format {meta.get('format')!r})"
            )
        if meta.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{path / VQ_CONFIG_FILE}: tokenizer format version {meta.get('version')}, "
                f"this code reads {FORMAT_VERSION}"
            )
        cfg = VQConfig.from_dict(meta["config"])
        weights = path / VQ_WEIGHTS_FILE
        if not weights.exists():
            raise DataError(f"{weights}: tokenizer weights missing")
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types
            raise DataError(f"{weights}: unreadable safetensors file: {e}") from e
        model = VQModel(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(
                f"{weights}: weights do not match the config in {VQ_CONFIG_FILE} "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        tok = cls(cfg, model.eval(), device=str(device))
        if meta.get("fingerprint") and tok.fingerprint() != meta["fingerprint"]:
            raise DataError(
                f"{path}: weights have fingerprint {tok.fingerprint()}, {VQ_CONFIG_FILE} records "
                f"{meta['fingerprint']} (files from two different saves?)"
            )
        return tok
