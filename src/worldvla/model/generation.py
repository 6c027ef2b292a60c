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
with exactly the logits of one-by-one decoding (tested). Its mask rows are those of
:func:`~worldvla.model.masks.attention_mask` for the prompt followed by the whole chunk
(bins not yet sampled are placeholders: the mask keys on structure ids only), with the keys
reordered to the cache's step-major order; the decoder adds no rule of its own. It decodes
side by side only where those rows show no action of the chunk seeing another; otherwise
(``chunk_mask=False``: every action depends on the previous ones) it decodes one by one.
With temperature > 0 the random draws come in a different order than in sequential
decoding, so a seeded sample differs between the two (greedy is identical).

Prompts of different lengths are left-padded with PAD (hidden by the mask) and given
positions that start at 0 at each row's first real token, so a batch decodes exactly like
each prompt alone. :func:`decode` returns a :class:`DecodeState` (ids, positions, KV
cache) that a later call can continue from, e.g. a world-model rollout that appends the
next action to the frame it just generated instead of re-encoding the whole context.

Sampling options. How a sampled slot picks its id travels as one frozen :class:`Sampling`
(temperature, top-k, random generator, action readout), validated once when it is built.

Action readout. Greedy decoding (the reference) takes the most likely bin of every action
dimension. ``readout="mean"`` takes instead the bin nearest to the expectation of the
model's distribution over the bins (temperature 1); the bins are uniform in the
normalized action (:class:`worldvla.tokenizers.action.ActionTokenizer`), so this is the
expected action, within half a bin. Where a small model is unsure between "keep moving"
and "stop", the mode keeps moving at full speed and overshoots, the mean slows down;
measured on mw-quick in docs/training.md. The chosen bin is fed back like any token. The
readout applies to the slots whose ids are ordered values (:attr:`Slot.ordered`: the
action bins of :func:`action_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldvla.errors import ConfigError
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import KVCache, Transformer
from worldvla.sequence import frame_template
from worldvla.tokenizers.action import Readout, check_readout
from worldvla.vocab import Vocab

TokenRows = Sequence[torch.Tensor | np.ndarray]


@dataclass(frozen=True)
class Slot:
    """One token of the plan: the ``forced`` id, or sample one from ids ``[low, high)``.

    ``ordered``: the ids are ordered values (action bins), so the ``"mean"`` readout of
    :class:`Sampling` may take the one nearest to the expectation of their softmax.
    """

    forced: int | None = None
    low: int = 0
    high: int = 0
    ordered: bool = False


@dataclass(frozen=True)
class Sampling:
    """How every sampled slot picks its id; one value handed down from the policy to :func:`_sample`.

    Attributes:
        temperature: 0 = greedy (argmax over the allowed ids); > 0 samples from the softmax
            of ``logits / temperature`` restricted to the allowed ids.
        top_k: with temperature > 0, sample only among the ``top_k`` best allowed ids.
        generator: the random generator of the draws (reproducible samples); None: torch's.
        readout: ``"argmax"`` (greedy, or a sample at temperature > 0) or ``"mean"``: on
            ordered slots (action bins), the bin nearest to the expected one (module
            docstring; the allowed values: :data:`worldvla.tokenizers.action.READOUTS`).
            The mean is deterministic, so it needs temperature 0.
    """

    temperature: float = 0.0
    top_k: int | None = None
    generator: torch.Generator | None = None
    readout: Readout = "argmax"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be None or >= 1, got {self.top_k}")
        check_readout(self.readout)
        if self.readout == "mean" and self.temperature > 0:
            raise ConfigError(
                "the mean action readout is deterministic; use temperature 0 or readout 'argmax'"
            )


GREEDY = Sampling()


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


def action_plan(vocab: Vocab, num_actions: int, action_dim: int) -> list[Slot]:
    """``num_actions`` × ``[BOA forced, action_dim bins sampled (ordered), EOA forced]``."""
    if num_actions < 1 or action_dim < 1:
        raise ValueError(f"need num_actions >= 1 and action_dim >= 1, got {num_actions}, {action_dim}")
    bins = Slot(low=vocab.action_start, high=vocab.action_start + vocab.action_bins, ordered=True)
    one = [Slot(forced=vocab.boa)] + [bins] * action_dim + [Slot(forced=vocab.eoa)]
    return one * num_actions


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


def _sample(logits: torch.Tensor, slot: Slot, sampling: Sampling) -> torch.Tensor:
    """``(B,)`` ids in ``[slot.low, slot.high)`` picked from ``(B, V)`` logits as ``sampling`` says."""
    allowed = logits[:, slot.low : slot.high].float()  # (B, n_allowed): the constraint is this slice
    if slot.ordered and sampling.readout == "mean":
        probs = torch.softmax(allowed, dim=-1)
        index = torch.arange(allowed.shape[-1], dtype=probs.dtype, device=probs.device)
        return (probs @ index).round().long() + slot.low
    if sampling.temperature <= 0:
        choice = allowed.argmax(dim=-1)
    else:
        scores = allowed / sampling.temperature
        top_k = sampling.top_k
        if top_k is not None and top_k < scores.shape[-1]:
            kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs.cpu(), 1, generator=sampling.generator).squeeze(-1)
        choice = choice.to(logits.device)
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


def _with_plan(state: DecodeState, plan: Sequence[Slot]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, positions)``, both ``(B, S + n)``: the state's, then one entry per slot of ``plan``.

    A slot's id is its forced id, or the lowest allowed one as a placeholder until it is
    sampled. A placeholder is never fed; only the chunk decoder's mask reads it, and the mask
    keys on BOA, EOA, EOI and PAD, never on the value of an action bin.
    """
    b, n = state.batch, len(plan)
    slots = torch.tensor([s.low if s.forced is None else s.forced for s in plan], device=state.ids.device)
    steps = torch.arange(1, n + 1, device=state.ids.device)[None, :]
    ids = torch.cat([state.ids, slots.expand(b, n)], 1)
    positions = torch.cat([state.positions, state.positions[:, -1:] + steps], 1)
    return ids, positions


@torch.inference_mode()
def decode(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    plan: Sequence[Slot],
    *,
    sampling: Sampling = GREEDY,
    chunk_mask: bool = True,
    return_logits: bool = False,
    state: DecodeState | None = None,
    guidance: float | None = None,
) -> Decoded:
    """Run ``plan`` after each prompt, batched, with a KV cache and the WorldVLA mask.

    Args:
        prompts: one id sequence per row. With ``state``, the tokens to append to each
            row of that state first (all of the same length, possibly empty).
        plan: the slots to produce (:func:`action_plan`, :func:`frame_plan`, or any list).
        sampling: how each sampled slot picks its id (:class:`Sampling`; default greedy).
        chunk_mask: the SPEC §3 mask; must match how the model was trained.
        return_logits: keep the unconstrained logits of every sampled slot (tests, analysis).
        state: continue an earlier :class:`Decoded`'s ``state`` (its cache is reused and grows).
        guidance: classifier-free guidance. The rows come in two halves: row ``i`` of the
            first half is conditioned, row ``i`` of the second the same prediction without the
            condition; every sampled slot reads ``u + guidance · (c − u)`` of the pair's
            logits (``c`` conditioned, ``u`` not; 1 = the conditioned logits), and both rows
            of a pair receive the same id. None: every row on its own.
    """
    if guidance is not None and len(prompts) % 2:
        raise ValueError(f"guided decoding needs rows in two equal halves, got {len(prompts)} rows")
    state = _start(model, vocab, prompts, len(plan)) if state is None else _extend(state, prompts)
    p = state.ids.shape[1]
    ids, positions = _with_plan(state, plan)  # (B, p+n) each
    cache, fed = state.cache, state.fed
    logits_out: list[torch.Tensor] = []
    for cur, slot in enumerate(plan, start=p):  # cur: tokens known so far (prompt + produced)
        if slot.forced is not None:
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
        if guidance is not None:
            cond, uncond = logits.float().chunk(2)  # (B/2, V) each
            logits = uncond + guidance * (cond - uncond)
        if return_logits:
            logits_out.append(logits.float().cpu())
        choice = _sample(logits, slot, sampling)
        ids[:, cur] = choice if guidance is None else choice.repeat(2)
    return Decoded(tokens=ids[:, p:].cpu(), logits=logits_out, state=DecodeState(ids, positions, cache, fed))


def _actions_see_each_other(rows: torch.Tensor, num_actions: int) -> bool:
    """Whether, in mask ``rows`` ``(B, K·W, ·)`` of a chunk's queries, any action sees another's keys.

    The chunk is the last ``K·W`` keys, ``W`` tokens per action.
    """
    n = rows.shape[1]
    action = torch.arange(num_actions, device=rows.device).repeat_interleave(n // num_actions)  # (K·W,)
    other = action[:, None] != action[None, :]  # (K·W, K·W)
    return bool((rows[:, :, -n:] & other).any())


@torch.inference_mode()
def decode_chunk(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    num_actions: int,
    action_dim: int,
    *,
    sampling: Sampling = GREEDY,
    chunk_mask: bool = True,
    return_logits: bool = False,
    state: DecodeState | None = None,
    parallel: bool = True,
) -> Decoded:
    """Decode an action chunk: the K actions side by side when the mask allows it (module docstring).

    Arguments as in :func:`decode`; ``parallel=False`` forces one-by-one decoding. The
    returned state holds the whole chunk; after side-by-side decoding the chunk's keys are
    not cached yet, and a continuation feeds them in its first forward pass.
    """
    plan = action_plan(vocab, num_actions, action_dim)
    state = _start(model, vocab, prompts, len(plan)) if state is None else _extend(state, prompts)
    if parallel:
        ids, positions = _with_plan(state, plan)  # (B, P + K·W): the prompt, then the chunk
        # The rows of every query still to feed (the uncached prompt, then the chunk), from masks.py.
        rows = attention_mask(ids, vocab, chunk_mask=chunk_mask, query_start=state.fed)
        if not _actions_see_each_other(rows[:, state.ids.shape[1] - state.fed :], num_actions):
            return _decode_side_by_side(
                model, state, ids, positions, rows, plan, num_actions, sampling, return_logits
            )
    return decode(
        model,
        vocab,
        [[]] * state.batch,
        plan,
        sampling=sampling,
        chunk_mask=chunk_mask,
        return_logits=return_logits,
        state=state,
    )


def _decode_side_by_side(
    model: Transformer,
    state: DecodeState,
    ids: torch.Tensor,
    positions: torch.Tensor,
    rows: torch.Tensor,
    plan: Sequence[Slot],
    k: int,
    sampling: Sampling,
    return_logits: bool,
) -> Decoded:
    """Step j feeds token j of all K actions at once and samples token j+1 of each.

    ``ids``/``positions`` ``(B, P + K·W)`` hold the prompt and the chunk in sequence order;
    ``rows`` are the mask rows of sequence positions ``state.fed …`` against all of them.
    The cache stores the new keys step-major (token 0 of every action, then token 1, …), so
    each step's mask is ``rows`` with its queries picked and its keys put in cache order.
    """
    cache, fed = state.cache, state.fed
    b, p = state.ids.shape
    width = len(plan) // k  # D + 2 tokens per action
    device = ids.device
    starts = p + width * torch.arange(k, device=device)  # (K,) sequence position of each BOA
    prompt = torch.arange(p, device=device)
    step_major = (starts[None, :] + torch.arange(width - 2, device=device)[:, None]).flatten()  # (D·K,)
    cache_order = torch.cat([prompt, step_major])  # the sequence position of every key in the cache
    step_logits: list[torch.Tensor] = []
    for j in range(width - 2):
        queries = torch.cat([prompt[fed:], starts + j])  # the first step also feeds the uncached prompt
        keys = cache_order[: p + (j + 1) * k]
        mask = rows[:, queries - state.fed][:, :, keys]  # (B, n_queries, P + (j+1)·K)
        hidden = model.hidden_states(
            ids[:, queries], attn_mask=mask, positions=positions[:, queries], cache=cache
        )
        logits = model.output_logits(hidden[:, -k:])  # (B, K, V)
        fed = p
        if return_logits:
            step_logits.append(logits.float().cpu())
        sampled = _sample(logits.reshape(b * k, -1), plan[j + 1], sampling)  # (B·K,)
        ids[:, starts + j + 1] = sampled.view(b, k)
    cache.truncate(p)  # drop the step-major chunk keys; the state continues from the prompt
    logits = [step[:, a] for a in range(k) for step in step_logits] if return_logits else []
    return Decoded(tokens=ids[:, p:].cpu(), logits=logits, state=DecodeState(ids, positions, cache, p))


def generate_actions(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    num_actions: int,
    action_dim: int,
    *,
    sampling: Sampling = GREEDY,
    chunk_mask: bool = True,
    state: DecodeState | None = None,
    return_state: bool = False,
    parallel: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
    """Decode a chunk of ``num_actions`` actions after each prompt: bins ``(B, K, D)`` (CPU).

    BOA/EOA are forced, only action-bin ids are sampled (SPEC §6); with the mask the K
    actions are decoded side by side (:func:`decode_chunk`). ``state`` and ``return_state``
    continue from / hand back the decoding state (see :func:`decode`).
    """
    out = decode_chunk(
        model,
        vocab,
        prompts,
        num_actions,
        action_dim,
        sampling=sampling,
        chunk_mask=chunk_mask,
        state=state,
        parallel=parallel,
    )
    tokens = out.tokens.view(-1, num_actions, action_dim + 2)[:, :, 1:-1]  # (B, K, D): drop BOA/EOA
    bins = vocab.action_bins_of(tokens)
    return (bins, out.state) if return_state else bins


def generate_frame(
    model: Transformer,
    vocab: Vocab,
    prompts: TokenRows,
    grid: tuple[int, int],
    *,
    sampling: Sampling = GREEDY,
    chunk_mask: bool = True,
    state: DecodeState | None = None,
    return_state: bool = False,
    unconditioned: TokenRows | None = None,
    guidance: float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, DecodeState]:
    """Decode one frame of ``grid = (h, w)`` codes after each prompt: codes ``(B, h, w)`` (CPU).

    BOI, grid sizes, row separators and EOI are forced from :func:`worldvla.sequence.
    frame_template`; only image codes are sampled (SPEC §6). ``unconditioned``: one prompt
    per prompt, the same prediction without its condition (e.g. null actions), decoded
    beside it with classifier-free ``guidance`` (:func:`decode`); the state then holds both.
    """
    h, w = grid
    plan = frame_plan(vocab, h, w)
    mix = None
    if unconditioned is not None:
        if state is not None or len(unconditioned) != len(prompts):
            raise ValueError("guided frames need one unconditioned prompt per prompt and no earlier state")
        prompts, mix = [*prompts, *unconditioned], guidance
    out = decode(
        model, vocab, prompts, plan, sampling=sampling, chunk_mask=chunk_mask, state=state, guidance=mix
    )
    is_code = torch.tensor([s.forced is None for s in plan])
    tokens = out.tokens if mix is None else out.tokens[: len(prompts) // 2]
    codes = vocab.image_codes_of(tokens[:, is_code]).view(-1, h, w)  # (B, h, w)
    return (codes, out.state) if return_state else codes
