"""Model construction: a model preset sized to a vocabulary, and the module it describes.

The one place that turns a preset name into a :class:`~worldvla.model.transformer.Transformer`,
for the trainer and for anything that builds a model without training (the random serving
checkpoint, benchmarks).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from worldvla.model.config import ModelConfig, model_preset
from worldvla.model.transformer import Transformer


def build_model_config(preset: str, vocab_size: int, dropout: float | None = None) -> ModelConfig:
    """The model preset ``preset`` with ``vocab_size`` ids (and ``dropout`` if given)."""
    model_cfg = model_preset(preset).with_vocab(vocab_size)
    if dropout is not None:
        model_cfg = replace(model_cfg, dropout=dropout)
    return model_cfg


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """A freshly initialized model (on the default device, in fp32)."""
    return Transformer(model_cfg)
