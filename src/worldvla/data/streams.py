"""The training data of a run, assembled from a token cache (SPEC §2, §5).

:func:`build_streams` turns an opened token cache and a :class:`StreamConfig` into what
training reads: the vocabulary, the text tokenizer, the action (and state) bounds the bins
are cut from, the data layout, the mixed sample stream over the training episodes and a
fixed validation stream over the held-out ones. The sample sets and the mixture themselves are
:mod:`worldvla.data.datasets`; this module only decides which episodes feed which set:

- **Split per kind.** Demonstrations and exploratory segments are held out separately
  (each with :func:`~worldvla.data.datasets.split_episodes` and ``split_seed``), so the
  held-out demonstrations do not depend on how much exploration the data has.
- **Roles.** Only demonstrations give action-model samples; world-model samples come from
  every episode (``world_data="all"``), from the demonstrations only (``"demos"``) or from
  the exploratory segments only (``"explore"``), and read the executed actions where the
  cache records them.
- **Null actions.** ``world_action_dropout`` gives that share of the training stream's
  world-model positions with their actions not given (null-action ids,
  :class:`~worldvla.data.datasets.MixedStream`), so that the model can be guided towards
  its actions when it imagines; the validation stream always gives them.
- **Scarce data.** ``demos_per_task`` keeps the first n training demonstrations of every
  task (in file order) and drops the rest from both roles; the held-out episodes and the
  exploratory segments are not touched, so every budget is validated on the same episodes.
- **Seeds.** The training stream is ordered by ``seed``, the validation stream by seed 0,
  so validation sees the same samples at every step of every run.

The caller (:mod:`worldvla.train.data`) fills :class:`StreamConfig` from its training
config and checks the sample length against the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worldvla.data.datasets import (
    ActionSamples,
    CacheLike,
    DataLayout,
    MixedStream,
    WorldSamples,
    encode_actions,
    episode_field,
    episode_kind,
    split_episodes,
)
from worldvla.errors import ConfigError, DataError
from worldvla.sequence import PromptConfig
from worldvla.tokenizers.action import ActionStats, ActionTokenizer
from worldvla.tokenizers.state import StateTokenizer, state_stats_from_episodes
from worldvla.tokenizers.text import TextTokenizer, load_text_tokenizer
from worldvla.vocab import Vocab, VocabConfig


@dataclass(frozen=True)
class StreamConfig:
    """The settings the training data depends on: sample layout, bins, mixture, split, seeds."""

    text_tokenizer: str  # "bytes" or a tokenizers JSON path
    history: int  # M frames of the action-model prompt
    chunk_len: int  # K actions per action-model sample
    chunk_mask: bool  # SPEC §3 attention mask over action chunks (recorded in the layout)
    prompts: PromptConfig
    action_bins: int
    state_bins: int  # bins per state dimension; 0 = no state in the action-model prompt
    world_fraction: float  # share of world-model samples in the stream (0: none, 1: only them)
    world_data: str  # "all" or "demos": the episodes world-model samples come from
    world_changed_weight: float  # multiplier on world-model target codes that change
    world_horizon: int  # world-model samples span k = 1..world_horizon steps (recorded in the layout)
    world_one_step_share: float  # share of one-step samples among them (0: every (t, k) once)
    val_fraction: float  # share of each episode kind held out
    split_seed: int  # the held-out episodes depend only on this seed
    seed: int  # order of the training stream
    demos_per_task: int = 0  # train on the first n training demonstrations per task (0: all)
    # Share of training world-model samples with their actions not given (the vocabulary then
    # has the null-action id); the validation stream always gives them.
    world_action_dropout: float = 0.0


@dataclass
class SampleStreams:
    """Everything built from the token cache that training reads."""

    vocab: Vocab
    layout: DataLayout
    text_tokenizer: TextTokenizer
    action_stats: ActionStats
    state_stats: ActionStats | None  # bounds of the states in the prompt (state_bins > 0), else None
    train: MixedStream
    val: MixedStream | None  # None: no held-out episodes, or too short for a sample of each kind
    val_episodes: list[str]  # keys of the held-out demonstrations
    max_len: int  # tokens of the longest sample


def cache_meta(cache: CacheLike) -> dict[str, Any]:
    """The cache's metadata as a dict (a mapping, an object's attributes, or empty)."""
    meta = getattr(cache, "meta", None)
    return dict(meta) if isinstance(meta, dict) else dict(getattr(meta, "__dict__", {}) or {})


def cache_vocab(
    cache: CacheLike,
    text_tokenizer: TextTokenizer,
    action_bins: int = 256,
    state_bins: int = 0,
    null_action: bool = False,
) -> Vocab:
    """The cache's own vocabulary if it has one, else the compact layout for its codebook
    (with ``state_bins`` state tokens; 0 = none, the layout of every run without state; and
    the null-action id if ``null_action``)."""
    vocab = getattr(cache, "vocab", None)
    if isinstance(vocab, Vocab):
        if vocab.action_bins != action_bins:
            raise ConfigError(
                f"the token cache's vocabulary has {vocab.action_bins} action bins, the config asks for "
                f"{action_bins}"
            )
        if vocab.state_bins != state_bins:
            raise ConfigError(
                f"the token cache's vocabulary has {vocab.state_bins} state bins, the config asks for "
                f"{state_bins} (use_state / state_bins)"
            )
        if null_action and not vocab.has_null_action:
            raise ConfigError(
                "world_action_dropout > 0 needs a null-action id, and the token cache's own vocabulary "
                "has none"
            )
        return vocab
    meta = cache_meta(cache)
    codebook = getattr(cache, "codebook_size", None) or meta.get("codebook_size")
    if not codebook:
        raise DataError("the token cache records neither a vocabulary nor the image codebook size")
    return Vocab.build(
        VocabConfig(
            text_size=text_tokenizer.size,
            image_codes=int(codebook),
            action_bins=action_bins,
            state_bins=state_bins,
            null_action=null_action,
        )
    )


def cache_action_stats(cache: CacheLike) -> ActionStats:
    """The action bounds the cache records, else those of its actions."""
    stats = getattr(cache, "action_stats", None)
    if isinstance(stats, ActionStats):
        return stats
    path = getattr(cache, "stats_path", None)
    if path is not None:
        return ActionStats.load(path)
    return ActionStats.from_actions(cache.actions)


def cache_states(cache: CacheLike) -> tuple[np.ndarray, ActionStats]:
    """The cache's ``(N_frames, S)`` states and their bounds; DataError when it has none."""
    states = getattr(cache, "states", None)
    if states is None:
        where = getattr(cache, "path", None) or "the token cache"
        raise DataError(
            f"{where}: use_state=true needs proprioceptive states, but the token cache has none (its "
            "episode file records no obs/state in some or all episodes, or the cache was built before "
            "states were cached: rebuild it with 'worldvla tokenize --overwrite'); or set use_state=false"
        )
    states = np.asarray(states, dtype=np.float32)
    if states.ndim != 2 or len(states) != len(cache.actions) or states.shape[1] < 1:
        raise DataError(f"token cache states must be (N_frames={len(cache.actions)}, S), got {states.shape}")
    stats = getattr(cache, "state_stats", None)
    if not isinstance(stats, ActionStats):
        # Like the cache's action bounds: over the demonstrations, whose states the policy reads.
        demos = []
        for e in cache.episodes:
            if episode_kind(e) == "demo":
                start, length = int(episode_field(e, "start")), int(episode_field(e, "length"))
                demos.append((str(episode_field(e, "key")), states[start : start + length]))
        stats = state_stats_from_episodes(demos)
    if stats.dim != states.shape[1]:
        raise DataError(f"state statistics have {stats.dim} dimensions, the cache's states {states.shape[1]}")
    return states, stats


