"""The reference image tokenizer: Chameleon's VQGAN behind :class:`ImageTokenizer` (SPEC §2).

Chameleon ships its image tokenizer as two files, ``vqgan.yaml`` (hyper-parameters) and
``vqgan.ckpt`` (a torch pickle whose ``state_dict`` holds the weights). The network is the
taming-transformers ``VQModel``; this module re-implements it from its description so the
reference files load without that package:

- **Encoder** ``(ch, ch_mult, num_res_blocks, attn_resolutions, z_channels)``: ``conv_in``
  (3 -> ch); one level per entry of ``ch_mult`` with ``num_res_blocks`` ResnetBlocks (to
  ``ch·mult``) each followed by an AttnBlock when the level's resolution is in
  ``attn_resolutions``, and a Downsample (pad right/bottom by 1, 3×3 stride-2 conv) after
  every level but the last; ``mid`` = ResnetBlock, AttnBlock, ResnetBlock; GroupNorm(32),
  swish, ``conv_out`` (-> z_channels). With ``ch_mult = [1, 1, 2, 2, 4]`` that is a
  downsampling of 16: 256×256 -> 16×16.
- **Decoder**: ``conv_in`` (z_channels -> ch·ch_mult[-1]), ``mid``, then levels from the
  lowest resolution up with ``num_res_blocks + 1`` ResnetBlocks (+ AttnBlocks) and an
  Upsample (nearest ×2, 3×3 conv) after every level but the first; norm, swish, ``conv_out``.
  Levels are stored in ``up.<i>`` with ``i`` the level index (0 = full resolution).
- **ResnetBlock**: GroupNorm(32, eps 1e-6), swish, 3×3 conv, GroupNorm, swish, (dropout),
  3×3 conv; a 1×1 ``nin_shortcut`` when the channel count changes.
- **AttnBlock**: single-head self-attention over the pixels with 1×1 ``q``, ``k``, ``v``,
  ``proj_out`` convolutions and a residual connection.
- **Quantizer**: ``quantize.embedding`` (n_embed × embed_dim); nearest code by Euclidean
  distance. ``quant_conv`` (z_channels -> embed_dim) before it and ``post_quant_conv``
  (embed_dim -> z_channels) after it are 1×1 convolutions.

Reference files: 256×256 -> 16×16 codes of 8,192, pixels in ``[-1, 1]``. Loss-network
weights in the checkpoint (``loss.*``: the discriminator and LPIPS) are ignored; any other
key mismatch is a :class:`~worldvla.errors.DataError` listing the keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldvla.errors import DataError
from worldvla.tokenizers.image_base import (
    CHAMELEON_CONFIG_FILE,
    CHAMELEON_WEIGHTS_FILE,
    check_codes,
    images_to_tensor,
    state_fingerprint,
    tensor_to_images,
)

IGNORED_PREFIXES = ("loss.",)  # training-only networks stored in the reference checkpoint


@dataclass(frozen=True)
class ChameleonVQConfig:
    """The ``model.params`` of ``vqgan.yaml`` (defaults: the reference values)."""

    embed_dim: int = 256
    n_embed: int = 8192
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 256
    dropout: float = 0.0

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // 2 ** (len(self.ch_mult) - 1)
        return (side, side)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ChameleonVQConfig:
        """Read ``model.params`` (+ ``ddconfig``) of a taming-style ``vqgan.yaml``."""
        try:
            import yaml
        except ImportError as e:  # PyYAML comes with huggingface_hub; say so if it is absent
            raise DataError(
                f"{path}: reading the Chameleon VQGAN config needs PyYAML (pip install pyyaml)"
            ) from e
        try:
            doc = yaml.safe_load(Path(path).read_text())
            params = doc["model"]["params"]
            dd = params["ddconfig"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a VQGAN config (expected model.params.ddconfig): {e}") from e
        if dd.get("double_z"):
            raise DataError(f"{path}: double_z=true describes a KL autoencoder, not a VQGAN")
        try:
            return cls(
                embed_dim=int(params["embed_dim"]),
                n_embed=int(params["n_embed"]),
                resolution=int(dd.get("resolution", 256)),
                in_channels=int(dd.get("in_channels", 3)),
                out_ch=int(dd.get("out_ch", 3)),
                ch=int(dd["ch"]),
                ch_mult=tuple(int(m) for m in dd["ch_mult"]),
                num_res_blocks=int(dd["num_res_blocks"]),
                attn_resolutions=tuple(int(r) for r in dd.get("attn_resolutions") or ()),
                z_channels=int(dd["z_channels"]),
                dropout=float(dd.get("dropout", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: incomplete VQGAN config: {e!r}") from e

    def to_yaml_dict(self) -> dict[str, Any]:
        """The same layout as the reference ``vqgan.yaml`` (used to write test fixtures)."""
        return {
            "model": {
                "target": "taming.models.vqgan.VQModel",
                "params": {
                    "embed_dim": self.embed_dim,
                    "n_embed": self.n_embed,
                    "ddconfig": {
                        "double_z": False,
                        "z_channels": self.z_channels,
                        "resolution": self.resolution,
                        "in_channels": self.in_channels,
                        "out_ch": self.out_ch,
                        "ch": self.ch,
                        "ch_mult": list(self.ch_mult),
                        "num_res_blocks": self.num_res_blocks,
                        "attn_resolutions": list(self.attn_resolutions),
                        "dropout": self.dropout,
                    },
                },
            }
        }


# ---------------------------------------------------------------------------- network
def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(y), self.k(y), self.v(y)))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h*w, C), scale C^-1/2
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in the reference


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` and ``attn`` lists (+ ``downsample``/``upsample``)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, c: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c, dropout)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _run_level(level: _Level, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, cfg: ChameleonVQConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res = cfg.resolution
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        c = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            c = cfg.ch * in_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(c, cfg.ch * mult, cfg.dropout))
                c = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(c, cfg.dropout)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)  # (B, C, H/16, W/16)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: ChameleonVQConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(c, cfg.dropout)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(c, cfg.ch * cfg.ch_mult[i], cfg.dropout))
                c = cfg.ch * cfg.ch_mult[i]
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(c))
            if i != 0:
                level.upsample = Upsample(c)
                res *= 2
            levels.insert(0, level)  # stored by level index: up.0 is full resolution
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` -> nearest code ids ``(B, h, w)`` by Euclidean distance."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        e = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]  # (B*h*w, K)
        return dist.argmin(1).reshape(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embedding(codes).permute(0, 3, 1, 2)  # (B, D, h, w)


class ChameleonVQGAN(nn.Module):
    """The taming-transformers ``VQModel`` with the reference state-dict key names."""

    def __init__(self, cfg: ChameleonVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize.codes(self.quant_conv(self.encoder(x)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))


# ---------------------------------------------------------------------------- loading
def load_reference_state(path: str | Path, trust_pickle: bool = True) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Chameleon/taming checkpoint (or a bare state dict).

    Tried first with ``weights_only=True``; the reference checkpoint was written by
    PyTorch Lightning and may pickle other objects, so a full unpickle follows only when
    ``trust_pickle`` (the default, for the published file) — never for files of unknown origin.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: Chameleon VQGAN checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - torch raises several unpickling error types
        if not trust_pickle:
            raise DataError(f"{path}: the checkpoint holds non-tensor objects: {first}") from first
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable torch checkpoint: {e}") from e
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: expected a checkpoint with a 'state_dict' of tensors")
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}


class ChameleonTokenizer:
    """:class:`~worldvla.tokenizers.image_base.ImageTokenizer` over the Chameleon VQGAN files."""

    def __init__(self, model: ChameleonVQGAN, source: Path | None = None, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.source = source
        self.device = device
        self.image_size = self.cfg.resolution
        self.grid = self.cfg.grid
        self.codebook_size = self.cfg.n_embed
        self._fingerprint: str | None = None

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu") -> ChameleonTokenizer:
        """Load ``vqgan.yaml`` + ``vqgan.ckpt`` from directory ``path``."""
        path = Path(path)
        yaml_path, ckpt_path = path / CHAMELEON_CONFIG_FILE, path / CHAMELEON_WEIGHTS_FILE
        for p in (yaml_path, ckpt_path):
            if not p.exists():
                raise DataError(
                    f"{p}: missing (a Chameleon tokenizer needs {CHAMELEON_CONFIG_FILE} and "
                    f"{CHAMELEON_WEIGHTS_FILE})"
                )
        cfg = ChameleonVQConfig.from_yaml(yaml_path)
        model = ChameleonVQGAN(cfg)
        state = load_reference_state(ckpt_path)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise DataError(
                f"{ckpt_path}: weights do not match the architecture in {yaml_path.name}: "
                f"{len(missing)} missing (e.g. {missing[:4]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})"
            )
        wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong:
            k = wrong[0]
            raise DataError(
                f"{ckpt_path}: {len(wrong)} tensors have the wrong shape for {yaml_path.name}, e.g. {k}: "
                f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
            )
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(model, source=path, device=str(device))

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 256, 256, 3)`` -> ``(N, 16, 16)`` codes in ``[0, 8192)`` (reference sizes)."""
        x = images_to_tensor(images, self.image_size, self.device)
        return self.model.encode(x).cpu()

    @torch.no_grad()
    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        c = check_codes(codes, self.grid, self.codebook_size).to(self.device)
        return tensor_to_images(self.model.decode(c))

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(asdict(self.cfg), self.model.state_dict())
        return self._fingerprint

    def save(self, path: str | Path) -> None:
        """Write the reference file pair (yaml + ``{"state_dict": ...}``), loadable by this module."""
        import yaml

        from worldvla.utils.io import atomic_path, atomic_write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (
            self.source is not None
            and (self.source / CHAMELEON_WEIGHTS_FILE).resolve() == (path / CHAMELEON_WEIGHTS_FILE).resolve()
        ):
            return  # saving onto the files it was loaded from
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        with atomic_path(path / CHAMELEON_WEIGHTS_FILE, suffix=".ckpt") as tmp:
            torch.save({"state_dict": state}, tmp)
        atomic_write_text(
            path / CHAMELEON_CONFIG_FILE, yaml.safe_dump(self.cfg.to_yaml_dict(), sort_keys=False)
        )
