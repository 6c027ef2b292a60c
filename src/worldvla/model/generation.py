"""Cached, constrained, batched decoding (SPEC §3, §6).

Decoding is driven by a *plan*: one slot per token to produce, each slot either a forced
id (structure the layout already fixes: BOA/EOA around every action, BOI, grid sizes, row
separators and EOI of a frame) or an allowed id range to sample from (action bins, image
codes). Forced tokens are never sampled; they are fed to the model together with the next
sampled token's predecessor, so a K-action chunk of D dims costs K·D forward steps after
the prefill and an h×w frame costs h·w steps.

Every step computes only the new rows of the WorldVLA mask
(:func:`worldvla.model.masks.attention_mask` with ``query_start``) against the cached
keys, so a token of action block k never sees cached keys of earlier chunk blocks — the
same mask as training, never a full L×L rebuild per step (the reference's weak point,
SPEC §9).

Prompts of different lengths are left-padded with PAD (hidden by the mask) and given
positions that start at 0 at their first real token, so a batch decodes exactly like each
prompt alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldvla.model.masks import attention_mask
from worldvla.model.transformer import KVCache, Transformer
from worldvla.sequence import frame_template
from worldvla.vocab import Vocab


@dataclass(frozen=True)
class Slot:
    """One token of the plan: ``forced`` id, or sample from ids ``[low, high)``."""

    forced: int | None = None
    low: int = 0
    high: int = 0


@dataclass
class Decoded:
    tokens: torch.Tensor  # (B, n_slots) the produced ids, forced ones included
    logits: list[torch.Tensor]  # per sampled slot: (B, V) unconstrained logits (if requested)
    ids: torch.Tensor  # (B, P + n_slots) left-padded prompt + produced ids
    positions: torch.Tensor  # (B, P + n_slots)


def action_plan(vocab: Vocab, num_actions: int, action_dim: int) -> list[Slot]:
    bins = Slot(low=vocab.action_start, high=vocab.action_start + vocab.action_bins)
    one = [Slot(forced=vocab.boa)] + [bins] * action_dim + [Slot(forced=vocab.eoa)]
    return one * num_actions


def frame_plan(vocab: Vocab, h: int, w: int) -> list[Slot]:
    code = Slot(low=vocab.image_start, high=vocab.image_start + vocab.image_codes)
    return [code if t < 0 else Slot(forced=int(t)) for t in frame_template(vocab, h, w)]


def left_pad(prompts: Sequence[torch.Tensor | np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, P), positions (B, P))`` with prompts right-aligned and positions from 0 per row."""
    rows = [
        torch.as_tensor(np.asarray(p) if not torch.is_tensor(p) else p, dtype=torch.long).reshape(-1)
        for p in prompts
    ]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r) :] = r
    pad = torch.tensor([longest - len(r) for r in rows])
    positions = (torch.arange(longest)[None, :] - pad[:, None]).clamp(min=0)
    return ids, positions


def _sample(
    logits: torch.Tensor, slot: Slot, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    allowed = logits[:, slot.low : slot.high].float()  # (B, n_allowed): constraint by slicing
    if temperature <= 0:
        choice = allowed.argmax(dim=-1)
    else:
        scores = allowed / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    return choice + slot.low


@torch.inference_mode()
def decode(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[torch.Tensor | np.ndarray],
    plan: Sequence[Slot],
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> Decoded:
    """Run ``plan`` after each prompt, batched, with a KV cache and the WorldVLA mask."""
    device = next(model.parameters()).device
    ids, positions = left_pad(prompts, vocab.pad)
    b, p = ids.shape
    n = len(plan)
    all_ids = torch.cat([ids, torch.full((b, n), vocab.pad, dtype=torch.long)], dim=1).to(device)
    last_pos = positions[:, -1:]
    all_pos = torch.cat([positions, last_pos + torch.arange(1, n + 1)[None, :]], dim=1).to(device)
    param = next(model.parameters())
    cache = KVCache(model.cfg, b, p + n, device=device, dtype=param.dtype)
    logits_out: list[torch.Tensor] = []
    fed = 0  # tokens already in the cache
    cur = p  # tokens known so far (prompt + produced)
    for slot in plan:
        if slot.forced is not None:
            all_ids[:, cur] = slot.forced
            cur += 1
            continue
        # Feed everything not yet cached; the last position's logits predict this slot.
        mask = attention_mask(all_ids[:, :cur], vocab, chunk_mask=chunk_mask, query_start=fed)
        logits = model(all_ids[:, fed:cur], attn_mask=mask, positions=all_pos[:, fed:cur], cache=cache)[:, -1]
        fed = cur
        if return_logits:
            logits_out.append(logits.float().clone())
        all_ids[:, cur] = _sample(logits, slot, temperature, top_k, generator)
        cur += 1
    return Decoded(tokens=all_ids[:, p:].cpu(), logits=logits_out, ids=all_ids.cpu(), positions=all_pos.cpu())


def generate_actions(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[torch.Tensor | np.ndarray],
    num_actions: int,
    action_dim: int,
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode a chunk of ``num_actions`` actions after each prompt: bins ``(B, K, D)``."""
    out = decode(
        model,
        vocab,
        prompts,
        action_plan(vocab, num_actions, action_dim),
        chunk_mask,
        temperature,
        top_k,
        generator,
    )
    tokens = out.tokens.view(len(prompts), num_actions, action_dim + 2)[:, :, 1:-1]  # drop BOA/EOA
    return vocab.action_bins_of(tokens)


def generate_frame(
    model: Transformer,
    vocab: Vocab,
    prompts: Sequence[torch.Tensor | np.ndarray],
    grid: tuple[int, int],
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode one frame of ``grid = (h, w)`` codes after each prompt: codes ``(B, h, w)``."""
    h, w = grid
    plan = frame_plan(vocab, h, w)
    out = decode(model, vocab, prompts, plan, chunk_mask, temperature, top_k, generator)
    is_code = torch.tensor([s.forced is None for s in plan])
    return vocab.image_codes_of(out.tokens[:, is_code]).view(len(prompts), h, w)
