"""The model core: the attention mask (SPEC §3), the transformer and cached decoding."""

from worldvla.model.generation import DecodeState, Sampling, decode, generate_actions, generate_frame
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import KVCache, Transformer

__all__ = [
    "DecodeState",
    "KVCache",
    "Sampling",
    "Transformer",
    "attention_mask",
    "decode",
    "generate_actions",
    "generate_frame",
]
