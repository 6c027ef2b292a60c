"""World-model evaluation: roll out held-out episodes from their first frame with the
ground-truth actions and compare the imagined frames with the real ones (SPEC §7).

For every rollout length L (default 1, 10 and 50 frames, or to the episode's end) the
model sees the real frame 0 and actions 0..L-1 and imagines frames 1..L; nothing real is
fed back. Metrics per length: PSNR and SSIM (:mod:`worldvla.eval.metrics.image`), and LPIPS/FVD when the
standard pretrained weights are available locally (:mod:`worldvla.eval.metrics`).

The actions fed are those really executed where the episode file records them apart from
clean expert labels (demonstrations collected with injected noise), else the stored ones.

Baselines in the same run:

- ``repeat-last``: frame 0 repeated (a world model that predicts no change);
- ``tokenizer``: the real frames passed through the image tokenizer (encode → decode),
  the ceiling any model over these codes can reach.

This protocol cannot tell an action world model from a video predictor that ignores its
actions; :mod:`worldvla.eval.counterfactual` can, and runs in the same call whenever the
episode file records the simulator suite it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.eval.metrics.image import frame_metrics
from worldvla.utils.io import atomic_write_text


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


def evaluate_world(
    checkpoint: str | Path,
    episodes_path: str | Path,
    out_dir: str | Path,
    num_episodes: int = 16,
    lengths: Sequence[int] = (1, 10, 50),
    gifs: int = 2,
    batch_size: int = 8,
    counterfactual: bool | None = None,
    suite: Any = None,
    counterfactual_length: int = 60,
    progress: bool = False,
    guidance: float | None = None,
) -> dict[str, Any]:
    """Roll out the checkpoint's held-out (validation) episodes; write ``results.json`` and GIFs.

    ``guidance`` ≠ 1 imagines every frame with classifier-free guidance on the actions
    (:class:`~worldvla.world_model.WorldModel`; None: the checkpoint's default, recorded in
    the results); the teacher-forced action sensitivity reads
    the conditioned model alone either way.

    ``counterfactual`` (default: whenever the episode file records the simulator suite it
    was collected in, or ``suite`` is given) adds :mod:`worldvla.eval.counterfactual`: the
    same start states rolled out with other actions and scored against the simulator.
    """
    import time

    from worldvla.data.episodes import EpisodeReader
    from worldvla.errors import DataError
    from worldvla.eval.policy_eval import fresh_gif_dir, save_gif, spread_over_tasks
    from worldvla.utils.provenance import provenance
    from worldvla.world_model import WorldModel

    out = Path(out_dir)
    # first: a bad checkpoint must not clear old GIFs
    wm = WorldModel.from_pretrained(checkpoint, guidance=guidance)
    camera = wm.layout.camera
    keys = list(wm.bundle.val_episodes)
    if not keys:
        raise DataError(f"{checkpoint}: the checkpoint records no held-out episodes to evaluate on")
    episodes, starts = [], []
    with EpisodeReader(episodes_path) as reader:
        cam = camera or reader.cameras[0]
        keys = spread_over_tasks(keys, [reader.attrs(k).get("task", "") for k in keys], num_episodes)
        suite = suite or recorded_suite(reader, episodes_path, required=bool(counterfactual))
        for key in keys:
            ep = reader[key]
            frames = ep.frames[cam]
            executed = ep.executed_actions if ep.executed_actions is not None else ep.actions
            episodes.append((frames, executed))
            starts.append(start_state(key, ep, frames[0], executed))
    counterfactual = suite is not None if counterfactual is None else counterfactual
    fresh_gif_dir(out / "gifs")
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
    from worldvla.eval.action_sensitivity import action_sensitivity

    sensitivity = action_sensitivity(wm, episodes)
    cf_doc = None
    if counterfactual:
        cf_doc = _counterfactual(wm, suite, starts, counterfactual_length, out, gifs, progress)
    meta = provenance(
        checkpoint=str(checkpoint),
        episodes=str(episodes_path),
        episode_keys=keys,
        lengths=list(lengths),
        guidance=wm.guidance,
        wall_seconds=time.perf_counter() - t0,
    )
    doc: dict[str, Any] = {"meta": meta, "rows": rows, "action_sensitivity": sensitivity}
    if cf_doc is not None:
        doc["counterfactual"] = cf_doc
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")
    return doc


def recorded_suite(reader: Any, episodes_path: str | Path, required: bool = True) -> Any:
    """The simulator suite an episode store records it was collected in; without one, None,
    or with ``required`` an error naming the file."""
    from worldvla.errors import DataError

    recorded = reader.file_attrs.get("suite")
    if isinstance(recorded, str):
        from worldvla.envs.suites import suite_from_dict

        return suite_from_dict(json.loads(recorded))
    if required:
        raise DataError(
            f"{episodes_path}: rolling out other actions needs the simulator suite the episodes were "
            "collected in, and the file does not record one (give --suite)"
        )
    return None


def start_state(key: str, ep: Any, first_frame: np.ndarray, actions: np.ndarray) -> Any:
    """The :class:`~worldvla.eval.counterfactual.StartState` of episode ``ep`` of a store."""
    from worldvla.eval.counterfactual import StartState

    return StartState(
        key=key,
        task=ep.task,
        variation=int(ep.attrs.get("variation", 0)),
        first_frame=first_frame,
        actions=np.asarray(actions, np.float32),
    )


def _counterfactual(
    wm: Any, suite: Any, starts: list[Any], max_length: int, out: Path, gifs: int, progress: bool
) -> dict[str, Any]:
    """Counterfactual rollouts vs. the simulator; results plus one GIF grid per episode."""
    from worldvla.eval.counterfactual import KINDS, run_counterfactual, score_outcomes
    from worldvla.eval.policy_eval import save_gif

    env = suite.make_env()
    try:
        outcomes = run_counterfactual(wm, env, starts, max_length=max_length, progress=progress)
    finally:
        env.close()
    doc = score_outcomes(outcomes)
    doc["episodes"] = [o.start.key for o in outcomes]
    doc["suite"] = suite.name
    for i, o in enumerate(outcomes[:gifs]):
        save_gif(out / "gifs" / f"counterfactual_ep{i}.gif", counterfactual_grid(o, KINDS), scale=2, fps=6)
    return doc


def counterfactual_grid(outcome: Any, kinds: Sequence[str]) -> np.ndarray:
    """One row per action sequence: simulator (left) vs. imagined (right); ``(T, H*K, 2W+2, 3)``."""
    return sequence_grid([(outcome.sim[k], outcome.pred[k]) for k in kinds])


def sequence_grid(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One row per ``(simulated, imagined)`` pair of ``(T_k, H, W, 3)`` videos, simulator left;
    shorter videos hold their last frame. ``(max T_k, (H+2)*K, 2W+2, 3)`` uint8."""
    length = max(len(sim) for sim, _ in pairs)
    rows = []
    for sim, pred in pairs:
        pad = lambda v: np.concatenate([v, np.repeat(v[-1:], length - len(v), axis=0)])  # noqa: E731
        pair = side_by_side(pad(sim), pad(pred), scale=1)
        rows.append(np.concatenate([pair, np.full((length, 2, pair.shape[2], 3), 255, np.uint8)], axis=1))
    return np.concatenate(rows, axis=1)
