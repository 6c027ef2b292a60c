"""What every image tokenizer shares: the interface, pixel and code conversions, file names.

Image tokenizers map frames <-> grids of discrete codes (SPEC §2). This module sits below
the implementations, which import it; :mod:`worldvla.tokenizers.image_loader` sits above
them and loads a saved tokenizer of either kind.

Every image tokenizer in the project — our small VQ model trained on CPU
(:mod:`worldvla.tokenizers.vq`) and the reference Chameleon VQGAN
(:mod:`worldvla.tokenizers.chameleon`) — implements :class:`ImageTokenizer`:

- ``encode(images)``: uint8 ``(N, H, W, 3)`` with ``H == W == image_size`` (numpy array or
  tensor) -> int64 tensor ``(N, h, w)`` of codes in ``[0, codebook_size)``, ``(h, w) == grid``;
- ``decode(codes)``: ``(N, h, w)`` codes -> uint8 numpy ``(N, H, W, 3)``;
- ``fingerprint()``: a hash of the configuration *and* the weights. A token cache and a model
  checkpoint record it, so codes are never paired with a tokenizer that did not make them;
- ``save(dir)``: write the tokenizer so that
  :func:`worldvla.tokenizers.image_loader.load_image_tokenizer` reads it back.

Pixels enter the networks scaled to ``[-1, 1]`` (``x / 127.5 - 1``, SPEC §2) and leave
through the inverse with rounding and clipping. A wrong size, dtype or channel count is a
:class:`~worldvla.errors.DataError`, not a silent resize: resizing belongs to the data
pipeline (ingest), where it is done once and recorded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from worldvla.errors import DataError

VQ_CONFIG_FILE = "config.json"  # our format: config.json {"format": VQ_FORMAT, ...} + model.safetensors
VQ_WEIGHTS_FILE = "model.safetensors"
VQ_FORMAT = "worldvla-vq"
CHAMELEON_CONFIG_FILE = "vqgan.yaml"  # the reference files as shipped with Chameleon
CHAMELEON_WEIGHTS_FILE = "vqgan.ckpt"


@runtime_checkable
class ImageTokenizer(Protocol):
    """What the rest of the project needs from an image tokenizer (see the module docstring)."""

    image_size: int
    grid: tuple[int, int]
    codebook_size: int

    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor: ...

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray: ...

    def fingerprint(self) -> str: ...

    def save(self, path: str | Path) -> None: ...


# ---------------------------------------------------------------------------- pixels
def images_to_tensor(images: Any, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Validate uint8 ``(N, S, S, 3)`` frames and return float ``(N, 3, S, S)`` in ``[-1, 1]``."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise DataError(f"images must be uint8 (N, {image_size}, {image_size}, 3), got {images.dtype}")
        x = images.to(device)
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, {image_size}, {image_size}, 3), got {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    if x.ndim != 4 or tuple(x.shape[1:]) != (image_size, image_size, 3):
        raise DataError(
            f"images must be uint8 (N, {image_size}, {image_size}, 3) for this tokenizer, "
            f"got shape {tuple(x.shape)}"
        )
    x = x.permute(0, 3, 1, 2).float()  # (N, 3, S, S)
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """Float ``(N, 3, S, S)`` in ``[-1, 1]`` -> uint8 numpy ``(N, S, S, 3)`` (rounded, clipped)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, S, S, 3)


def check_codes(codes: Any, grid: tuple[int, int], codebook_size: int) -> torch.Tensor:
    """Validate an ``(N, h, w)`` code grid and return it as an int64 tensor."""
    c = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    if c.dtype.is_floating_point or c.dtype == torch.bool:
        raise DataError(f"codes must be integers, got {c.dtype}")
    if c.ndim != 3 or tuple(c.shape[1:]) != tuple(grid):
        raise DataError(f"codes must have shape (N, {grid[0]}, {grid[1]}), got {tuple(c.shape)}")
    c = c.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
        raise DataError(f"codes must lie in [0, {codebook_size}), got [{int(c.min())}, {int(c.max())}]")
    return c


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR in dB between uint8 image batches (identical images count as 100 dB)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).reshape(len(a), -1).mean(1)
    vals = np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)
    return float(vals.mean())


def state_fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """sha256 of a canonical JSON of ``config`` and of every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