def split_by_kind(is_demo: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` episode indices, demonstrations and exploratory segments split apart.

    Each kind is split by :func:`split_episodes` on its own, so adding exploration leaves
    the held-out demonstrations as they were. Demonstrations come first in both arrays.
    """
    train, val = [], []
    for ids in (np.flatnonzero(is_demo), np.flatnonzero(~is_demo)):
        if len(ids):
            tr, va = split_episodes(len(ids), val_fraction, seed)
            train.append(ids[tr])
            val.append(ids[va])
    return np.concatenate(train), np.concatenate(val)


def first_demos_per_task(episodes: list[Any], ids: np.ndarray, is_demo: np.ndarray, n: int) -> np.ndarray:
    """``ids`` with only the first ``n`` demonstrations of every task (in the order of ``ids``);
    the other episodes are kept. ConfigError naming the task when one has fewer than ``n``."""
    counts: dict[str, int] = {}
    keep = []
    for i in ids:
        if not is_demo[i]:
            keep.append(i)
            continue
        ep = episodes[int(i)]
        task = str((ep.get("task") if isinstance(ep, dict) else getattr(ep, "task", "")) or "")
        counts[task] = counts.get(task, 0) + 1
        if counts[task] <= n:
            keep.append(i)
    short = {t: c for t, c in counts.items() if c < n}
    if short:
        listed = ", ".join(f"{t or '(no task)'}: {c}" for t, c in sorted(short.items()))
        raise ConfigError(
            f"train_demos_per_task={n}, but some tasks have fewer training demonstrations ({listed})"
        )
    return np.asarray(keep, dtype=ids.dtype)


def build_streams(cache: CacheLike, cfg: StreamConfig) -> SampleStreams:
    """Vocabulary, layout, tokenized actions and the training / validation streams of ``cache``.

    Deterministic in ``cache`` and ``cfg``: a resumed run rebuilds the same streams, so a
    stream position stands for the same sample.
    """
    text_tokenizer = load_text_tokenizer(cfg.text_tokenizer)
    states, state_stats = cache_states(cache) if cfg.state_bins else (None, None)
    vocab = cache_vocab(cache, text_tokenizer, cfg.action_bins, cfg.state_bins, cfg.world_action_dropout > 0)
    if text_tokenizer.size > vocab.text_size:
        raise ConfigError(
            f"text tokenizer {cfg.text_tokenizer!r} has {text_tokenizer.size} ids, the vocabulary "
            f"only {vocab.text_size}"
        )
    stats = cache_action_stats(cache)
    action_dim = int(cache.actions.shape[1])
    if stats.dim != action_dim:
        raise DataError(f"action statistics have {stats.dim} dimensions, the cache's actions {action_dim}")
    meta = cache_meta(cache)
    layout = DataLayout(
        action_dim=action_dim,
        grid=(int(cache.codes.shape[1]), int(cache.codes.shape[2])),
        history=cfg.history,
        chunk_len=cfg.chunk_len,
        chunk_mask=cfg.chunk_mask,
        prompts=cfg.prompts,
        text_tokenizer=cfg.text_tokenizer,
        camera=meta.get("camera"),
        image_size=meta.get("image_size"),
        view=meta.get("view"),
        state_dim=0 if states is None else int(states.shape[1]),
        world_horizon=cfg.world_horizon,
    )
    action_tokenizer = ActionTokenizer(stats, n_bins=vocab.action_bins)
    state_bins = None
    if states is not None:
        state_bins = encode_actions(states, StateTokenizer(state_stats, n_bins=vocab.state_bins))
    bins = encode_actions(cache.actions, action_tokenizer)
    executed = getattr(cache, "world_actions", None)
    world_bins = bins if executed is None else encode_actions(executed, action_tokenizer)
    f = cfg.world_fraction
    is_demo = np.array([episode_kind(e) == "demo" for e in cache.episodes])
    train_eps, val_eps = split_by_kind(is_demo, cfg.val_fraction, cfg.split_seed)
    if cfg.demos_per_task:
        train_eps = first_demos_per_task(cache.episodes, train_eps, is_demo, cfg.demos_per_task)

    def stream(episodes: np.ndarray, seed: int, null_share: float = 0.0) -> MixedStream:
        # Only demonstrations teach the policy; exploratory segments feed the world model
        # unless the config keeps it on demonstrations too.
        demos = episodes[is_demo[episodes]]
        world_eps = {"all": episodes, "demos": demos, "explore": episodes[~is_demo[episodes]]}[cfg.world_data]
        if f > 0 and not len(world_eps):
            raise ConfigError(
                f"world_data={cfg.world_data!r}: the cache has no such episodes for world-model samples "
                "(exploratory segments come from collecting with exploration)"
            )
        common = (layout, vocab, text_tokenizer)
        action = None
        if f < 1:
            action = ActionSamples(cache, demos, *common, bins, state_bins=state_bins)
        world = None
        if f > 0:
            world = WorldSamples(
                cache,
                world_eps,
                *common,
                world_bins,
                changed_weight=cfg.world_changed_weight,
                one_step_share=cfg.world_one_step_share,
            )
        return MixedStream(action, world, f, seed, world_null_share=null_share)

    train_stream = stream(train_eps, cfg.seed, cfg.world_action_dropout)
    val_stream = None
    if len(val_eps):
        try:
            val_stream = stream(val_eps, seed=0)
        except DataError:
            val_stream = None  # held-out episodes too short for a sample of each kind
    return SampleStreams(
        vocab=vocab,
        layout=layout,
        text_tokenizer=text_tokenizer,
        action_stats=stats,
        state_stats=state_stats,
        train=train_stream,
        val=val_stream,
        # Held-out demonstrations only: evaluations start rollouts from them.
        val_episodes=[str(episode_field(cache.episodes[int(e)], "key")) for e in val_eps if is_demo[e]],
        max_len=max_sample_length(cache, layout, text_tokenizer, f),
    )


def max_sample_length(
    cache: CacheLike, layout: DataLayout, text_tokenizer: TextTokenizer, world_fraction: float
) -> int:
    """Tokens of the longest sample the streams can give (the longest instruction's prompt)."""
    prompt_len = max(
        len(
            text_tokenizer.encode(
                layout.prompts.action_prompt.format(instruction=str(episode_field(e, "instruction")))
            )
        )
        for e in cache.episodes
    )
    world_len = len(text_tokenizer.encode(layout.prompts.world_prompt))
    return max(
        layout.action_sample_length(prompt_len) if world_fraction < 1 else 0,
        layout.world_sample_length(world_len) if world_fraction > 0 else 0,
    )
