"""Cached, constrained, batched decoding (SPEC §3, §6).

Decoding is driven by a *plan*: one slot per token to produce, each slot either a forced
id (structure the layout already fixes: BOA/EOA around every action; BOI, grid sizes, row
separators and EOI of a frame) or an allowed id range to sample from (action bins, image
codes). Forced tokens are never sampled: they are written into the sequence and fed to
the model together with the next sampled slot's predecessor, so a K-action chunk of D
dims costs K·D forward steps after the prefill and an h×w frame costs h·w steps.
Sampling only inside the allowed range is the constrained decoding SPEC §6 asks for: even
an untrained model at a high temperature emits a well-formed chunk or frame.

Every step computes only the new rows of the WorldVLA mask
(:func:`worldvla.model.masks.attention_mask` with ``query_start``) against the cached
keys, so a token of action block k never sees cached keys of earlier chunk blocks — the
same mask as in training, and never a full L×L rebuild per step (SPEC §9).

Parallel chunk decoding. Under the mask a token of chunk block k sees the prompt and its
own block only, so the K actions of a chunk "differ only by their positions" (SPEC §3)
and can be decoded side by side: :func:`decode_chunk` feeds the K BOAs together (each at
its own position), then the K first bins, and so on — D forward steps instead of K·D,
with exactly the logits of one-by-one decoding (tested). It applies only with the mask;
with ``chunk_mask=False`` every action depends on the previous ones and decoding is
sequential. With temperature > 0 the random draws come in a different order than in
sequential decoding, so a seeded sample differs between the two (greedy is identical).

Prompts of different lengths are left-padded with PAD (hidden by the mask) and given
positions that start at 0 at each row's first real token, so a batch decodes exactly like
each prompt alone. :func:`decode` returns a :class:`DecodeState` (ids, positions, KV
cache) that a later call can continue from, e.g. a world-model rollout that appends the
next action to the frame it just generated instead of re-encoding the whole context.

Action readout. Greedy decoding (the reference) takes the most likely bin of every action
dimension. ``readout="mean"`` takes instead the bin nearest to the expectation of the
model's distribution over the bins (temperature 1); the bins are uniform in the
normalized action (:class:`worldvla.tokenizers.action.ActionTokenizer`), so this is the
expected action, within half a bin. Where a small model is unsure between "keep moving"
and "stop", the mode keeps moving at full speed and overshoots, the mean slows down;
measured on mw-quick in docs/training.md. The chosen bin is fed back like any token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldvla.errors import ConfigError
from worldvla.model.masks import action_block_ids, attention_mask
from worldvla.model.transformer import KVCache, Transformer
from worldvla.sequence import frame_template
from worldvla.vocab import Vocab

TokenRows = Sequence[torch.Tensor | np.ndarray]


@dataclass(frozen=True)
class Slot:
    """One token of the plan: the ``forced`` id, or sample one from ids ``[low, high)``.

    ``mean``: the ids are ordered values (action bins); take the one nearest to the
    expectation of their softmax instead of the argmax or a sample.
    """

    forced: int | None = None
    low: int = 0
    high: int = 0
    mean: bool = False


READOUTS = ("argmax", "mean")


@dataclass
class DecodeState:
    """Everything needed to continue decoding a batch.

    Continuing from a state appends to its KV cache in place, so a state can be continued
    once; the continuation returns the newer state.
    """

    ids: torch.Tensor  # (B, S) left-padded prompt + all tokens produced so far, on the model's device
    positions: torch.Tensor  # (B, S) RoPE positions, 0 at each row's first real token
    cache: KVCache  # keys/values of the first ``fed`` tokens
    fed: int  # tokens already in the cache; ids[:, fed:] still have to be fed

    @property
    def batch(self) -> int:
        return self.ids.shape[0]


@dataclass
class Decoded:
    tokens: torch.Tensor  # (B, n_slots) the produced ids, forced ones included (CPU)
    logits: list[torch.Tensor]  # per sampled slot: (B, V) unconstrained fp32 logits (if requested)
    state: DecodeState

    @property
    def ids(self) -> torch.Tensor:
        """``(B, S)`` left-padded prompt + produced ids (CPU)."""
        return self.state.ids.cpu()


def action_plan(vocab: Vocab, num_actions: int, action_dim: int, readout: str = "argmax") -> list[Slot]:
    """``num_actions`` × ``[BOA forced, action_dim bins sampled, EOA forced]``.

    ``readout``: ``"argmax"`` (greedy, or a sample at temperature > 0) or ``"mean"``
    (the bin nearest to the expected bin; module docstring).
    """
    if num_actions < 1 or action_dim < 1:
        raise ValueError(f"need num_actions >= 1 and action_dim >= 1, got {num_actions}, {action_dim}")
    check_readout(readout)
    bins = Slot(low=vocab.action_start, high=vocab.action_start + vocab.action_bins, mean=readout == "mean")
    one = [Slot(forced=vocab.boa)] + [bins] * action_dim + [Slot(forced=vocab.eoa)]
    return one * num_actions


def check_readout(readout: str, temperature: float = 0.0) -> None:
    """Raise ConfigError for an unknown readout or a mean readout with sampling."""
    if readout not in READOUTS:
        raise ConfigError(f"action readout must be one of {READOUTS}, got {readout!r}")
    if readout == "mean" and temperature > 0:
        raise ConfigError("the mean action readout is deterministic; use temperature 0 or readout 'argmax'")


def frame_plan(vocab: Vocab, h: int, w: int) -> list[Slot]:
    """The frame layout of :func:`worldvla.sequence.frame_template`: structure forced, codes sampled."""
    code = Slot(low=vocab.image_start, high=vocab.image_start + vocab.image_codes)
    return [code if t < 0 else Slot(forced=int(t)) for t in frame_template(vocab, h, w)]


def _rows(prompts: TokenRows) -> list[torch.Tensor]:
    return [
        torch.as_tensor(np.asarray(p) if not torch.is_tensor(p) else p).long().reshape(-1) for p in prompts
    ]


def left_pad(prompts: TokenRows, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, P), positions (B, P))`` with prompts right-aligned and positions from 0 per row."""
    rows = _rows(prompts)
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("decoding needs at least one prompt and every prompt needs at least one token")
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r) :] = r
    pad = torch.tensor([longest - len(r) for r in rows])  # (B,)
    positions = (torch.arange(longest)[None, :] - pad[:, None]).clamp(min=0)  # (B, P)
    return ids, positions


