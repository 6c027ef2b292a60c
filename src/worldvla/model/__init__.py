"""The model core: its configuration and sizes, the attention mask (SPEC §3), the transformer
and cached decoding.

The names below load their module on first use (PEP 562), so that configuration code which
only reads :class:`~worldvla.model.config.ModelConfig` — the training presets, ``worldvla
presets`` — does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "DecodeState": "generation",
    "Sampling": "generation",
    "decode": "generation",
    "generate_actions": "generation",
    "generate_frame": "generation",
    "attention_mask": "masks",
    "KVCache": "transformer",
    "Transformer": "transformer",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
