"""WorldVLA: an autoregressive action world model.

One decoder-only transformer over text, image codes and action bins that is both a
vision-language-action policy and a world model (Cen et al., 2025, arXiv 2506.21539).
"""

from worldvla.vocab import Vocab, VocabConfig

__version__ = "0.1.0"


def attention_mask(input_ids, vocab, chunk_mask: bool = True):  # noqa: ANN001, ANN201
    """WorldVLA attention mask, (B, L, L) bool, True = may attend. See :mod:`worldvla.model.masks`."""
    from worldvla.model.masks import attention_mask as _attention_mask

    return _attention_mask(input_ids, vocab, chunk_mask=chunk_mask)


__all__ = ["Vocab", "VocabConfig", "attention_mask", "__version__"]