def _sample(
    logits: torch.Tensor, slot: Slot, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    allowed = logits[:, slot.low : slot.high].float()  # (B, n_allowed): the constraint is this slice
    if slot.mean:
        probs = torch.softmax(allowed, dim=-1)
        index = torch.arange(allowed.shape[-1], dtype=probs.dtype, device=probs.device)
        return (probs @ index).round().long() + slot.low
    if temperature <= 0:
        choice = allowed.argmax(dim=-1)
    else:
        scores = allowed / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
    return choice + slot.low


def _start(model: Transformer, vocab: Vocab, prompts: TokenRows, n: int) -> DecodeState:
    ids, positions = left_pad(prompts, vocab.pad)
    device = model.tok_emb.weight.device
    return DecodeState(
        ids.to(device), positions.to(device), model.new_cache(ids.shape[0], ids.shape[1] + n), 0
    )


def _extend(state: DecodeState, more: TokenRows) -> DecodeState:
    if state.cache.length != state.fed:
        raise ValueError("this DecodeState was already continued once; continue from the newest state")
    rows = _rows(more)
    if len(rows) != state.batch or len({len(r) for r in rows}) > 1:
        raise ValueError(
            f"continuing a batch of {state.batch} needs {state.batch} continuations of equal length, "
            f"got lengths {[len(r) for r in rows]}"
        )
    if not rows[0].numel():
        return state
    add = torch.stack(rows).to(state.ids.device)  # (B, n_more)
    pos = state.positions[:, -1:] + torch.arange(1, add.shape[1] + 1, device=add.device)  # (B, n_more)
    return DecodeState(
        torch.cat([state.ids, add], 1), torch.cat([state.positions, pos], 1), state.cache, state.fed
    )


@torch.inference_mode()
def decode(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    plan: Sequence[Slot],
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    state: DecodeState | None = None,
) -> Decoded:
    """Run ``plan`` after each prompt, batched, with a KV cache and the WorldVLA mask.

    Args:
        prompts: one id sequence per row. With ``state``, the tokens to append to each
            row of that state first (all of the same length, possibly empty).
        plan: the slots to produce (:func:`action_plan`, :func:`frame_plan`, or any list).
        chunk_mask: the SPEC §3 mask; must match how the model was trained.
        temperature: 0 = greedy (argmax over the allowed ids); > 0 samples from the
            softmax of ``logits / temperature`` restricted to the allowed ids, optionally to
            their ``top_k`` best, with ``generator`` for reproducibility.
        return_logits: keep the unconstrained logits of every sampled slot (tests, analysis).
        state: continue an earlier :class:`Decoded`'s ``state`` (its cache is reused and grows).
    """
    n = len(plan)
    state = _start(model, vocab, prompts, n) if state is None else _extend(state, prompts)
    b, p = state.ids.shape
    device = state.ids.device
    ids = torch.cat(
        [state.ids, torch.full((b, n), vocab.pad, dtype=torch.long, device=device)], 1
    )  # (B, p+n)
    steps = torch.arange(1, n + 1, device=device)[None, :]
    positions = torch.cat([state.positions, state.positions[:, -1:] + steps], 1)  # (B, p+n)
    cache, fed = state.cache, state.fed
    logits_out: list[torch.Tensor] = []
    cur = p  # tokens known so far (prompt + produced)
    for slot in plan:
        if slot.forced is not None:
            ids[:, cur] = slot.forced
            cur += 1
            continue
        # Feed everything not yet cached; the last position's logits predict this slot.
        mask = attention_mask(
            ids[:, :cur], vocab, chunk_mask=chunk_mask, query_start=fed
        )  # (B, cur-fed, cur)
        hidden = model.hidden_states(
            ids[:, fed:cur], attn_mask=mask, positions=positions[:, fed:cur], cache=cache
        )
        logits = model.output_logits(hidden[:, -1])  # (B, V)
        fed = cur
        if return_logits:
            logits_out.append(logits.float().cpu())
        ids[:, cur] = _sample(logits, slot, temperature, top_k, generator)
        cur += 1
    return Decoded(tokens=ids[:, p:].cpu(), logits=logits_out, state=DecodeState(ids, positions, cache, fed))


@torch.inference_mode()
def decode_chunk(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    num_actions: int,
    action_dim: int,
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    state: DecodeState | None = None,
    parallel: bool = True,
    readout: str = "argmax",
) -> Decoded:
    """Decode an action chunk: the K actions side by side when the mask allows it (module docstring).

    Arguments as in :func:`decode`; ``parallel=False`` forces one-by-one decoding;
    ``readout`` as in :func:`action_plan`. The
    returned state holds the whole chunk, but the chunk's keys are not cached yet: a
    continuation feeds them in its first forward pass.
    """
    check_readout(readout, temperature)
    plan = action_plan(vocab, num_actions, action_dim, readout)
    sampling = (temperature, top_k, generator, return_logits)
    if not (chunk_mask and parallel):
        return decode(model, vocab, prompts, plan, chunk_mask, *sampling, state=state)
    state = _start(model, vocab, prompts, len(plan)) if state is None else _extend(state, prompts)
    ids, positions, cache, fed = state.ids, state.positions, state.cache, state.fed
    b, p = ids.shape
    block, chunk = action_block_ids(ids, vocab)  # (B, P)
    if ((block[:, -1] > 0) & (ids[:, -1] != vocab.eoa)).any():
        # A prompt ends inside an open action block: the new blocks would not start fresh.
        return decode(model, vocab, [[]] * b, plan, chunk_mask, *sampling, state=state)
    k, d = num_actions, action_dim
    device = ids.device
    # A new chunk-block query sees every prompt key except PAD and earlier chunk blocks (SPEC §3).
    prompt_visible = (ids != vocab.pad) & ~chunk  # (B, P)
    own_block = torch.eye(k, dtype=torch.bool, device=device)  # (K, K): new keys are stored step-major
    tokens = torch.full((b, k, d + 2), vocab.eoa, dtype=torch.long, device=device)  # (B, K, D+2)
    tokens[:, :, 0] = vocab.boa
    first = positions[:, -1:] + 1 + (d + 2) * torch.arange(k, device=device)  # (B, K) position of each BOA
    slot = plan[1]  # the bins of every action
    step_logits: list[torch.Tensor] = []
    for j in range(d):
        # (B, K, P + (j+1)·K): the prompt, then the step-j' token of its own block for every j' <= j
        own = own_block.repeat(1, j + 1).expand(b, k, k * (j + 1))
        chunk_rows = torch.cat([prompt_visible[:, None, :].expand(b, k, p), own], dim=-1)
        new_ids, new_pos, mask = tokens[:, :, j], first + j, chunk_rows
        if fed < p:  # the first step also feeds the uncached part of the prompt, under its own mask
            prompt_rows = attention_mask(ids, vocab, chunk_mask=True, query_start=fed)  # (B, P-fed, P)
            prompt_rows = torch.cat([prompt_rows, prompt_rows.new_zeros(b, p - fed, k)], dim=-1)
            new_ids = torch.cat([ids[:, fed:], new_ids], dim=1)
            new_pos = torch.cat([positions[:, fed:], new_pos], dim=1)
            mask = torch.cat([prompt_rows, chunk_rows], dim=1)
            fed = p
        hidden = model.hidden_states(new_ids, attn_mask=mask, positions=new_pos, cache=cache)[:, -k:]
        logits = model.output_logits(hidden)  # (B, K, V)
        if return_logits:
            step_logits.append(logits.float().cpu())
        sampled = _sample(logits.reshape(b * k, -1), slot, temperature, top_k, generator)  # (B·K,)
        tokens[:, :, j + 1] = sampled.view(b, k)
    cache.truncate(p)  # drop the step-major chunk keys; the state continues from the prompt
    chunk_ids = tokens.reshape(b, k * (d + 2))  # (B, K·(D+2)) in sequence order
    steps = torch.arange(1, k * (d + 2) + 1, device=device)[None, :]
    all_ids = torch.cat([ids, chunk_ids], dim=1)
    all_pos = torch.cat([positions, positions[:, -1:] + steps], dim=1)
    logits = [step_logits[j][:, a] for a in range(k) for j in range(d)] if return_logits else []
    return Decoded(tokens=chunk_ids.cpu(), logits=logits, state=DecodeState(all_ids, all_pos, cache, p))


def generate_actions(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    num_actions: int,
    action_dim: int,
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    state: DecodeState | None = None,
    return_state: bool = False,
    parallel: bool = True,
    readout: str = "argmax",
) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
    """Decode a chunk of ``num_actions`` actions after each prompt: bins ``(B, K, D)`` (CPU).

    BOA/EOA are forced, only action-bin ids are sampled (SPEC §6); with the mask the K
    actions are decoded side by side (:func:`decode_chunk`). ``state`` and ``return_state``
    continue from / hand back the decoding state (see :func:`decode`); ``readout`` as in
    :func:`action_plan`.
    """
    out = decode_chunk(
        model,
        vocab,
        prompts,
        num_actions,
        action_dim,
        chunk_mask,
        temperature,
        top_k,
        generator,
        state=state,
        parallel=parallel,
        readout=readout,
    )
    tokens = out.tokens.view(-1, num_actions, action_dim + 2)[:, :, 1:-1]  # (B, K, D): drop BOA/EOA
    bins = vocab.action_bins_of(tokens)
    return (bins, out.state) if return_state else bins


def generate_frame(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    grid: tuple[int, int],
    chunk_mask: bool = True,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    state: DecodeState | None = None,
    return_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
    """Decode one frame of ``grid = (h, w)`` codes after each prompt: codes ``(B, h, w)`` (CPU).

    BOI, grid sizes, row separators and EOI are forced from :func:`worldvla.sequence.
    frame_template`; only image codes are sampled (SPEC §6).
    """
    h, w = grid
    plan = frame_plan(vocab, h, w)
    out = decode(model, vocab, prompts, plan, chunk_mask, temperature, top_k, generator, state=state)
    is_code = torch.tensor([s.forced is None for s in plan])
    codes = vocab.image_codes_of(out.tokens[:, is_code]).view(-1, h, w)  # (B, h, w)
    return (codes, out.state) if return_state else codes
