"""Loading a saved image tokenizer of either kind: the one place that knows both formats.

Every image tokenizer in the project — our small VQ model trained on CPU
(:mod:`worldvla.tokenizers.vq`) and the reference Chameleon VQGAN
(:mod:`worldvla.tokenizers.chameleon`) — implements
:class:`~worldvla.tokenizers.image_base.ImageTokenizer`. The interface and what both share
sit below the implementations (:mod:`worldvla.tokenizers.image_base`); this loader sits
above them, detects the format of a saved tokenizer and builds it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from worldvla.errors import DataError
from worldvla.tokenizers.image_base import (
    CHAMELEON_CONFIG_FILE,
    CHAMELEON_WEIGHTS_FILE,
    VQ_CONFIG_FILE,
    VQ_WEIGHTS_FILE,
    ImageTokenizer,
)


def load_image_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> ImageTokenizer:
    """Load the tokenizer saved at ``path``, detecting the format.

    - a directory with ``config.json`` (format ``worldvla-vq``) + ``model.safetensors``: our VQ;
    - a directory with ``vqgan.yaml`` + ``vqgan.ckpt``, or the path of either file: Chameleon.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: image tokenizer not found")
    if p.is_file():
        if p.name == VQ_CONFIG_FILE or p.suffix in (".yaml", ".ckpt"):
            p = p.parent
        else:
            raise DataError(f"{p}: not an image tokenizer (expected a directory)")
    if (p / VQ_CONFIG_FILE).exists():
        from worldvla.tokenizers.vq import VQTokenizer

        return VQTokenizer.load(p, device=device)
    if (p / CHAMELEON_CONFIG_FILE).exists() or (p / CHAMELEON_WEIGHTS_FILE).exists():
        from worldvla.tokenizers.chameleon import ChameleonTokenizer

        return ChameleonTokenizer.from_dir(p, device=device)
    raise DataError(
        f"{p}: not an image tokenizer: expected {VQ_CONFIG_FILE} + {VQ_WEIGHTS_FILE} (ours) or "
        f"{CHAMELEON_CONFIG_FILE} + {CHAMELEON_WEIGHTS_FILE} (Chameleon VQGAN)"
    )
