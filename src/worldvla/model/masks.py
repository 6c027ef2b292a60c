"""The WorldVLA attention mask (SPEC §3), as pure vectorized functions of the token ids.

Rule. Start from the causal mask. An *action block* is a ``BOA … EOA`` span (inclusive);
while a chunk is being decoded the last block may be unterminated (``BOA …`` up to the end
of the sequence) and counts as a block too. A *chunk block* is an action block that lies
after the last ``EOI`` of its row (after the last image). With ``chunk_mask=True``, no
token of a chunk block may attend to a token of an earlier action block (SPEC §3, taken
literally: any earlier action block, also one before the last image); inside its own
block attention stays causal. Every other token is ordinary context under the causal
mask — text, images, SEP and the optional proprioceptive-state block (``BOS_STATE …
EOS_STATE``, :mod:`worldvla.sequence`), which has its own delimiters precisely so that it
is never taken for an action block: the rule keys on BOA, EOA and EOI only, and a chunk's
actions all see the state. Consequences (SPEC §3):

- the actions of a chunk see the instruction and the images, never each other, so one
  wrong action cannot drag the next ones along; they differ only by their positions;
- world-model samples (``IMG(t), ACT(t), SEP | IMG(t+1)``) have a single action block that
  is followed by an image, so their mask is purely causal;
- action blocks *before* the last image are hidden from a chunk too. No layout of SPEC §2
  puts actions before an image and a chunk after it; a sequence that did (a multi-step
  rollout kept in one context) would see its earlier blocks change status when a later
  image is decoded, so such rollouts re-prompt with history 1 instead
  (:mod:`worldvla.world_model`).

Cached decoding. :func:`attention_mask` with ``query_start`` returns only the rows of the
new queries against all keys, ``(B, L - query_start, L)``: a decoder computes those rows
at every step and never rebuilds an L×L mask (the reference's weak point, SPEC §9). The
rows are judged by the last ``EOI`` of the ids passed in, i.e. of everything decoded so
far. They equal the rows of the full mask of the finished sequence unless a later image
turns two earlier chunk blocks back into ordinary context — which no layout of SPEC §2
does (an image after actions closes a world-model sample, which has one action block).
A decoder that feeds tokens out of sequence order (the K actions of a chunk side by side,
:func:`worldvla.model.generation.decode_chunk`) takes the rows of the sequence it is
writing and only reorders their keys to its cache's order: the rule stays here.

Padding. ``PAD`` keys are hidden from every query. A ``PAD`` query still sees itself, so
no row is empty (an all-False row would make softmax produce NaN); its output is garbage
that carries no loss and that no real token attends to. Right padding (training) and left
padding (batched decoding) both work; positions are the caller's business.

Everything is computed with cumulative sums and broadcasting: no Python loop over
positions or batch rows — O(L) bookkeeping plus the (B, Lq, L) comparison itself.
"""

from __future__ import annotations

import torch

from worldvla.vocab import Vocab


def action_block_ids(input_ids: torch.Tensor, vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token action-block bookkeeping for ``(B, L)`` ids.

    Returns ``(block, chunk)``, both ``(B, L)``: ``block[b, i]`` is the 1-based index of the
    action block that holds token ``i`` (0 outside any block); ``chunk[b, i]`` is True for
    tokens of chunk blocks (action blocks after the row's last EOI).
    """
    is_boa = (input_ids == vocab.boa).long()
    is_eoa = (input_ids == vocab.eoa).long()
    n_boa = torch.cumsum(is_boa, dim=-1)  # BOAs at or before i
    n_eoa_before = torch.cumsum(is_eoa, dim=-1) - is_eoa  # EOAs strictly before i
    # Blocks never nest, so i is inside a block iff more blocks opened than closed before it.
    inside = n_boa > n_eoa_before
    block = torch.where(inside, n_boa, torch.zeros_like(n_boa))
    pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
    eoi_pos = torch.where(input_ids == vocab.eoi, pos, torch.full_like(pos, -1))
    last_eoi = eoi_pos.max(dim=-1, keepdim=True).values  # (B, 1); -1 when the row has no image
    chunk = inside & (pos > last_eoi)
    return block, chunk


def attention_mask(
    input_ids: torch.Tensor, vocab: Vocab, chunk_mask: bool = True, query_start: int = 0
) -> torch.Tensor:
    """Boolean attention mask, True = may attend.

    Args:
        input_ids: ``(B, L)`` token ids (a 1-D tensor is treated as one row).
        vocab: the id layout that says which ids are PAD, EOI, BOA and EOA.
        chunk_mask: apply the SPEC §3 action-chunk rule; False gives the plain causal
            mask (with padding) of the ablation.
        query_start: return only the rows of queries ``query_start … L-1`` (the new
            tokens of a cached decoding step) against all ``L`` keys.

    Returns:
        ``(B, L - query_start, L)`` bool tensor.
    """
    ids = input_ids if input_ids.dim() == 2 else input_ids.unsqueeze(0)
    length = ids.shape[-1]
    if not 0 <= query_start <= length:
        raise ValueError(f"query_start={query_start} outside [0, {length}]")
    q = torch.arange(query_start, length, device=ids.device)
    k = torch.arange(length, device=ids.device)
    causal = k[None, :] <= q[:, None]  # (Lq, L)
    key_ok = ids != vocab.pad  # (B, L)
    mask = causal[None] & key_ok[:, None, :]  # (B, Lq, L)
    if chunk_mask:
        block, chunk = action_block_ids(ids, vocab)
        q_block, q_chunk = block[:, query_start:], chunk[:, query_start:]  # (B, Lq)
        # A chunk-block query must not see a token of another (by causality: earlier) action
        # block — any earlier action block, as SPEC §3 states it.
        other = block[:, None, :] != q_block[:, :, None]  # (B, Lq, L)
        hidden = q_chunk[:, :, None] & (block[:, None, :] > 0) & other
        mask = mask & ~hidden
    diag = (q[:, None] == k[None, :])[None]  # every query sees itself: no empty rows
    return mask | diag
