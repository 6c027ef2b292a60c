"""Action-model and world-model samples over a token cache, mixed into one stream (SPEC §2, §5).

Both roles of WorldVLA train on one stream of samples built on the fly from the
pre-tokenized cache (image codes + continuous actions):

- **Action-model sample** at step ``t`` of an episode: the instruction, frames
  ``t-M+1 … t`` (with ``use_state``, the proprioceptive state observed at ``t``) and the
  chunk of actions ``t … t+K-1``. History frames are consecutive
  control steps. *At the episode start* the missing history is filled by repeating the
  first frame (the policy does the same when it starts an episode, so training and
  inference prompts agree); dropping those steps instead would never teach the first
  action of an episode. Steps with fewer than ``K`` future actions in the episode are
  dropped (SPEC §2), so the last ``K-1`` steps of every episode start no sample.
- **World-model sample** at step ``t``: ``IMG(t), ACT(t) -> IMG(t+1)`` for ``t`` in
  ``0 … T-2`` (history 1), with the action really executed at ``t`` where the cache
  records it apart from the clean label (``world_actions``: demonstrations collected with
  injected noise).

**Episode kinds.** Demonstrations (``kind="demo"``) feed both roles; exploratory segments
(``kind="explore"``, :mod:`worldvla.data.exploration`) only world-model samples — their
actions teach the world model what actions do, never the policy what to do.

**Mixture.** The stream interleaves the two kinds deterministically: sample ``p`` of the
stream is a world-model sample iff ``floor((p+1)·f) > floor(p·f)`` for the world fraction
``f`` (0.5 alternates A, W, A, W, …, the reference's ≈1:1). Each kind is read through its
own sequence of epochs, each epoch a permutation drawn from ``(seed, kind, epoch)``. So
the whole order is a pure function of the stream position ``p``: a checkpoint stores one
integer and resumption reproduces the order exactly; data-parallel ranks read disjoint
slices of the same global positions, so N processes see the same samples as one. The
interleaving also gives every batch the same mixture, which keeps the loss curve smooth.

**Batching: padding, not packing.** Samples are right-padded with PAD to the longest in the
batch (rounded up to a multiple of 8). The attention mask (:func:`worldvla.model.masks.
attention_mask`) hides PAD keys, PAD positions carry loss weight 0, and positions start at
0 in every row, exactly as at inference. Both sample kinds have nearly the same length (a
frame dominates either), so padding wastes little — measured in
``benchmarks/bench_train.py`` — whereas packing would need per-sample block-diagonal masks
and position resets that the mask contract (a function of the ids alone) does not express.

**Validation** holds out whole episodes, chosen by :func:`split_episodes` from
``split_seed`` alone, so changing the training seed does not move the split.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from worldvla.errors import DataError
from worldvla.sequence import (
    PromptConfig,
    Sample,
    action_length,
    build_action_sample,
    build_world_sample,
    frame_length,
    state_length,
)
from worldvla.tokenizers.text import TextTokenizer
from worldvla.vocab import Vocab

ACTION, WORLD = 0, 1  # sample kinds
NULL_DRAWS = 2  # stream of the random draws that give a world-model position null actions
PAD_MULTIPLE = 8


# ---------------------------------------------------------------------------- cache view
class CacheLike(Protocol):
    """What the datasets need from a token cache (see :mod:`worldvla.data.token_cache`)."""

    codes: np.ndarray  # uint16 (N_frames, h, w)
    actions: np.ndarray  # float32 (N_frames, D)
    episodes: Sequence[Any]  # each with key, start, length, instruction (attributes or dict keys)


def episode_field(ep: Any, name: str) -> Any:
    """Read one field of an episode record that is either an object or a mapping."""
    return ep[name] if isinstance(ep, dict) else getattr(ep, name)


@dataclass(frozen=True)
class EpisodeRecord:
    key: str
    start: int
    length: int
    instruction: str
    task: str = ""
    variation: int = 0
    kind: str = "demo"  # "demo" or "explore" (worldvla.data.exploration)


def episode_kind(ep: Any) -> str:
    """An episode record's kind; records written before kinds existed are demonstrations."""
    if isinstance(ep, dict):
        return str(ep.get("kind", "demo"))
    return str(getattr(ep, "kind", "demo"))


