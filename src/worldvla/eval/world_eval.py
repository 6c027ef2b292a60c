"""World-model evaluation: roll out held-out episodes from their first frame with the
ground-truth actions and compare the imagined frames with the real ones (SPEC §7).

For every rollout length L (default 1, 10 and 50 frames, or to the episode's end) the
model sees the real frame 0 and actions 0..L-1 and imagines frames 1..L; nothing real is
fed back. Metrics per length: PSNR and SSIM (:mod:`worldvla.eval.metrics.image`), and LPIPS/FVD when the
standard pretrained weights are available locally (:mod:`worldvla.eval.metrics`).

Baselines in the same run:

- ``repeat-last``: frame 0 repeated (a world model that predicts no change);
- ``tokenizer``: the real frames passed through the image tokenizer (encode → decode),
  the ceiling any model over these codes can reach.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.eval.metrics.image import psnr as metrics_psnr
from worldvla.eval.metrics.image import ssim as metrics_ssim
from worldvla.utils.io import atomic_write_text


def frame_metrics(pred: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame PSNR (dB) and SSIM (×100) of uint8 ``(N, H, W, 3)`` frames, with the
    conventions of :mod:`worldvla.eval.metrics.image` (PSNR capped, SSIM border cropped)."""
    real_v, pred_v = real[:, None], pred[:, None]  # videos of one frame
    return {
        "psnr": metrics_psnr(real_v, pred_v).per_frame[:, 0],
        "ssim": 100 * metrics_ssim(real_v, pred_v).per_frame[:, 0],
    }


@dataclass
class RolloutSet:
    """Real and imagined videos of one rollout length for one method: uint8 ``(N, L, H, W, 3)``."""

    method: str
    length: int
    real: np.ndarray
    pred: np.ndarray


def score(rs: RolloutSet) -> dict[str, Any]:
    n, length = rs.real.shape[:2]
    m = frame_metrics(
        rs.pred.reshape(n * length, *rs.real.shape[2:]), rs.real.reshape(n * length, *rs.real.shape[2:])
    )
    psnr = m["psnr"].reshape(n, length)
    ssim = m["ssim"].reshape(n, length)
    out: dict[str, Any] = {
        "method": rs.method,
        "length": length,
        "videos": n,
        "psnr": float(np.mean(psnr)),
        "ssim": float(np.mean(ssim)),
        "psnr_per_step": psnr.mean(0).tolist(),
    }
    out.update(_optional_metrics(rs))
    return out


def _optional_metrics(rs: RolloutSet) -> dict[str, Any]:
    """LPIPS and FVD when the metric code and its pretrained weights are available locally."""
    extra: dict[str, Any] = {}
    try:
        from worldvla.eval.metrics import default_fvd, default_lpips  # type: ignore[attr-defined]
    except ImportError:
        return extra
    lp = default_lpips()
    if lp is not None:
        n, length = rs.real.shape[:2]
        extra["lpips"] = 100 * float(
            lp(
                rs.pred.reshape(n * length, *rs.real.shape[2:]),
                rs.real.reshape(n * length, *rs.real.shape[2:]),
            ).mean()
        )
    fvd = default_fvd()
    if fvd is not None and rs.length >= fvd.min_frames:
        extra["fvd"] = float(fvd(rs.real, rs.pred))
    return extra


