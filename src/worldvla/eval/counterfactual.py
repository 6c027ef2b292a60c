"""Counterfactual world-model evaluation: does the imagined future follow the actions given?

Rolling out held-out episodes with their own actions (:mod:`worldvla.eval.world_eval`)
cannot tell an action world model from a video predictor that ignores its actions: with
expert data the next frame is predictable from the frame alone (SPEC §7). Here the
simulator is the ground truth for *any* action sequence. From the initial state of each
held-out demonstration (its task and variation), every action sequence below is both
executed in the simulator and imagined by the world model, and the imagined frames are
scored against the simulator's frames of the *same* actions:

- ``demonstration``: the episode's own actions (those really executed where the file
  records them), replayed at the control rate;
- ``zero``: all zeros — the arm should stay still;
- ``negated``: the demonstration's actions with their sign flipped;
- ``other-task``: the actions of a held-out demonstration of another task (zeros after
  its end);
- ``random``: uniform in ``[-1, 1]^D`` at every step;
- ``noisy``: the demonstration's actions plus N(0, 0.3²), clipped.

Sequences run to the demonstration's end (its number of actions, at most ``max_length``).

**Pixels that move.** The static background is most of a frame and dominates whole-frame
PSNR. The moving-pixel mask of an episode at step ``t`` is the union, over all its action
sequences, of the pixels whose simulated frame ``t`` differs from the first frame by more
than ``MOVING_THRESHOLD`` (of 255) in any channel: the same mask for every method and every
sequence of that episode, so that an imagined arm moving where the real one stayed still
is penalised as much as one that fails to move. Masked PSNR is computed per frame over the
masked pixels (all three channels), frames with an empty mask are skipped.

Rows, per sequence and rollout length (1, 10 and the episode end; the mean over the first
``L`` imagined frames, as in :mod:`worldvla.eval.world_eval`):

- ``worldvla``: the rollout with the sequence's actions vs. the simulator's frames for them;
- ``action-blind``: the rollout with the *demonstration's* actions vs. the simulator's frames
  for the sequence — what a model that ignores its actions would score;
- ``repeat-last``: the first frame repeated;
- ``tokenizer``: the simulator's own frames for the sequence through the image tokenizer
  (encode → decode): the best any world model with these codes can draw.

**Ceilings.** What a world model drawing every simulated outcome as well as the tokenizer
can would score: its *gain* over action-blind is the mean over the counterfactual
sequences ``k`` of PSNR(tokenizer(sim[k]), sim[k]) − PSNR(tokenizer(sim[demonstration]),
sim[k]) (how far apart the outcomes of different actions are at this resolution), its
*gap* to true actions the mean of tokenizer[demonstration] − tokenizer[k] (how much worse
the tokenizer draws unusual outcomes). They say whether the targets can be reached at all
with these codes.

**Action fidelity** (one number per length, dB on moving pixels): for every episode and
sequence ``k``, PSNR of the imagined frames for ``k`` against the simulator's frames for
``k``, minus their mean PSNR against the simulator's frames of the *other* sequences of the
same episode; averaged. A model that ignores its actions imagines the same video for
every sequence and scores exactly 0; a model that follows them scores > 0 (the more the
outcomes of different actions differ, the higher).

**Targets** (:func:`target_summary`, at 10 frames, on moving pixels), over the sequences
whose outcome differs from the demonstration's (``COUNTERFACTUAL``: all but ``noisy``, whose
outcome is the demonstration's up to noise, so that even an action-blind model scores well
on it): the *gap to true actions*, the mean of ``worldvla[demonstration] − worldvla[k]``
(a model that follows its actions imagines any sequence as well as the true one: ≤ 1 dB),
and the *gain over action-blind*, the mean of ``worldvla[k] − action-blind[k]`` (≥ 3 dB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldvla.errors import DataError
from worldvla.eval.metrics.image import PSNR_CAP_DB, frame_metrics

KINDS = ("demonstration", "zero", "negated", "other-task", "random", "noisy")
# The sequences whose real outcome differs from the demonstration's (the targets' set).
COUNTERFACTUAL = ("zero", "negated", "other-task", "random")
GAP_TARGET_DB = 1.0  # worldvla[demonstration] - worldvla[k] at most this
GAIN_TARGET_DB = 3.0  # worldvla[k] - action-blind[k] at least this
# uint8 levels: above the simulator's rendering noise (none), below the arm's edge contrast.
MOVING_THRESHOLD = 12
NOISE_STD = 0.3


@dataclass(frozen=True)
class StartState:
    """A held-out demonstration to start from: where, and the actions it executed."""

    key: str
    task: str
    variation: int
    first_frame: np.ndarray  # uint8 (H, W, 3), the recorded frame the rollouts start from
    actions: np.ndarray  # float32 (T, D), the demonstration's actions from there
    # Actions executed after the reset to reach that frame (a start inside the episode);
    # None: the start is the reset itself.
    prefix: np.ndarray | None = None


def counterfactual_actions(
    starts: Sequence[StartState], max_length: int, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """For each kind, one ``(T_n, D)`` sequence per start (``T_n`` = the demo's length, capped)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
    tasks = [s.task for s in starts]
    for n, s in enumerate(starts):
        a = np.asarray(s.actions[:max_length], np.float32)
        t, d = a.shape
        rng = np.random.default_rng([seed, n])
        others = [j for j in range(len(starts)) if tasks[j] != s.task]
        others = others or [j for j in range(len(starts)) if j != n]
        other = np.zeros((t, d), np.float32)
        if others:
            src = np.asarray(starts[others[n % len(others)]].actions[:t], np.float32)
            other[: len(src)] = src
        out["demonstration"].append(a)
        out["zero"].append(np.zeros_like(a))
        out["negated"].append(-a)
        out["other-task"].append(other)
        out["random"].append(rng.uniform(-1.0, 1.0, size=(t, d)).astype(np.float32))
        out["noisy"].append(np.clip(a + rng.normal(0.0, NOISE_STD, size=(t, d)), -1, 1).astype(np.float32))
    return out


def _reach(env: Any, start: StartState) -> Any:
    """Reset to the start's scene and execute its prefix; the observation there."""
    obs = env.reset(start.task, start.variation)
    for a in start.prefix if start.prefix is not None else ():
        obs, _ = env.step(a)
    return obs


def simulate(env: Any, start: StartState, actions: np.ndarray) -> np.ndarray:
    """The frames the simulator renders after each action: uint8 ``(T, H, W, 3)``."""
    _reach(env, start)
    frames = []
    for a in actions:
        obs, _ = env.step(a)
        frames.append(obs.images[env.camera])
    return np.stack(frames)


def reset_frame(env: Any, start: StartState) -> np.ndarray:
    """The simulator's frame at the start (after the reset and the prefix)."""
    return _reach(env, start).images[env.camera]


def check_start(env: Any, start: StartState) -> None:
    """Refuse a simulator whose frame at the start differs from the recorded one."""
    diff = np.abs(reset_frame(env, start).astype(np.int16) - start.first_frame.astype(np.int16)).mean()
    if diff > 1.0:
        where = "first frame" if start.prefix is None else f"frame at step {len(start.prefix)}"
        raise DataError(
            f"episode {start.key}: the simulator's {where} differs from the recorded one (mean "
            f"|diff| {diff:.1f} levels): the suite renders differently from the data"
        )


def moving_mask(
    first: np.ndarray, outcomes: Sequence[np.ndarray], threshold: int = MOVING_THRESHOLD
) -> np.ndarray:
    """bool ``(T, H, W)``: pixels that differ from ``first`` in any outcome's frame ``t``.

    ``outcomes``: simulated ``(T_k, H, W, 3)`` videos of one episode; shorter ones count
    only where they exist.
    """
    length = max(len(o) for o in outcomes)
    mask = np.zeros((length, *first.shape[:2]), bool)
    ref = first.astype(np.int16)
    for o in outcomes:
        diff = np.abs(o.astype(np.int16) - ref[None]).max(axis=-1) > threshold  # (T_k, H, W)
        mask[: len(o)] |= diff
    return mask


def masked_psnr(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 ``(T, H, W, 3)`` over ``mask`` ``(T, H, W)``; NaN where empty."""
    err = (pred.astype(np.float64) - real.astype(np.float64)) ** 2  # (T, H, W, 3)
    count = mask.sum(axis=(1, 2)) * 3
    sse = (err * mask[..., None]).sum(axis=(1, 2, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = np.where(count > 0, sse / np.maximum(count, 1), np.nan)
        psnr = 10 * np.log10(255.0**2 / mse)
    return np.where(mse == 0, PSNR_CAP_DB, np.minimum(psnr, PSNR_CAP_DB))


def whole_psnr(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    return masked_psnr(pred, real, np.ones(pred.shape[:3], bool))


def _prefix_mean(per_frame: np.ndarray, length: int) -> float:
    part = per_frame[:length]
    return float(np.nanmean(part)) if np.isfinite(part).any() else float("nan")


@dataclass
class EpisodeOutcomes:
    """Everything scored for one start: simulated and imagined videos per kind."""

    start: StartState
    sim: dict[str, np.ndarray]  # kind -> uint8 (T, H, W, 3)
    pred: dict[str, np.ndarray]  # kind -> uint8 (T, H, W, 3)
    recon: dict[str, np.ndarray] | None = None  # kind -> sim[kind] through the image tokenizer

    @property
    def length(self) -> int:
        return len(self.sim["demonstration"])

    def mask(self) -> np.ndarray:
        return moving_mask(self.start.first_frame, list(self.sim.values()))


def score_outcomes(
    episodes: Sequence[EpisodeOutcomes], lengths: Sequence[int | str] = (1, 10, "end")
) -> dict[str, Any]:
    """The counterfactual table rows and the action-fidelity numbers (module docstring)."""
    per: dict[tuple[str, str, Any], list[dict[str, float]]] = {}
    fidelity: dict[Any, list[float]] = {length: [] for length in lengths}
    ceiling: dict[Any, list[float]] = {length: [] for length in lengths}
    moving_share = []
    for ep in episodes:
        mask = ep.mask()
        moving_share.append(float(mask.mean()))
        first = ep.start.first_frame
        blind = ep.pred["demonstration"]
        # PSNR on moving pixels of every imagined video against every simulated one.
        cross = {(k, j): masked_psnr(ep.pred[k], ep.sim[j], mask) for k in KINDS for j in KINDS}
        # The tokenizer's reconstructions of each outcome, and of the demonstration's outcome,
        # against every simulated video: its row and the ceiling of the gain.
        tok_own, tok_demo = {}, {}
        if ep.recon is not None:
            tok_own = {k: masked_psnr(ep.recon[k], ep.sim[k], mask) for k in KINDS}
            tok_demo = {k: masked_psnr(ep.recon["demonstration"], ep.sim[k], mask) for k in COUNTERFACTUAL}
        for k in KINDS:
            real = ep.sim[k]
            repeat = np.repeat(first[None], len(real), axis=0)
            methods = {"worldvla": ep.pred[k], "action-blind": blind, "repeat-last": repeat}
            if ep.recon is not None:
                methods["tokenizer"] = ep.recon[k]
            for method, pred in methods.items():
                if method in ("worldvla", "tokenizer"):
                    moving = cross[k, k] if method == "worldvla" else tok_own[k]
                else:
                    moving = masked_psnr(pred, real, mask)
                whole = whole_psnr(pred, real)
                ssim = frame_metrics(pred, real)["ssim"]
                for length in lengths:
                    n = ep.length if length == "end" else min(int(length), ep.length)
                    per.setdefault((k, method, length), []).append(
                        {
                            "psnr_moving": _prefix_mean(moving, n),
                            "psnr": _prefix_mean(whole, n),
                            "ssim": _prefix_mean(ssim, n),
                        }
                    )
        for length in lengths:
            n = ep.length if length == "end" else min(int(length), ep.length)
            for k in KINDS:
                own = _prefix_mean(cross[k, k], n)
                rest = [_prefix_mean(cross[k, j], n) for j in KINDS if j != k]
                if np.isfinite(own) and np.isfinite(rest).all():
                    fidelity[length].append(own - float(np.mean(rest)))
            if tok_demo:
                gains = [_prefix_mean(tok_own[k], n) - _prefix_mean(tok_demo[k], n) for k in COUNTERFACTUAL]
                if np.isfinite(gains).all():
                    ceiling[length].append(float(np.mean(gains)))
    rows = []
    for (kind, method, length), vals in per.items():
        rows.append(
            {
                "actions": kind,
                "method": method,
                "length": length,
                "episodes": len(vals),
                **{m: float(np.nanmean([v[m] for v in vals])) for m in ("psnr_moving", "psnr", "ssim")},
            }
        )
    doc: dict[str, Any] = {
        "rows": rows,
        "fidelity": {
            str(length): {
                "db": float(np.mean(v)) if v else float("nan"),
                "ci95": _ci(v),
                "pairs": len(v),
            }
            for length, v in fidelity.items()
        },
        "moving_share": float(np.mean(moving_share)) if moving_share else float("nan"),
        # The gain over action-blind of a model drawing each outcome as the tokenizer can.
        "ceiling_gain_db": {str(length): float(np.mean(v)) for length, v in ceiling.items() if v},
        "threshold": MOVING_THRESHOLD,
    }
    if 10 in lengths:
        doc["targets"] = target_summary(doc, 10)
    return doc


def target_summary(doc: dict[str, Any], length: int | str = 10) -> dict[str, Any]:
    """Gap to true actions and gain over action-blind at ``length`` (module docstring)."""
    true = row(doc, "demonstration", "worldvla", length)
    gaps, gains = {}, {}
    for k in COUNTERFACTUAL:
        own, blind = row(doc, k, "worldvla", length), row(doc, k, "action-blind", length)
        if true and own and blind:
            gaps[k] = true["psnr_moving"] - own["psnr_moving"]
            gains[k] = own["psnr_moving"] - blind["psnr_moving"]
    # The same gap for the tokenizer's reconstructions of the simulated outcomes: the gap a
    # model drawing every outcome as well as the tokenizer can would still have.
    tok_true = row(doc, "demonstration", "tokenizer", length)
    tok_gaps = [
        tok_true["psnr_moving"] - r["psnr_moving"]
        for r in (row(doc, k, "tokenizer", length) for k in COUNTERFACTUAL)
        if tok_true and r
    ]
    gap = float(np.mean(list(gaps.values()))) if gaps else float("nan")
    gain = float(np.mean(list(gains.values()))) if gains else float("nan")
    return {
        "length": length,
        "gap_to_true_db": gap,
        "gain_over_blind_db": gain,
        "per_sequence": {k: {"gap_to_true_db": gaps[k], "gain_over_blind_db": gains[k]} for k in gaps},
        "gap_target_db": GAP_TARGET_DB,
        "gain_target_db": GAIN_TARGET_DB,
        "ceiling_gain_db": doc.get("ceiling_gain_db", {}).get(str(length), float("nan")),
        "ceiling_gap_db": float(np.mean(tok_gaps)) if tok_gaps else float("nan"),
        "met": bool(gap <= GAP_TARGET_DB and gain >= GAIN_TARGET_DB),
    }


def _ci(values: Sequence[float]) -> list[float]:
    """95% t-interval of the mean (pairs of one episode are not independent: indicative)."""
    from worldvla.eval.stats import mean_ci

    if len(values) < 2:
        return [float("nan"), float("nan")]
    m, half = mean_ci(list(values))
    return [float(m - half), float(m + half)]


def row(doc: dict[str, Any], kind: str, method: str, length: int | str) -> dict[str, Any] | None:
    for r in doc["rows"]:
        if r["actions"] == kind and r["method"] == method and str(r["length"]) == str(length):
            return r
    return None


def run_counterfactual(
    world_model: Any,
    env: Any,
    starts: Sequence[StartState],
    max_length: int = 60,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    ceiling: bool = True,
) -> list[EpisodeOutcomes]:
    """Simulate and imagine every counterfactual sequence of every start.

    The world model rolls out all (start, kind) pairs in batches, each padded with zero
    actions to the longest sequence; only each sequence's own steps are kept. With
    ``ceiling``, the simulated videos also go through the world model's image tokenizer
    (``encode`` → ``decode``) for the ``tokenizer`` row and the ceiling of the gain.
    """
    from tqdm.auto import tqdm

    seqs = counterfactual_actions(starts, max_length, seed)
    sims: list[dict[str, np.ndarray]] = []
    for n, s in enumerate(starts):
        check_start(env, s)
        sims.append({k: simulate(env, s, seqs[k][n]) for k in KINDS})
    pairs = [(n, k) for n in range(len(starts)) for k in KINDS]
    horizon = max(len(seqs["demonstration"][n]) for n in range(len(starts)))
    d = starts[0].actions.shape[1]
    preds: dict[tuple[int, str], np.ndarray] = {}
    bar = tqdm(total=len(pairs), desc="counterfactual rollouts", unit="video", disable=not progress)
    for b in range(0, len(pairs), batch_size):
        part = pairs[b : b + batch_size]
        acts = np.zeros((len(part), horizon, d), np.float32)
        for i, (n, k) in enumerate(part):
            acts[i, : len(seqs[k][n])] = seqs[k][n]
        first = np.stack([starts[n].first_frame for n, _ in part])
        video = world_model.rollout(first, acts)  # (B, horizon, H, W, 3)
        for i, (n, k) in enumerate(part):
            preds[n, k] = video[i, : len(seqs[k][n])]
        bar.update(len(part))
    bar.close()
    recons: list[dict[str, np.ndarray] | None] = [None] * len(starts)
    if ceiling:
        for n, sim in enumerate(sims):
            frames = np.concatenate([sim[k] for k in KINDS])
            decoded = world_model.decode(world_model.encode(frames))
            bounds = np.cumsum([0] + [len(sim[k]) for k in KINDS])
            recons[n] = {k: decoded[bounds[i] : bounds[i + 1]] for i, k in enumerate(KINDS)}
    return [
        EpisodeOutcomes(start=s, sim=sims[n], pred={k: preds[n, k] for k in KINDS}, recon=recons[n])
        for n, s in enumerate(starts)
    ]


def format_table(doc: dict[str, Any], metric: str = "psnr_moving") -> str:
    """Markdown: one row per action sequence, PSNR at 1 / 10 / end for each method."""
    lengths = (1, 10, "end")
    title = {"psnr_moving": "PSNR on moving pixels (dB)", "psnr": "whole-frame PSNR (dB)", "ssim": "SSIM×100"}
    methods = tuple(
        m for m in ("worldvla", "action-blind", "repeat-last", "tokenizer") if row(doc, KINDS[0], m, 1)
    )
    lines = [
        f"{title.get(metric, metric)}, at 1 / 10 / end frames",
        "",
        "| actions given | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for kind in KINDS:
        cells = []
        for method in methods:
            vals = [row(doc, kind, method, length) for length in lengths]
            cells.append(" / ".join(f"{v[metric]:.2f}" if v else "–" for v in vals))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    fid = doc.get("fidelity", {})
    parts = []
    for length in lengths:
        f = fid.get(str(length))
        if f:
            parts.append(f"{length}: {f['db']:+.2f} dB [{f['ci95'][0]:+.2f}, {f['ci95'][1]:+.2f}]")
    lines += ["", "action fidelity (0 = ignores its actions): " + ", ".join(parts)]
    if metric == "psnr_moving" and row(doc, "demonstration", "worldvla", 10):
        t = target_summary(doc, 10)
        lines.append(
            f"at 10 frames, over {', '.join(COUNTERFACTUAL)}: gap to true actions "
            f"{t['gap_to_true_db']:+.2f} dB (target ≤ {GAP_TARGET_DB:g}), gain over action-blind "
            f"{t['gain_over_blind_db']:+.2f} dB (target ≥ {GAIN_TARGET_DB:g}): "
            + ("met" if t["met"] else "not met")
        )
        if np.isfinite(t["ceiling_gain_db"]):
            lines.append(
                f"a model drawing each outcome as well as the image tokenizer can: gap "
                f"{t['ceiling_gap_db']:+.2f} dB, gain {t['ceiling_gain_db']:+.2f} dB"
            )
    return "\n".join(lines)
