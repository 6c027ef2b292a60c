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

**Image probe** (``swap_probe``): the same chunks are generated once more from the frames
of *another* held-out episode of the same task at the same step — the same phase of the
motion, another object placement. A policy that locates the objects in the image gets
much worse (``l1_swapped`` well above ``l1_real_on_swapped``, the real-frame error on the
same samples); one that acts on the arm's pose and the phase alone barely changes.

**State.** A checkpoint trained with the proprioceptive state (``use_state``) reads the
recorded state at t from the episode file (an error if the file has none); the image probe
keeps each sample's own state and swaps only the frames, so it shows how much such a policy
still reads the image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
    swap_probe: bool = True,
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
    states: list[np.ndarray | None] = []  # the state at t, for a checkpoint that reads one
    texts: list[str] = []
    targets: list[np.ndarray] = []
    origin: list[tuple[int, int]] = []  # (index into episode_codes, step) of each sample
    episode_codes: list[np.ndarray] = []
    with EpisodeReader(episodes_path) as reader:
        camera = policy.layout.camera or reader.cameras[0]
        for key in keys:
            actions = reader.actions(key)
            frames = reader.frames(key, camera)
            instruction = str(reader.attrs(key).get("instruction", ""))
            if len(actions) < k:
                continue
            ep_states = reader.state(key) if policy.state_dim else None
            if policy.state_dim and ep_states is None:
                raise DataError(
                    f"{episodes_path}: the checkpoint reads the proprioceptive state (use_state), but the "
                    "episode file records none (obs/state)"
                )
            with torch.inference_mode():
                codes = policy.image_tokenizer.encode(frames).cpu().numpy()  # (T, h, w)
            episode_codes.append(codes)
            for t in range(0, len(actions) - k + 1, stride):
                histories.append(codes[max(0, t - m + 1) : t + 1])
                states.append(None if ep_states is None else ep_states[t])
                texts.append(instruction)
                targets.append(actions[t : t + k])
                origin.append((len(episode_codes) - 1, t))
    if not targets:
        raise DataError(f"{episodes_path}: no held-out episode has {k} actions to compare a chunk with")

    def predict(hs: list[np.ndarray], ts: list[str], ss: list[np.ndarray | None]) -> np.ndarray:
        return np.concatenate(
            [
                policy.predict_chunks_from_codes(
                    hs[s : s + batch_size],
                    ts[s : s + batch_size],
                    ss[s : s + batch_size] if policy.state_dim else None,
                )
                for s in range(0, len(hs), batch_size)
            ]
        )  # (N, K, D)

    preds = predict(histories, texts, states)
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
        "state_dim": policy.state_dim,
    }
    per_task: dict[str, dict[str, Any]] = {}
    for text in dict.fromkeys(texts):
        rows = [i for i, t in enumerate(texts) if t == text]
        per_task[text] = {
            "l1": float(err[rows].mean()),
            "baseline_mean_action_l1": float(base[rows].mean()),
            "samples": len(rows),
        }
    if swap_probe:
        summary, swapped = _swap_probe(predict, texts, states, origin, episode_codes, m, err, real, low, high)
        doc.update(summary)
        for text, row in per_task.items():
            errs = [e for i, e in swapped.items() if texts[i] == text]
            row["l1_swapped"] = float(np.mean(errs)) if errs else None
    doc["per_task"] = per_task
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


def _swap_probe(
    predict: Callable[[list[np.ndarray], list[str], list[np.ndarray | None]], np.ndarray],
    texts: list[str],
    states: list[np.ndarray | None],
    origin: list[tuple[int, int]],
    episode_codes: list[np.ndarray],
    m: int,
    err: np.ndarray,
    real: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
) -> tuple[dict[str, Any], dict[int, float]]:
    """Chunks from another same-task episode's frames at the same step (module docstring).

    Returns the summary and, per probed sample index, its mean error with swapped frames.
    Each sample keeps its own state (module docstring).
    """
    by_text: dict[str, list[int]] = {}
    for i, (e, _) in enumerate(origin):
        group = by_text.setdefault(texts[i], [])
        if e not in group:
            group.append(e)
    idx, swapped = [], []
    for i, (e, t) in enumerate(origin):
        group = by_text[texts[i]]
        if len(group) < 2:
            continue  # the only held-out episode of its task: nothing to swap with
        other = episode_codes[group[(group.index(e) + 1) % len(group)]]
        s = min(t, len(other) - 1)
        idx.append(i)
        swapped.append(other[max(0, s - m + 1) : s + 1])
    if not idx:
        return {"l1_swapped": None, "l1_real_on_swapped": None, "swapped_samples": 0}, {}
    preds = predict(swapped, [texts[i] for i in idx], [states[i] for i in idx])
    swap_err = np.abs(_normalize(preds, low, high) - _normalize(real[idx], low, high))
    summary = {
        "l1_swapped": float(swap_err.mean()),
        "l1_real_on_swapped": float(err[idx].mean()),
        "swapped_samples": len(idx),
    }
    return summary, {i: float(e) for i, e in zip(idx, swap_err.mean(axis=(1, 2)))}
