"""Decoder-only transformer in the Chameleon / Llama style, single-device.

Pre-norm blocks: ``x + Dropout(Attn(RMSNorm(x)))`` then ``x + Dropout(SwiGLU(RMSNorm(x)))``;
rotary position embeddings on queries and keys (positions are passed in, so left-padded
batches decode correctly); optional per-head QK-norm as in Chameleon-7B (a LayerNorm over
the head dimension with per-head weights, which stabilizes mixed-modal training);
optional grouped-query attention. Attention goes through PyTorch's
``scaled_dot_product_attention`` with the boolean WorldVLA mask (True = may attend).

The model knows nothing of devices, precision policies, DDP or FSDP (STYLE §1): the
training code applies those from outside (``worldvla.train.distributed``). It exposes
``blocks`` (one module per decoder layer, the unit of FSDP sharding and activation
checkpointing), ``hidden_states`` + ``output_logits`` (so training computes the large
vocabulary projection only at target positions) and a :class:`KVCache` for decoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from worldvla.config import ModelConfig


class KVCache:
    """Pre-allocated keys/values of every layer for ``batch`` rows of up to ``max_len`` tokens.

    All rows share one length (batched prompts are left-padded to a common length).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``(B, Hkv, Lnew, Dh)`` keys/values; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. finished environments drop out)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape ``(B, 1, L, head_dim/2)`` for integer ``positions`` ``(B, L)``."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of ``(B, H, L, head_dim)`` (Llama's half-split layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class HeadNorm(nn.Module):
    """LayerNorm over the head dimension with per-head affine weights (Chameleon's QK-norm)."""

    def __init__(self, n_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_heads, 1, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, 1, head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, L, Dh)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = HeadNorm(cfg.n_heads, cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = HeadNorm(cfg.kv_heads, cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        b, length, _ = x.shape
        q = self.wq(x).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        k = self.wk(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, Dh)
        v = self.wv(x).view(b, length, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, L, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, Dh) with S = cached + L
        if self.kv_heads != self.n_heads:
            rep = self.n_heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        attn_mask = mask[:, None] if mask is not None else None  # (B, 1, L, S)
        is_causal = mask is None and cache is None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal
        )  # (B, H, L, Dh)
        return self.wo(out.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: ``W2(SiLU(W1 x) * W3 x)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_checkpointing = False  # switched on by the training code

    def _forward(self, x, cos, sin, mask, cache):  # noqa: ANN001, ANN202
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache, self.layer))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        if self.activation_checkpointing and self.training and cache is None:
            return checkpoint(self._forward, x, cos, sin, mask, None, use_reentrant=False)
        return self._forward(x, cos, sin, mask, cache)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, init_std), residual projections scaled by 1/sqrt(2·layers)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            scale = (
                1.0 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
            )
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        for block in self.blocks:
            block.activation_checkpointing = enabled

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``(B, L, d_model)``.

        ``attn_mask`` is ``(B, L, S)`` bool (True = may attend) over all ``S`` keys (cached +
        new); None means plain causal without a cache. ``positions`` defaults to
        ``cache.length + arange(L)``.
        """
        b, length = input_ids.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + length, device=input_ids.device).expand(b, length)
        if cache is not None and attn_mask is None:
            raise ValueError("decoding with a KV cache needs an explicit attention mask")
        cos, sin = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.tok_emb(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, cache)
        if cache is not None:
            cache.advance(length)
        return self.norm(x)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)``."""
        return self.output_logits(self.hidden_states(input_ids, attn_mask, positions, cache))

    # ------------------------------------------------------------------ accounting
    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.tok_emb.weight.numel()

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        """Model FLOPs per token: 2·N (matmuls) + attention scores, ×3 for training (fwd + bwd)."""
        cfg = self.cfg
        n = self.num_params(embeddings=False)
        attn = (
            2 * cfg.n_layers * seq_len * cfg.d_model
        )  # QK^T and AV, averaged over a causal row ≈ L/2 · 2 · 2
        fwd = 2 * n + attn
        return 3 * fwd if training else fwd