def evaluate_rollouts(
    world_model: Any,
    episodes: Sequence[tuple[np.ndarray, np.ndarray]],
    lengths: Sequence[int] = (1, 10, 50),
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], dict[int, RolloutSet]]:
    """Score the model and the baselines for every rollout length.

    ``episodes``: ``(frames uint8 (T, H, W, 3), actions (T, D))`` of held-out episodes.
    A length longer than an episode is cut to that episode's end (recorded per row).
    Returns the score rows and the model's rollouts (for GIFs).
    """
    rows: list[dict[str, Any]] = []
    rollouts: dict[int, RolloutSet] = {}
    longest = max(lengths)
    # One rollout per episode to the longest length; shorter lengths are its prefixes.
    usable = [(f, a) for f, a in episodes if len(f) >= 2]
    horizon = min(longest, min(len(f) - 1 for f, _ in usable))
    real = np.stack([f[: horizon + 1] for f, _ in usable])  # (N, horizon+1, H, W, 3)
    acts = np.stack([a[:horizon] for _, a in usable]).astype(np.float32)  # (N, horizon, D)
    preds = []
    for s in range(0, len(usable), batch_size):
        preds.append(world_model.rollout(real[s : s + batch_size, 0], acts[s : s + batch_size]))
    pred = np.concatenate(preds)  # (N, horizon, H, W, 3)
    recon = world_model.decode(world_model.encode(real[:, 1:].reshape(-1, *real.shape[2:]))).reshape(
        pred.shape
    )
    for length in lengths:
        length_eff = min(length, horizon)
        target = real[:, 1 : length_eff + 1]
        sets = [
            RolloutSet("worldvla", length_eff, target, pred[:, :length_eff]),
            RolloutSet("repeat-last", length_eff, target, np.repeat(real[:, :1], length_eff, axis=1)),
            RolloutSet("tokenizer", length_eff, target, recon[:, :length_eff]),
        ]
        for rs in sets:
            row = score(rs)
            row["requested_length"] = length
            rows.append(row)
        rollouts[length] = sets[0]
    return rows, rollouts


def side_by_side(real: np.ndarray, pred: np.ndarray, scale: int = 3) -> np.ndarray:
    """``(L, H, W, 3)`` real and imagined -> ``(L, H*s, 2*W*s + gap, 3)`` frames for a GIF."""
    gap = np.full((real.shape[0], real.shape[1], 2, 3), 255, np.uint8)
    both = np.concatenate([real, gap, pred], axis=2)
    return both.repeat(scale, axis=1).repeat(scale, axis=2)


def write_results(path: str | Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps({"meta": meta, "rows": list(rows)}, indent=2) + "\n")


def evaluate_world(
    checkpoint: str | Path,
    episodes_path: str | Path,
    out_dir: str | Path,
    num_episodes: int = 16,
    lengths: Sequence[int] = (1, 10, 50),
    gifs: int = 2,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Roll out the checkpoint's held-out (validation) episodes; write ``results.json`` and GIFs."""
    import time

    from worldvla.data.episodes import EpisodeReader
    from worldvla.errors import DataError
    from worldvla.eval.policy_eval import fresh_gif_dir, save_gif, spread_over_tasks
    from worldvla.utils.provenance import provenance
    from worldvla.world_model import WorldModel

    out = Path(out_dir)
    wm = WorldModel.from_pretrained(checkpoint)  # first: a bad checkpoint must not clear old GIFs
    fresh_gif_dir(out / "gifs")
    camera = wm.layout.camera
    keys = list(wm.bundle.val_episodes)
    if not keys:
        raise DataError(f"{checkpoint}: the checkpoint records no held-out episodes to evaluate on")
    episodes = []
    with EpisodeReader(episodes_path) as reader:
        cam = camera or reader.cameras[0]
        keys = spread_over_tasks(keys, [reader.attrs(k).get("task", "") for k in keys], num_episodes)
        for key in keys:
            episodes.append((reader.frames(key, cam), reader.actions(key)))
    t0 = time.perf_counter()
    rows, rollouts = evaluate_rollouts(wm, episodes, lengths, batch_size=batch_size)
    for length, rs in rollouts.items():
        for i in range(min(gifs, len(rs.real))):
            save_gif(
                out / "gifs" / f"rollout_{length}_ep{i}.gif",
                side_by_side(rs.real[i], rs.pred[i]),
                scale=1,
                fps=8,
            )
    meta = provenance(
        checkpoint=str(checkpoint),
        episodes=str(episodes_path),
        episode_keys=keys,
        lengths=list(lengths),
        wall_seconds=time.perf_counter() - t0,
    )
    write_results(out / "results.json", rows, meta)
    return {"meta": meta, "rows": rows}
