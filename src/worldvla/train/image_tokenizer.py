"""Training the image tokenizer on an episode store: the frames read, split and handed over.

:func:`worldvla.tokenizers.vq_train.train_vq` trains on uint8 frame arrays; this module reads
them from an episode store, holds out whole episodes for validation (frames of one episode
are nearly identical, so a frame-level split would measure memorisation) and records which
data the tokenizer was trained on in its ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.data.episodes import EpisodeReader
from worldvla.errors import DataError
from worldvla.tokenizers.vq_config import VQConfig, vq_preset
from worldvla.tokenizers.vq_train import VQTrainConfig, train_vq
from worldvla.utils.io import atomic_write_text


def load_frames(
    episodes_path: str | Path, camera: str | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """All frames of ``camera`` split by whole episodes: ``(train (N,H,W,3), val (M,H,W,3), info)``."""
    with EpisodeReader(episodes_path, cameras=[camera] if camera else None) as reader:
        camera = camera or reader.cameras[0]
        n = len(reader)
        if n < 2:
            raise DataError(f"{episodes_path}: need at least 2 episodes to hold one out for validation")
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        perm = np.random.default_rng([seed, 11]).permutation(n)
        val_ids = set(perm[:n_val].tolist())
        train, val = [], []
        for i in range(n):
            (val if i in val_ids else train).append(reader.frames(i, camera))
        keys = [reader.keys[i] for i in sorted(val_ids)]
    info = {"episodes": str(episodes_path), "camera": camera, "val_episodes": keys}
    return np.concatenate(train), np.concatenate(val), info


def train_tokenizer(
    episodes_path: str | Path,
    out: str | Path,
    cfg: VQTrainConfig,
    camera: str | None = None,
    progress: bool = True,
    vq_cfg: VQConfig | None = None,
) -> dict[str, Any]:
    """Train on the frames of an episode store (whole episodes held out); returns the metrics.

    ``vq_cfg``: the tokenizer to train (an experiment's own config object); by default the
    preset ``cfg.preset`` names.
    """
    vq_cfg = vq_cfg or vq_preset(cfg.preset)
    train_frames, val_frames, info = load_frames(episodes_path, camera, cfg.val_fraction, cfg.seed)
    if train_frames.shape[1:3] != (vq_cfg.image_size, vq_cfg.image_size):
        side = train_frames.shape[1:3]
        raise DataError(
            f"{episodes_path}: frames are {side[0]}×{side[1]}, the {cfg.preset!r} tokenizer expects "
            f"{vq_cfg.image_size}×{vq_cfg.image_size}; choose a preset with that image_size"
        )
    _, metrics = train_vq(cfg, train_frames, val_frames, out, vq_cfg, progress=progress)
    metrics["data"] = info
    atomic_write_text(Path(out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