@dataclass
class InMemoryCache:
    """A token cache held in arrays: the same view as the on-disk cache, for tests and tools."""

    codes: np.ndarray  # uint16 (N_frames, h, w)
    actions: np.ndarray  # float32 (N_frames, D)
    episodes: list[EpisodeRecord]
    codebook_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    stats_path: Any = None
    world_actions: np.ndarray | None = None  # float32 (N_frames, D): executed actions, if they differ
    states: np.ndarray | None = None  # float32 (N_frames, S): proprioceptive states, if recorded

    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.codes.shape[1]), int(self.codes.shape[2]))

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @classmethod
    def synthetic(
        cls,
        n_episodes: int = 6,
        length: int = 12,
        grid: tuple[int, int] = (4, 4),
        action_dim: int = 4,
        codebook_size: int = 64,
        seed: int = 0,
        state_dim: int = 0,
    ) -> InMemoryCache:
        """Random but learnable episodes: codes drift with the action, actions follow a sine.

        ``state_dim > 0`` adds states that tell the actions apart: the first ``min(S, D)``
        state dimensions are the next action's phase (its sine's cosine), the rest noise.
        """
        rng = np.random.default_rng(seed)
        state_rng = np.random.default_rng([seed, 1])  # apart: codes and actions do not depend on S
        codes, actions, episodes, states = [], [], [], []
        start = 0
        for e in range(n_episodes):
            t = np.arange(length)[:, None]
            phase = rng.uniform(0, 2 * np.pi, size=(1, action_dim))
            act = np.sin(0.5 * t + phase).astype(np.float32)  # (T, D)
            if state_dim:
                st = state_rng.normal(size=(length, state_dim)).astype(np.float32)  # (T, S)
                k = min(state_dim, action_dim)
                st[:, :k] = np.cos(0.5 * t + phase)[:, :k]
                states.append(st)
            base = rng.integers(0, codebook_size, size=grid)
            frames = (base[None] + np.cumsum(np.ones(length, dtype=np.int64))[:, None, None]) % codebook_size
            codes.append(frames.astype(np.uint16))  # (T, h, w)
            actions.append(act)
            episodes.append(
                EpisodeRecord(
                    key=f"demo_{e}",
                    start=start,
                    length=length,
                    instruction=f"task {e % 3}",
                    task=f"task-{e % 3}",
                )
            )
            start += length
        return cls(
            codes=np.concatenate(codes),
            actions=np.concatenate(actions),
            episodes=episodes,
            codebook_size=codebook_size,
            states=np.concatenate(states) if state_dim else None,
        )


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class DataLayout:
    """How samples are laid out; saved with every checkpoint so inference builds the same prompts."""

    action_dim: int
    grid: tuple[int, int]
    history: int
    chunk_len: int
    chunk_mask: bool = True
    prompts: PromptConfig = PromptConfig()
    text_tokenizer: str = "bytes"
    camera: str | None = None
    image_size: int | None = None
    # How the training frames were rendered beyond camera and size (Meta-World suites:
    # camera_aim, camera_zoom), so that evaluation can refuse an env that renders otherwise;
    # None when the data did not record it.
    view: dict[str, Any] | None = None
    # Dimensions of the proprioceptive state in the action-model prompt (training config
    # ``use_state``); 0 = no state block, as in every layout saved before the option existed.
    state_dim: int = 0
    # Longest span of a world-model sample: IMG(t), ACT(t..t+k-1) -> IMG(t+k) for k = 1..H
    # (training config ``world_horizon``); 1 = the paper's IMG(t), ACT(t) -> IMG(t+1).
    world_horizon: int = 1
    # Episode start, fewer than ``history`` frames seen: True = repeat the first frame to
    # fill M (these datasets, every layout saved before the option existed); False = the
    # prompt holds only the frames seen so far (the released WorldVLA checkpoints: their
    # data and evaluation take ``max(0, t - M + 1) .. t``). Read by the policy.
    pad_history: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataLayout:
        d = dict(d)
        d["grid"] = tuple(d["grid"])
        d["prompts"] = PromptConfig(**d.get("prompts", {}))
        return cls(**d)

    def action_sample_length(self, prompt_tokens: int) -> int:
        """Tokens of an action-model sample whose instruction prompt has ``prompt_tokens`` text tokens."""
        return (
            1
            + prompt_tokens
            + self.history * frame_length(*self.grid)
            + state_length(self.state_dim)
            + 1
            + self.chunk_len * action_length(self.action_dim)
            + 1
        )

    def world_sample_length(self, prompt_tokens: int) -> int:
        """Tokens of the longest world-model sample (its action block spans ``world_horizon`` steps)."""
        span = action_length(self.world_horizon * self.action_dim)
        return 1 + prompt_tokens + 2 * frame_length(*self.grid) + span + 2


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and held-out episodes (sorted), a function of ``seed`` only.

    ``round(n · val_fraction)`` episodes are held out — at least one when the fraction is
    positive and there are two or more episodes, and never all of them.
    """
    if n_episodes < 1:
        raise DataError("the token cache holds no episodes")
    n_val = round(n_episodes * val_fraction)
    if val_fraction > 0 and n_episodes >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_episodes - 1)
    perm = np.random.default_rng([seed, 7]).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# ---------------------------------------------------------------------------- datasets
class _SampleSet(ABC):
    def __init__(
        self,
        cache: CacheLike,
        episode_ids: Sequence[int],
        layout: DataLayout,
        vocab: Vocab,
        text_tokenizer: TextTokenizer,
        bins: np.ndarray,
    ) -> None:
        self.cache = cache
        self.layout = layout
        self.vocab = vocab
        self.text_tokenizer = text_tokenizer
        self.bins = bins  # (N_frames, D) action bins of the whole cache, encoded once
        self.instructions: list[str] = []
        frames, eps = [], []
        for j, e in enumerate(episode_ids):
            ep = cache.episodes[int(e)]
            self.instructions.append(str(episode_field(ep, "instruction")))
            start, length = int(episode_field(ep, "start")), int(episode_field(ep, "length"))
            steps = np.arange(self._n_steps(length))
            frames.append(start + steps)
            eps.append(np.full(len(steps), j))
        # Global frame index of step t and the local episode number of every sample.
        self.frame = np.concatenate(frames).astype(np.int64) if frames else np.zeros(0, np.int64)
        self.episode = np.concatenate(eps).astype(np.int64) if eps else np.zeros(0, np.int64)
        self.episode_start = np.array(
            [int(episode_field(cache.episodes[int(e)], "start")) for e in episode_ids], dtype=np.int64
        )
        self._lengths = np.array(
            [int(episode_field(cache.episodes[int(e)], "length")) for e in episode_ids], dtype=np.int64
        )

    @abstractmethod
    def _n_steps(self, length: int) -> int:
        """How many samples an episode of ``length`` steps yields."""

    def __len__(self) -> int:
        return len(self.frame)

    def _codes(self, g: int) -> np.ndarray:
        return np.asarray(self.cache.codes[g], dtype=np.int64)


class ActionSamples(_SampleSet):
    """Action-model samples: instruction + M frames [+ state] -> K actions (first frame repeated
    at the start).

    ``state_bins``: ``(N_frames, S)`` state bins of the whole cache, required when the layout
    has a state block (``layout.state_dim > 0``); the sample at step ``t`` reads row ``t``.
    """

    def __init__(
        self,
        cache: CacheLike,
        episode_ids: Sequence[int],
        layout: DataLayout,
        vocab: Vocab,
        text_tokenizer: TextTokenizer,
        bins: np.ndarray,
        state_bins: np.ndarray | None = None,
    ) -> None:
        super().__init__(cache, episode_ids, layout, vocab, text_tokenizer, bins)
        if self.layout.state_dim:
            if state_bins is None:
                raise DataError(
                    f"the layout has a {self.layout.state_dim}-dim state, but no states were given"
                )
            if state_bins.shape != (len(self.cache.actions), self.layout.state_dim):
                raise DataError(
                    f"state bins must be (N_frames, {self.layout.state_dim}) = "
                    f"({len(self.cache.actions)}, {self.layout.state_dim}), got {state_bins.shape}"
                )
        self.state_bins = state_bins if self.layout.state_dim else None

    def _n_steps(self, length: int) -> int:
        return max(length - self.layout.chunk_len + 1, 0)

    def __getitem__(self, i: int) -> Sample:
        g = int(self.frame[i])
        first = int(self.episode_start[self.episode[i]])
        m, k = self.layout.history, self.layout.chunk_len
        hist = [self._codes(max(first, g - j)) for j in range(m - 1, -1, -1)]  # oldest first
        return build_action_sample(
            self.vocab,
            self.text_tokenizer,
            self.instructions[self.episode[i]],
            hist,
            self.bins[g : g + k],
            self.layout.prompts,
            state_bins=None if self.state_bins is None else self.state_bins[g],
        )


class WorldSamples(_SampleSet):
    """World-model samples: IMG(t), ACT(t) -> IMG(t+1); with ``layout.world_horizon`` H > 1,
    IMG(t), ACT(t..t+k-1) -> IMG(t+k) for every k = 1..H that fits the episode, one sample
    per (t, k) (``changed_weight``: see :func:`worldvla.sequence.build_world_sample`)."""

    def __init__(
        self, *args: Any, changed_weight: float = 1.0, one_step_share: float = 0.0, **kwargs: Any
    ) -> None:
        """``one_step_share`` > 0 repeats the one-step samples so that they make about that share
        of the set (0: every (t, k) once; with H = 5 the one-step samples are then ~22%)."""
        super().__init__(*args, **kwargs)
        self.changed_weight = changed_weight
        horizon = self.layout.world_horizon
        self.span = np.ones(len(self.frame), np.int64)  # k of every sample
        if horizon > 1:
            ends = self.episode_start[self.episode] + self._lengths[self.episode] - 1  # last frame
            frames, eps, spans = [], [], []
            for k in range(2, horizon + 1):
                ok = self.frame + k <= ends  # (t, k) fits: frame t + k exists
                frames.append(self.frame[ok])
                eps.append(self.episode[ok])
                spans.append(np.full(int(ok.sum()), k, np.int64))
            longer = sum(len(f) for f in frames)
            repeat = 1
            if one_step_share > 0 and len(self.frame):
                repeat = max(1, round(one_step_share * longer / ((1 - one_step_share) * len(self.frame))))
            self.frame = np.concatenate([np.tile(self.frame, repeat), *frames])
            self.episode = np.concatenate([np.tile(self.episode, repeat), *eps])
            self.span = np.concatenate([np.tile(self.span, repeat), *spans])

    def _n_steps(self, length: int) -> int:
        return max(length - 1, 0)

    def __getitem__(self, i: int) -> Sample:
        return self.get(i)

    def get(self, i: int, null_actions: bool = False) -> Sample:
        """Sample ``i``; with ``null_actions``, the same prediction with its actions not given
        (null-action ids in the action block: :func:`worldvla.sequence.world_prompt_ids`)."""
        g, k = int(self.frame[i]), int(self.span[i])
        return build_world_sample(
            self.vocab,
            self.text_tokenizer,
            self._codes(g),
            self.bins[g : g + k] if k > 1 else self.bins[g],
            self._codes(g + k),
            self.layout.prompts,
            self.changed_weight,
            null_actions,
        )


# ---------------------------------------------------------------------------- batching
@dataclass
class Batch:
    """Right-padded samples. ``weights[b, i]`` weighs predicting ``ids[b, i]`` from ``ids[b, :i]``."""

    ids: torch.Tensor  # int64 (B, L), PAD after each sample
    weights: torch.Tensor  # float32 (B, L), 0 on context and PAD
    is_world: torch.Tensor  # bool (B,)
    lengths: torch.Tensor  # int64 (B,) unpadded lengths

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.ids.to(device), self.weights.to(device), self.is_world.to(device), self.lengths.to(device)
        )


def collate(
    samples: Sequence[Sample], kinds: Sequence[int], vocab: Vocab, pad_multiple: int = PAD_MULTIPLE
) -> Batch:
    """Pad samples to a common length (a multiple of ``pad_multiple``) with PAD and weight 0."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(s) for s in samples]
    width = -(-max(lengths) // pad_multiple) * pad_multiple
    ids = np.full((len(samples), width), vocab.pad, dtype=np.int64)
    weights = np.zeros((len(samples), width), dtype=np.float32)
    for b, s in enumerate(samples):
        ids[b, : len(s)] = s.ids
        weights[b, : len(s)] = s.weights
    return Batch(
        ids=torch.from_numpy(ids),
        weights=torch.from_numpy(weights),
        is_world=torch.tensor([k == WORLD for k in kinds], dtype=torch.bool),
        lengths=torch.tensor(lengths, dtype=torch.int64),
    )


class MixedStream:
    """The deterministic, resumable stream of mixed samples (see the module docstring)."""

    def __init__(
        self,
        action: ActionSamples | None,
        world: WorldSamples | None,
        world_fraction: float,
        seed: int,
        world_null_share: float = 0.0,
    ) -> None:
        """``world_null_share``: the share of world-model positions whose sample comes with its
        actions not given (null-action ids; drawn per stream position from ``seed``, so that
        every transition is seen with and without its actions over the epochs)."""
        if not 0.0 <= world_fraction <= 1.0:
            raise ValueError(f"world_fraction must be in [0, 1], got {world_fraction}")
        if not 0.0 <= world_null_share < 1.0:
            raise ValueError(f"world_null_share must be in [0, 1), got {world_null_share}")
        if world_fraction < 1.0 and (action is None or len(action) == 0):
            raise DataError("no action-model samples: every episode is shorter than the chunk length")
        if world_fraction > 0.0 and (world is None or len(world) == 0):
            raise DataError("no world-model samples: every episode has a single frame")
        self.sets = {ACTION: action, WORLD: world}
        self.f = world_fraction
        self.seed = seed
        self.null_share = world_null_share
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    def _worlds_before(self, pos: int) -> int:
        return math.floor(pos * self.f)

    def locate(self, pos: int) -> tuple[int, int]:
        """``(kind, index in the kind's sample set)`` of stream position ``pos``."""
        w = self._worlds_before(pos)
        if self._worlds_before(pos + 1) > w:
            return WORLD, self._permuted(WORLD, w)
        return ACTION, self._permuted(ACTION, pos - w)

    def _permuted(self, kind: int, j: int) -> int:
        n = len(self.sets[kind])  # type: ignore[arg-type]
        epoch, r = divmod(j, n)
        cached = self._perm_cache.get(kind)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, kind, epoch]).permutation(n))
            self._perm_cache[kind] = cached
        return int(cached[1][r])

    def sample(self, pos: int) -> tuple[Sample, int]:
        kind, i = self.locate(pos)
        if kind == WORLD and self.null_share > 0:
            null = bool(np.random.default_rng([self.seed, NULL_DRAWS, pos]).random() < self.null_share)
            return self.sets[WORLD].get(i, null_actions=null), kind  # type: ignore[union-attr]
        return self.sets[kind][i], kind  # type: ignore[index]

    def batch(self, start: int, size: int, vocab: Vocab) -> Batch:
        """Samples at stream positions ``start … start+size-1`` as one padded batch."""
        pairs = [self.sample(p) for p in range(start, start + size)]
        return collate([s for s, _ in pairs], [k for _, k in pairs], vocab)


def encode_actions(actions: np.ndarray, tokenizer: Any) -> np.ndarray:
    """All actions of the cache as bins, once (``(N_frames, D)`` int64)."""
    return np.asarray(tokenizer.encode(np.asarray(actions, dtype=np.float32)), dtype=np.int64)
