"""The data of one training run: a :class:`TrainConfig` applied to a token cache.

The streams themselves are assembled in :mod:`worldvla.data.streams`, which knows nothing
of the training config; this module translates the config's data fields into a
:class:`~worldvla.data.streams.StreamConfig`, checks that the longest sample fits the
model, and adds what every checkpoint records about the cache (its image tokenizer and
the identity of its episode file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worldvla.data.datasets import CacheLike
from worldvla.data.streams import SampleStreams, StreamConfig, build_streams, cache_meta
from worldvla.errors import ConfigError
from worldvla.sequence import PromptConfig
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TrainConfig


@dataclass
class TrainData(SampleStreams):
    """The sample streams of a run plus what its checkpoints record about the token cache."""

    image_tokenizer: ckpt.ImageTokenizerRef
    episodes: dict[str, Any] | None  # identity of the episode file the cache was built from


def stream_config(cfg: TrainConfig) -> StreamConfig:
    """The data-side settings of ``cfg``."""
    return StreamConfig(
        text_tokenizer=cfg.text_tokenizer,
        history=cfg.history,
        chunk_len=cfg.chunk_len,
        chunk_mask=cfg.chunk_mask,
        prompts=PromptConfig(action_prompt=cfg.action_prompt, world_prompt=cfg.world_prompt),
        action_bins=cfg.action_bins,
        state_bins=cfg.state_bins if cfg.use_state else 0,
        world_fraction=cfg.effective_world_fraction,
        world_data=cfg.world_data,
        world_changed_weight=cfg.world_changed_weight,
        world_horizon=cfg.world_horizon,
        world_one_step_share=cfg.world_one_step_share,
        world_action_dropout=cfg.world_action_dropout,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        seed=cfg.seed,
        demos_per_task=cfg.train_demos_per_task,
    )


def cache_image_tokenizer(cache: CacheLike) -> ckpt.ImageTokenizerRef:
    """The image tokenizer the cache's codes came from, as its metadata records it."""
    info = cache_meta(cache).get("image_tokenizer") or {}
    if isinstance(info, str):
        info = {"path": info}
    return ckpt.ImageTokenizerRef(path=info.get("path"), fingerprint=info.get("fingerprint"))


def cache_episodes(cache: CacheLike) -> dict[str, Any] | None:
    """``{"name", "size", "sha256"}`` of the episode file the cache records, if any."""
    info = cache_meta(cache).get("episodes")
    if not isinstance(info, dict) or not info.get("sha256"):
        return None
    return {k: info.get(k) for k in ("name", "size", "sha256")}


def build_data(cfg: TrainConfig, cache: CacheLike, max_seq_len: int) -> TrainData:
    """The streams ``cfg`` trains on; ConfigError when a sample is longer than ``max_seq_len``."""
    streams = build_streams(cache, stream_config(cfg))
    if streams.max_len > max_seq_len:
        raise ConfigError(
            f"samples reach {streams.max_len} tokens but the model {cfg.model!r} has "
            f"max_seq_len={max_seq_len} (grid {streams.layout.grid}, history {cfg.history}, "
            f"chunk {cfg.chunk_len})"
        )
    return TrainData(
        **vars(streams), image_tokenizer=cache_image_tokenizer(cache), episodes=cache_episodes(cache)
    )
