"""Serialize frames and actions into the WorldVLA token stream and build training samples.

Layouts (SPEC §2; ``|`` marks where the loss starts)::

    frame (h x w codes): BOI, grid(h), grid(w), [code ... code, ROW_SEP] x h, EOI  (4 + h*(w+1) tokens)
    action (D dims):     BOA, bin_1, ..., bin_D, EOA                                (D + 2 tokens)
    state (S dims):      BOS_STATE, bin_1, ..., bin_S, EOS_STATE                    (S + 2 tokens)
    action-model sample: BOS, prompt(instruction), IMG(t-M+1), ..., IMG(t), [STATE(t),] SEP
                         | ACT(t), ..., ACT(t+K-1), SEP
    world-model sample:  BOS, world prompt, IMG(t), ACT(t), SEP | IMG(t+1), SEP

``grid(n)`` announces ``n`` codes as ``n / vocab.grid_unit`` units (one code in the compact
layout; a 32-pixel patch of 2×2 codes for the released Chameleon checkpoints).

``ACT(t)`` is the action executed after observing ``IMG(t)``; ``STATE(t)`` is the
proprioceptive state observed with ``IMG(t)`` (optional: only for a model trained with
``use_state``, whose vocabulary has state tokens). It sits after the last image, right
before the ``SEP`` that ends the prompt, so it is the freshest context the first action
reads; it is context (loss weight 0), and its own delimiters keep it out of the action
blocks of the attention mask (:mod:`worldvla.model.masks`). Each sample comes with
per-token loss weights aligned with its ids (``weights[i]`` weighs the prediction of
``ids[i]`` from ``ids[:i]``): 0 on the context and 1 on every target token (action bins,
BOA/EOA, BOI, grid tokens, image codes, ROW_SEP, EOI, SEP), except that a world-model sample
may weigh the image codes that change more (``changed_weight``). The image-loss weight α
(SPEC §4) is not part of a sample: the loss applies it to image-code targets
(:mod:`worldvla.train.loss`), so the samples do not depend on the loss form.

Default prompts follow the reference implementation's wording (configurable in
:class:`PromptConfig`): the action prompt is ``"What action should the robot take to
{instruction}?"`` and the world prompt is ``"Generate the next image based on the provided
image and action."``. The reference writes an action query as a one-turn conversation
(its message, then the turn separator, after BOS); with the reference vocabulary's SEP and
a layout without history padding that is this action prompt token for token
(:mod:`worldvla.convert.reference_prompts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worldvla.tokenizers.text import TextTokenizer
from worldvla.vocab import Vocab


@dataclass(frozen=True)
class PromptConfig:
    action_prompt: str = "What action should the robot take to {instruction}?"
    world_prompt: str = "Generate the next image based on the provided image and action."

    def __post_init__(self) -> None:
        if "{instruction}" not in self.action_prompt:
            raise ValueError("PromptConfig.action_prompt must contain '{instruction}'")


@dataclass(frozen=True)
class Sample:
    """One training sample: token ids and per-token loss weights, both of length L."""

    ids: np.ndarray  # int64 (L,)
    weights: np.ndarray  # float32 (L,)

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------- frames
def frame_length(h: int, w: int) -> int:
    """Number of tokens of one serialized frame of an ``h x w`` code grid."""
    return 4 + h * (w + 1)


def frame_template(vocab: Vocab, h: int, w: int) -> np.ndarray:
    """Token ids of a serialized ``h x w`` frame with ``-1`` at the code slots.

    Decoding uses it to force every structural token (BOI, grid sizes, row separators,
    EOI) and to sample only image codes in the ``-1`` slots (SPEC §6).
    """
    rows = np.full((h, w + 1), -1, dtype=np.int64)
    rows[:, w] = vocab.row_sep
    head = [vocab.boi, vocab.grid_id(h), vocab.grid_id(w)]
    return np.concatenate([np.array(head, dtype=np.int64), rows.reshape(-1), np.array([vocab.eoi])])


def frame_ids(vocab: Vocab, codes: np.ndarray) -> np.ndarray:
    """Serialize one ``(h, w)`` grid of image codes (values in ``[0, vocab.image_codes)``)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"frame codes must be a 2-D (h, w) grid, got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= vocab.image_codes):
        raise ValueError(
            f"image codes must lie in [0, {vocab.image_codes}), got [{codes.min()}, {codes.max()}]"
        )
    h, w = codes.shape
    ids = frame_template(vocab, h, w)
    ids[ids == -1] = vocab.image_ids(codes.astype(np.int64).reshape(-1))
    return ids


