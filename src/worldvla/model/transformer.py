"""Decoder-only transformer in the Chameleon / Llama style, single-device.

Pre-norm blocks: ``x + Dropout(Attn(RMSNorm(x)))`` then ``x + Dropout(SwiGLU(RMSNorm(x)))``;
rotary position embeddings on queries and keys (positions are passed in, so left-padded
batches decode exactly like unpadded rows); optional per-head QK-norm as in Chameleon-7B
(a LayerNorm over the head dimension with per-head weights, which stabilizes mixed-modal
training); optional grouped-query attention; optionally Chameleon's ``swin_norm`` block
(``x + Norm(Attn(x))``) and projection biases. With these options a Hugging Face Chameleon
checkpoint maps onto this model tensor for tensor (:mod:`worldvla.convert.chameleon`,
docs/chameleon.md). The query/key/value projections are one
matmul and so are the SwiGLU gate and up projections: on CPU the fused matmuls of the
``small`` preset train about 1.4× faster than separate ones (fewer passes over the input
in the backward pass, wider GEMMs).

Attention goes through PyTorch's ``scaled_dot_product_attention`` with the boolean
WorldVLA mask (True = may attend, :mod:`worldvla.model.masks`), or, switched on from
outside (:meth:`Transformer.set_attention_kernel`), through :func:`math_attention`: the
same function as explicit matmuls and an fp32 masked softmax. Eager, the two are about as
fast; under ``torch.compile`` the explicit form is what inductor can fuse (mask, softmax
and casts in one pass), and a compiled bf16 training step of the ``compact`` model at the
MT50 recipe's shape ran about 1.1× faster with it than with the compiled SDPA kernel
(``benchmarks/bench_vs_transformers.py``). FlexAttention was considered and rejected: in
the pinned PyTorch it has no backward pass on CPU.

The model knows nothing of devices, precision policies, DDP or FSDP (STYLE §1): the
training code applies those from outside (``worldvla.train.distributed``). It exposes
``blocks`` (one module per decoder layer, the unit of FSDP sharding and activation
checkpointing), :meth:`Transformer.hidden_states` + :meth:`Transformer.output_logits` (so
training computes the large vocabulary projection only at target positions) and a
:class:`KVCache` for decoding (:mod:`worldvla.model.generation`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from worldvla.model.config import ModelConfig


class KVCache:
    """Keys/values of every layer for ``batch`` rows; grows on demand.

    All rows share one length (batched prompts are left-padded to a common length). The
    storage is pre-allocated for ``max_len`` tokens and doubled when a step needs more, so
    a rollout can keep appending to the cache of an earlier decode.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch, cfg.kv_heads, max(max_len, 1), cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.length = 0  # tokens stored (the same for every layer once a forward pass is done)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def _grow(self, needed: int) -> None:
        new = max(needed, 2 * self.capacity)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                grown = old.new_zeros(*old.shape[:2], new, old.shape[3])  # (B, Hkv, new, Dh)
                grown[:, :, : self.length] = old[:, :, : self.length]
                store[i] = grown

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``layer``'s new ``(B, Hkv, Lnew, Dh)`` keys/values; return all so far ``(B, Hkv, S, Dh)``."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            self._grow(end)
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has stored its ``n`` new tokens."""
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every token from ``length`` on (their storage is overwritten by later updates)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. finished environments drop out)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, signed_sin)``, each ``(B, 1, L, head_dim)`` fp32, for integer ``positions`` ``(B, L)``.

    Llama's half-split layout rotates the pairs ``(x[i], x[i + d/2])`` by the same angle, so
    the angles are repeated over both halves (transformers' ``rotate_half`` convention, the
    one of Hugging Face Chameleon checkpoints, whose conversion permuted the rows of Meta's
    interleaved-pair q/k weights into it); the sine carries the rotation's sign
    (``-sin`` on the first half) so that :func:`apply_rope` needs only one concatenation.
    """
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    sin = angles.sin()
    cos = torch.cat([angles.cos()] * 2, dim=-1)  # (B, L, head_dim)
    signed_sin = torch.cat([-sin, sin], dim=-1)  # (B, L, head_dim)
    return cos[:, None], signed_sin[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``(B, H, L, d)``, computed in fp32: ``(x1, x2) -> (x1·c - x2·s, x2·c + x1·s)``."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([x2, x1], dim=-1) * signed_sin).type_as(x)


ATTENTION_KERNELS = ("sdpa", "math")


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``softmax(q·kᵀ/√d, masked) · v`` as explicit matmuls, the softmax in fp32.

    ``q`` ``(B, H, L, Dh)``, ``k``/``v`` ``(B, Hkv, S, Dh)`` (grouped heads are repeated),
    ``mask`` ``(B, 1, L, S)`` bool (True = may attend) or None for causal over the last
    ``L`` of ``S`` keys. The scores and the probabilities are cast back to the input dtype
    before their matmuls, as SDPA's math path does; every row must see at least one key.
    """
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, S, Dh)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    length, keys = q.shape[2], k.shape[2]
    if mask is None:
        mask = torch.ones(length, keys, dtype=torch.bool, device=q.device).tril(keys - length)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, L, S)
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v  # (B, H, L, Dh)


class HeadNorm(nn.Module):
    """LayerNorm over the head dimension with per-head affine weights (Chameleon's QK-norm).

    Statistics over each head's ``head_dim`` values, then head ``h``'s own scale and shift:
    the parameters are ``(n_heads, head_dim)``, the shape of transformers'
    ``ChameleonLayerNorm`` weights.
    """

    def __init__(self, n_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, L, Dh)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight[:, None] + self.bias[:, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # Checkpoints written before the parameters took Chameleon's shape stored (H, 1, Dh).
        for name in ("weight", "bias"):
            t = state_dict.get(prefix + name)
            if t is not None and t.dim() == 3 and t.shape[1] == 1:
                state_dict[prefix + name] = t[:, 0]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=bias)
        eps = cfg.norm_eps if cfg.qk_norm_eps is None else cfg.qk_norm_eps
        self.q_norm = HeadNorm(cfg.n_heads, cfg.head_dim, eps) if cfg.qk_norm else None
        self.k_norm = HeadNorm(cfg.kv_heads, cfg.head_dim, eps) if cfg.qk_norm else None
        self.kernel = "sdpa"  # or "math" (math_attention); set by Transformer.set_attention_kernel

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
        qkv = self.wqkv(x).view(b, length, self.n_heads + 2 * self.kv_heads, self.head_dim)
        qkv = qkv.transpose(1, 2)  # (B, H + 2·Hkv, L, Dh)
        q, k, v = qkv.split([self.n_heads, self.kv_heads, self.kv_heads], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H, L, Dh), (B, Hkv, L, Dh)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, Dh) with S = cached + L
        mask = mask[:, None] if mask is not None else None  # (B, 1, L, S), broadcast over heads
        if self.kernel == "math":
            out = math_attention(q, k, v, mask)  # (B, H, L, Dh)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.kv_heads != self.n_heads
            )  # (B, H, L, Dh)
        return self.wo(out.transpose(1, 2).reshape(b, length, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU: ``W2(SiLU(W1 x) * W3 x)``, with ``W1`` and ``W3`` stored as one matrix ``w13``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)  # (B, L, ffn_hidden) each
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        # Residual dropout (reference recipe 0.05, SPEC §5); Identity when off saves a call per step.
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.swin_norm = cfg.swin_norm
        self.activation_checkpointing = False  # switched on by the training code

    def _forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        if self.swin_norm:  # Chameleon's swin_norm: the norms act on the sub-layer outputs
            x = x + self.dropout(self.attn_norm(self.attn(x, cos, sin, mask, cache, self.layer)))
            return x + self.dropout(self.ffn_norm(self.ffn(x)))
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
            if name.endswith(".bias") and name.rsplit(".", 2)[-2] in ("wqkv", "wo", "w13", "w2"):
                nn.init.zeros_(p)
            if p.dim() < 2:
                continue
            residual = name.endswith(("wo.weight", "w2.weight"))
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layers) if residual else std)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass (trades compute for memory)."""
        for block in self.blocks:
            block.activation_checkpointing = enabled

    def set_attention_kernel(self, kernel: str) -> None:
        """``"sdpa"`` (PyTorch's fused kernel) or ``"math"`` (:func:`math_attention`, for torch.compile)."""
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r} (use one of {ATTENTION_KERNELS})")
        for block in self.blocks:
            block.attn.kernel = kernel

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` on the model's device, in its parameters' dtype."""
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len, device=p.device, dtype=p.dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``(B, L, d_model)``.

        Args:
            input_ids: ``(B, L)`` new tokens.
            attn_mask: ``(B, L, S)`` bool (True = may attend) over all ``S`` keys (cached +
                new). None means plain causal and is allowed only without a cache.
            positions: ``(B, L)`` RoPE positions; default ``cache.length + arange(L)``.
            cache: keys/values of earlier tokens; the new ones are appended to it.
        """
        b, length = input_ids.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + length, device=input_ids.device).expand(b, length)
        if cache is not None and attn_mask is None:
            raise ValueError("decoding with a KV cache needs an explicit attention mask")
        cos, sin = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta)  # (B, 1, L, Dh) each
        x = self.tok_emb(input_ids)  # (B, L, d_model)
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask, cache)
        if cache is not None:
            cache.advance(length)
        return self.norm(x)

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states of any leading shape ``(..., d_model) -> (..., V)``."""
        return self.output(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, L, vocab_size)``; arguments as in :meth:`hidden_states`."""
        return self.output_logits(self.hidden_states(input_ids, attn_mask, positions, cache))

    # ------------------------------------------------------------------ accounting
    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count; ``embeddings=False`` leaves out the input embedding table (a lookup)."""
        n = sum(p.numel() for p in self.parameters())
        if embeddings:
            return n
        tied = self.cfg.tie_embeddings  # a tied table is also the output head: keep it
        return n if tied else n - self.tok_emb.weight.numel()

    def flops_per_token(self, seq_len: int, training: bool = True, target_fraction: float = 1.0) -> float:
        """Model FLOPs per token, the numerator of MFU (PaLM appendix B convention).

        ``2·N`` for the matmul weights (``N``: the linear layers of the blocks, plus the output
        head counted for the ``target_fraction`` of positions where logits are computed) plus
        the attention scores and weighted sums, ``4·d_model`` per visible key and layer,
        i.e. ``2·d_model·seq_len`` per layer on average under a causal mask. Training
        counts forward + backward, 3× the forward.
        """
        cfg = self.cfg
        head = cfg.d_model * cfg.vocab_size
        n = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        fwd = 2 * (n + target_fraction * head) + 2 * cfg.n_layers * seq_len * cfg.d_model
        return 3 * fwd if training else fwd
