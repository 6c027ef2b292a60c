"""Model construction: a model preset sized to a vocabulary, and the module it describes.

The one place that turns a preset name into a :class:`~worldvla.model.transformer.Transformer`,
for the trainer and for anything that builds a model without training (the random serving
checkpoint, benchmarks).
"""

from __future__ import annotations

from dataclasses import replace

import torch
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


@torch.no_grad()
def init_ordinal_embeddings(model: Transformer, start: int, count: int, noise: float = 0.25) -> None:
    """Give the ``count`` input embeddings from id ``start`` (ordered bins) an ordinal start.

    Bin ``b`` becomes ``e_mid + (2b/(count-1) - 1)·e_dir + noise·ε_b`` with ``e_mid``, ``e_dir``
    and ``ε_b`` drawn like the rest of the table (N(0, init_std), from torch's generator): the
    middle bin sits at ``e_mid``, the two ends at ``e_mid ± e_dir``, and neighbouring bins start
    close together, so a value is a direction in embedding space from the first step. Only the
    input table is touched; with tied embeddings the output head shares it.
    """
    if count < 2 or start < 0 or start + count > model.cfg.vocab_size:
        raise ValueError(
            f"ordinal embeddings: ids {start}..{start + count - 1} outside a vocabulary "
            f"of {model.cfg.vocab_size}"
        )
    weight = model.tok_emb.weight
    std = model.cfg.init_std
    d = weight.shape[1]
    mid, direction = (torch.randn(2, d, dtype=torch.float32) * std).unbind(0)
    t = torch.linspace(-1.0, 1.0, count, dtype=torch.float32)[:, None]
    table = mid + t * direction + noise * std * torch.randn(count, d, dtype=torch.float32)
    weight[start : start + count] = table.to(device=weight.device, dtype=weight.dtype)