def frame_codes(vocab: Vocab, ids: np.ndarray, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`frame_ids`: a serialized frame back to its ``(h, w)`` code grid."""
    ids = np.asarray(ids, dtype=np.int64)
    template = frame_template(vocab, h, w)
    if ids.shape != template.shape:
        raise ValueError(f"expected {template.size} frame tokens for a {h}x{w} grid, got {ids.shape}")
    fixed = template != -1
    if not np.array_equal(ids[fixed], template[fixed]):
        raise ValueError("frame tokens do not follow the BOI/grid/ROW_SEP/EOI layout")
    codes = ids[~fixed]
    if not vocab.is_image_code(codes).all():
        raise ValueError("frame holds a non-image token in a code slot")
    return vocab.image_codes_of(codes).reshape(h, w)


# ---------------------------------------------------------------------------- actions
def action_length(action_dim: int) -> int:
    return action_dim + 2


def action_ids(vocab: Vocab, bins: np.ndarray) -> np.ndarray:
    """Serialize one action (``(D,)`` bins) or a chunk (``(K, D)``) as ``BOA, bins, EOA`` blocks."""
    bins = np.asarray(bins, dtype=np.int64)
    chunk = bins.reshape(-1, bins.shape[-1])  # (K, D)
    if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab.action_bins):
        raise ValueError(
            f"action bins must lie in [0, {vocab.action_bins}), got [{chunk.min()}, {chunk.max()}]"
        )
    k = chunk.shape[0]
    out = np.empty((k, chunk.shape[1] + 2), dtype=np.int64)
    out[:, 0] = vocab.boa
    out[:, 1:-1] = vocab.action_ids(chunk)
    out[:, -1] = vocab.eoa
    return out.reshape(-1)


def action_span_ids(vocab: Vocab, bins: np.ndarray) -> np.ndarray:
    """``k`` consecutive actions (``(k, D)`` or ``(D,)`` bins) as *one* block ``BOA, k·D bins, EOA``.

    The action block of a world-model sample (:func:`world_prompt_ids`). For one action it is
    :func:`action_ids`; for several it stays one block, so that the SPEC §3 mask treats the
    span alike in training and in decoding (a block is hidden only from *other* blocks).
    """
    bins = np.asarray(bins, dtype=np.int64)
    flat = bins.reshape(1, -1)  # (1, k·D)
    return action_ids(vocab, flat)


def action_bins_from_ids(vocab: Vocab, ids: np.ndarray, action_dim: int) -> np.ndarray:
    """Inverse of :func:`action_ids`: ``K*(D+2)`` ids -> ``(K, D)`` bins."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1, action_dim + 2)
    if not ((ids[:, 0] == vocab.boa).all() and (ids[:, -1] == vocab.eoa).all()):
        raise ValueError("action tokens are not framed by BOA ... EOA")
    inner = ids[:, 1:-1]
    if not vocab.is_action_bin(inner).all():
        raise ValueError("action block holds a non-bin token")
    return vocab.action_bins_of(inner)


# ---------------------------------------------------------------------------- states
def state_length(state_dim: int) -> int:
    """Tokens of one state block (0 for a layout without state)."""
    return state_dim + 2 if state_dim else 0


def state_ids(vocab: Vocab, bins: np.ndarray) -> np.ndarray:
    """Serialize one ``(S,)`` state's bins as ``BOS_STATE, bins, EOS_STATE``."""
    bins = np.asarray(bins, dtype=np.int64)
    if bins.ndim != 1 or bins.size == 0:
        raise ValueError(f"state bins must be a non-empty (S,) vector, got shape {bins.shape}")
    if not vocab.has_state:
        raise ValueError(f"vocab {vocab.name!r} has no state tokens (build it with state_bins > 0)")
    if bins.min() < 0 or bins.max() >= vocab.state_bins:
        raise ValueError(f"state bins must lie in [0, {vocab.state_bins}), got [{bins.min()}, {bins.max()}]")
    return np.concatenate([[vocab.bos_state], vocab.state_ids(bins), [vocab.eos_state]]).astype(np.int64)


def state_bins_from_ids(vocab: Vocab, ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`state_ids`: ``S + 2`` ids -> ``(S,)`` bins."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) < 3 or ids[0] != vocab.bos_state or ids[-1] != vocab.eos_state:
        raise ValueError("state tokens are not framed by BOS_STATE ... EOS_STATE")
    inner = ids[1:-1]
    if not vocab.is_state_bin(inner).all():
        raise ValueError("state block holds a non-bin token")
    return vocab.state_bins_of(inner)


# ---------------------------------------------------------------------------- samples
def _text(vocab: Vocab, text_tokenizer: TextTokenizer, text: str) -> np.ndarray:
    return vocab.text_ids(np.asarray(text_tokenizer.encode(text), dtype=np.int64))


def action_prompt_ids(
    vocab: Vocab,
    text_tokenizer: TextTokenizer,
    instruction: str,
    frames: Sequence[np.ndarray],
    prompts: PromptConfig = PromptConfig(),
    state_bins: np.ndarray | None = None,
) -> np.ndarray:
    """Context of an action-model sample: ``BOS, prompt, IMG(t-M+1) ... IMG(t), [STATE(t),] SEP``.

    ``state_bins``: the ``(S,)`` bins of the state at ``t`` (None: no state block).
    This is exactly the prompt the policy feeds at inference, so training and evaluation
    prompts cannot drift apart (a weak point of the reference, SPEC §9).
    """
    if not frames:
        raise ValueError("an action-model prompt needs at least one frame")
    parts = [np.array([vocab.bos], dtype=np.int64)]
    parts.append(_text(vocab, text_tokenizer, prompts.action_prompt.format(instruction=instruction)))
    parts += [frame_ids(vocab, f) for f in frames]
    if state_bins is not None:
        parts.append(state_ids(vocab, state_bins))
    parts.append(np.array([vocab.sep], dtype=np.int64))
    return np.concatenate(parts)


def world_prompt_ids(
    vocab: Vocab,
    text_tokenizer: TextTokenizer,
    frame: np.ndarray,
    action_bins: np.ndarray,
    prompts: PromptConfig = PromptConfig(),
    null_actions: bool = False,
) -> np.ndarray:
    """Context of a world-model sample: ``BOS, world prompt, IMG(t), ACT(t..t+k-1), SEP``.

    ``action_bins`` is one action ``(D,)`` (the paper's layout, k = 1) or ``(k, D)`` for the
    frame ``k`` control steps later (``DataLayout.world_horizon``), in one block.
    ``null_actions``: the block holds null-action ids instead of the bins (same length): the
    prompt of the same prediction with the actions not given.
    """
    actions = action_span_ids(vocab, action_bins)
    if null_actions:  # same block, every bin hidden behind the null-action id
        if not vocab.has_null_action:
            raise ValueError(f"vocab {vocab.name!r} has no null-action id (build it with null_action=True)")
        actions[1:-1] = vocab.null_action
    return np.concatenate(
        [
            np.array([vocab.bos], dtype=np.int64),
            _text(vocab, text_tokenizer, prompts.world_prompt),
            frame_ids(vocab, frame),
            actions,
            np.array([vocab.sep], dtype=np.int64),
        ]
    )


def _join(context: np.ndarray, target: np.ndarray) -> Sample:
    """``context`` then ``target``, weighted 0 and 1."""
    ids = np.concatenate([context, target])
    weights = np.concatenate([np.zeros(len(context), np.float32), np.ones(len(target), np.float32)])
    return Sample(ids=ids, weights=weights)


def build_action_sample(
    vocab: Vocab,
    text_tokenizer: TextTokenizer,
    instruction: str,
    frames: Sequence[np.ndarray],
    chunk_bins: np.ndarray,
    prompts: PromptConfig = PromptConfig(),
    state_bins: np.ndarray | None = None,
) -> Sample:
    """Action-model sample (SPEC §2): history ``frames`` (oldest first) [+ the ``(S,)`` state
    bins at the last frame] -> ``(K, D)`` chunk."""
    chunk_bins = np.asarray(chunk_bins)
    if chunk_bins.ndim != 2:
        raise ValueError(f"chunk_bins must be (K, D), got shape {chunk_bins.shape}")
    context = action_prompt_ids(vocab, text_tokenizer, instruction, frames, prompts, state_bins)
    target = np.concatenate([action_ids(vocab, chunk_bins), np.array([vocab.sep], dtype=np.int64)])
    return _join(context, target)


def build_world_sample(
    vocab: Vocab,
    text_tokenizer: TextTokenizer,
    frame: np.ndarray,
    action_bins: np.ndarray,
    next_frame: np.ndarray,
    prompts: PromptConfig = PromptConfig(),
    changed_weight: float = 1.0,
    null_actions: bool = False,
) -> Sample:
    """World-model sample (SPEC §2): ``IMG(t), ACT(t) -> IMG(t+1)``; with ``(k, D)`` action
    bins, ``IMG(t), ACT(t..t+k-1) -> IMG(t+k)`` (``next_frame`` is then frame t+k).

    ``changed_weight`` multiplies the weight of the target codes that differ from the code at
    the same position of ``frame`` (where the picture changed: the arm and what it moves), so
    that the loss is not dominated by copying the static scene (1.0: the paper's loss).
    ``null_actions``: the actions are not given (:func:`world_prompt_ids`).
    """
    context = world_prompt_ids(vocab, text_tokenizer, frame, action_bins, prompts, null_actions)
    target = np.concatenate([frame_ids(vocab, next_frame), np.array([vocab.sep], dtype=np.int64)])
    sample = _join(context, target)
    if changed_weight != 1.0:
        changed = np.asarray(next_frame).reshape(-1) != np.asarray(frame).reshape(-1)  # (h*w,)
        codes_at = len(context) + np.flatnonzero(vocab.is_image_code(target))  # (h*w,) in grid order
        sample.weights[codes_at[changed]] *= changed_weight
    return sample
