"""Offline action error: generated chunks vs. the demonstrations of held-out episodes.

For every ``stride``-th step t of the checkpoint's validation episodes (the same episodes
training held out), the policy sees the recorded frames up to t and generates a chunk of
K actions exactly as at deployment (constrained, greedy, with the checkpoint's mask); the
chunk is compared with the recorded actions t … t+K−1.

Errors are L1 in normalized units (the action statistics' [low, high] mapped to [-1, 1],
so every dimension counts alike), reported overall, for the first action, and per chunk
position — the position curve is where a causal mask's error propagation shows (SPEC §3).
The baseline ``mean action`` predicts, for every step, the mean of the held-out actions
themselves: the best constant, which a policy that ignores image and instruction cannot
beat with a constant guess.

Cheap and low-variance next to closed-loop success, so it separates variants even after
short training (worldvla.ablation).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldvla.errors import DataError
from worldvla.utils.io import atomic_write_text


def _normalize(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = np.where(high > low, high - low, 1.0)
    return 2.0 * (actions - low) / span - 1.0


def evaluate_offline_actions(
    checkpoint: str | Path,
    episodes_path: str | Path,
    out_dir: str | Path | None = None,
    stride: int = 2,
    max_episodes: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Score generated chunks against held-out demonstrations; write ``results.json`` if ``out_dir``."""
    from worldvla.data.episodes import EpisodeReader
    from worldvla.policy import WorldVLAPolicy
    from worldvla.utils.provenance import provenance

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    policy = WorldVLAPolicy.from_pretrained(checkpoint)
    keys = list(policy.bundle.val_episodes)[:max_episodes]
    if not keys:
        raise DataError(f"{checkpoint}: the checkpoint records no held-out episodes to evaluate on")
    stats = policy.bundle.action_stats
    low, high = np.asarray(stats.low, dtype=np.float64), np.asarray(stats.high, dtype=np.float64)
    k, m = policy.chunk_len, policy.layout.history
    t0 = time.perf_counter()
    histories: list[np.ndarray] = []
    texts: list[str] = []
    targets: list[np.ndarray] = []
    with EpisodeReader(episodes_path) as reader:
        camera = policy.layout.camera or reader.cameras[0]
        for key in keys:
            actions = reader.actions(key)
            frames = reader.frames(key, camera)
            instruction = str(reader.attrs(key).get("instruction", ""))
            if len(actions) < k:
                continue
            with torch.inference_mode():
                codes = policy.image_tokenizer.encode(frames).cpu().numpy()  # (T, h, w)
            for t in range(0, len(actions) - k + 1, stride):
                histories.append(codes[max(0, t - m + 1) : t + 1])
                texts.append(instruction)
                targets.append(actions[t : t + k])
    if not targets:
        raise DataError(f"{episodes_path}: no held-out episode has {k} actions to compare a chunk with")
    preds = np.concatenate(
        [
            policy.predict_chunks_from_codes(histories[s : s + batch_size], texts[s : s + batch_size])
            for s in range(0, len(targets), batch_size)
        ]
    )  # (N, K, D)
    real = np.stack(targets).astype(np.float64)
    err = np.abs(_normalize(preds, low, high) - _normalize(real, low, high))  # (N, K, D)
    centre = _normalize(real, low, high).reshape(-1, real.shape[-1]).mean(0)
    base = np.abs(_normalize(real, low, high) - centre)
    doc: dict[str, Any] = {
        "l1": float(err.mean()),
        "l1_first": float(err[:, 0].mean()),
        "l1_per_position": err.mean(axis=(0, 2)).tolist(),
        "l1_per_dim": err.mean(axis=(0, 1)).tolist(),
        "baseline_mean_action_l1": float(base.mean()),
        "samples": len(targets),
        "episodes": len(keys),
        "chunk_len": k,
        "history": m,
        "chunk_mask": policy.chunk_mask,
    }
    if out_dir is not None:
        meta = provenance(
            checkpoint=str(checkpoint),
            episodes=str(episodes_path),
            stride=stride,
            wall_seconds=time.perf_counter() - t0,
        )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps({"meta": meta, **doc}, indent=2) + "\n")
    return doc
