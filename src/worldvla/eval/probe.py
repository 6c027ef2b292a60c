"""Probe a world model with actions of your choosing, against the simulator.

The counterfactual evaluation (:mod:`worldvla.eval.counterfactual`) scores fixed kinds of
action sequences on many held-out episodes. A probe answers one person's question on one
start state: *does the imagined arm do what I tell it?* From the first frame of an episode
of the store, every given sequence is executed in the simulator and imagined by the world
model; the demonstration's own actions are always the first row, because the imagined
demonstration scored against another sequence's real outcome is the *action-blind*
reference (what a model that ignores its actions would show).

Sequences (``parse_sequence``), each ``T`` steps (``steps``, capped at the demonstration's
length and a file's rows):

- ``zero`` (stay still), ``negated`` (the demonstration's actions negated), ``random``
  (uniform in [-1, 1], seeded);
- ``hold:a,b,c,d`` — one action held for every step (``hold:0,0,1,0``: up);
- a ``.npy`` file or a comma-separated ``.csv``/``.txt`` file of ``(T, D)`` actions.

Per sequence, on the pixels that move in any of the probe's simulated videos (the mask of
:func:`~worldvla.eval.counterfactual.moving_mask`): PSNR of the imagined frames against the
simulator's at the first and the last step, the action-blind and repeat-first references at
the last step, and how much the simulator's and the imagined last frame differ from the
first frame (mean absolute change in levels on those pixels: near 0 when the arm stays
still). ``probe.gif``: one row per sequence, simulator left, imagined right.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.errors import ConfigError, DataError
from worldvla.eval.counterfactual import StartState, check_start, masked_psnr, moving_mask, simulate

NAMED = ("zero", "negated", "random")
MAX_FILE_BYTES = 16 * 2**20  # an action file larger than this is refused, not read
MAX_STEPS = 1_000


@dataclass(frozen=True)
class ProbeSequence:
    """One action sequence of a probe: its label and ``(T, D)`` float32 actions."""

    label: str
    actions: np.ndarray


def _check_values(label: str, a: np.ndarray, dim: int) -> np.ndarray:
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim or len(a) == 0:
        raise ConfigError(
            f"{label}: actions must be (T, {dim}) (or one action of {dim}), got shape {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ConfigError(f"{label}: actions must be finite numbers")
    if np.abs(a).max() > 1.0:
        raise ConfigError(
            f"{label}: actions must lie in [-1, 1] (the simulator's action box), got {np.abs(a).max():g}"
        )
    return a.astype(np.float32)


def _read_file(path: Path, dim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: action file not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(
            f"{path}: action file of {size:,} bytes, more than the {MAX_FILE_BYTES:,} a probe reads"
        )
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            a = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise DataError(f"{path}: action files are .npy, .csv or .txt")
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable action file ({str(e).splitlines()[0]})") from None
    if not np.issubdtype(np.asarray(a).dtype, np.number):
        raise DataError(f"{path}: actions must be numbers, got dtype {np.asarray(a).dtype}")
    return _check_values(str(path), np.asarray(a, np.float64), dim)


def parse_sequence(spec: str, demo: np.ndarray, steps: int, seed: int = 0) -> ProbeSequence:
    """One ``--actions`` value (module docstring) -> its sequence of at most ``steps`` steps;
    ``demo``: the episode's ``(T, D)`` actions."""
    dim = demo.shape[1]
    t = min(steps, len(demo))
    if spec == "zero":
        return ProbeSequence("zero", np.zeros((t, dim), np.float32))
    if spec == "negated":
        return ProbeSequence("negated", -demo[:t].astype(np.float32))
    if spec == "random":
        rng = np.random.default_rng([seed, 17])
        return ProbeSequence("random", rng.uniform(-1.0, 1.0, (t, dim)).astype(np.float32))
    if spec.startswith("hold:"):
        try:
            value = np.array([float(x) for x in spec[5:].split(",")], np.float64)
        except ValueError:
            raise ConfigError(f"{spec}: expected hold:a,b,... with {dim} numbers") from None
        a = _check_values(spec, value, dim)
        return ProbeSequence(f"hold {spec[5:]}", np.repeat(a, t, axis=0))
    if spec.endswith((".npy", ".csv", ".txt")):
        a = _read_file(Path(spec), dim)
        return ProbeSequence(Path(spec).name, a[:t])
    raise ConfigError(
        f"unknown action sequence {spec!r}: use {', '.join(NAMED)}, hold:a,b,... or a .npy/.csv/.txt file"
    )


def _last_change(video: np.ndarray, first: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change (levels) of the video's last frame from ``first`` on ``mask``'s last frame."""
    m = mask[len(video) - 1]
    if not m.any():
        return 0.0
    diff = np.abs(video[-1].astype(np.int16) - first.astype(np.int16)).mean(axis=-1)
    return float(diff[m].mean())


def run_probe(
    world_model: Any, env: Any, start: StartState, sequences: Sequence[ProbeSequence]
) -> dict[str, Any]:
    """Simulate and imagine ``sequences`` from ``start`` (the demonstration's actions are added
    as the first row); returns the scores and the videos (``sim``, ``pred``: one per row)."""
    if not sequences:
        raise ConfigError("a probe needs at least one action sequence")
    steps = max(len(s.actions) for s in sequences)
    rows = [ProbeSequence("demonstration", np.asarray(start.actions[:steps], np.float32)), *sequences]
    check_start(env, start)
    sims = [simulate(env, start, r.actions) for r in rows]
    acts = np.zeros((len(rows), steps, rows[0].actions.shape[1]), np.float32)  # no row is longer than steps
    for i, r in enumerate(rows):
        acts[i, : len(r.actions)] = r.actions
    video = world_model.rollout(np.repeat(start.first_frame[None], len(rows), axis=0), acts)
    preds = [video[i, : len(r.actions)] for i, r in enumerate(rows)]
    mask = moving_mask(start.first_frame, sims)
    blind = preds[0]
    scores = []
    for r, sim, pred in zip(rows, sims, preds):
        t = len(sim)
        own = masked_psnr(pred, sim, mask[:t])
        still = np.repeat(start.first_frame[None], t, axis=0)
        scores.append(
            {
                "sequence": r.label,
                "steps": t,
                "psnr_moving_first": float(own[0]),
                "psnr_moving_last": float(own[-1]),
                "action_blind_last": float(masked_psnr(blind[:t], sim, mask[:t])[-1]),
                "repeat_first_last": float(masked_psnr(still, sim, mask[:t])[-1]),
                "change_simulator": _last_change(sim, start.first_frame, mask),
                "change_imagined": _last_change(pred, start.first_frame, mask),
                "moving_share": float(mask[t - 1].mean()),
            }
        )
    return {"episode": start.key, "task": start.task, "rows": scores, "sim": sims, "pred": preds}


def probe_markdown(doc: dict[str, Any]) -> str:
    """The probe's table (PSNR in dB on moving pixels; change in levels)."""
    head = (
        "| actions | steps | imagined vs. simulator, step 1 | last step | action-blind, last | "
        "repeat first frame, last | change from frame 0: simulator | imagined |"
    )
    lines = [
        f"Probe of `{doc['checkpoint']}` on episode `{doc['episode']}` ({doc['task']}) from step "
        f"{doc.get('start_step', 0)}, guidance "
        f"w = {doc['guidance']:g}. PSNR (dB) on the pixels that move in any simulated video; "
        "change: mean absolute change of the last frame from the first on those pixels (levels of 255).",
        "",
        head,
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        blind = "—" if r["sequence"] == "demonstration" else f"{r['action_blind_last']:.2f}"
        cells = [
            r["sequence"],
            str(r["steps"]),
            f"{r['psnr_moving_first']:.2f}",
            f"{r['psnr_moving_last']:.2f}",
            blind,
            f"{r['repeat_first_last']:.2f}",
            f"{r['change_simulator']:.1f}",
            f"{r['change_imagined']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def probe_world(
    checkpoint: str | Path,
    episodes_path: str | Path,
    out_dir: str | Path,
    specs: Sequence[str],
    episode: str | None = None,
    steps: int = 10,
    start_step: int = 0,
    guidance: float | None = None,
    suite: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run a probe from a checkpoint and its episode store; write ``probe.json``, ``probe.md``
    and ``probe.gif`` into ``out_dir``. ``episode``: a key of the store (default: the first
    episode the checkpoint holds out); ``start_step``: start from that step of the episode (the
    simulator replays the demonstration's executed actions up to it; the world model starts
    from the recorded frame there); ``suite``: the simulator (default: the one the store
    records)."""
    from worldvla.data.episodes import EpisodeReader
    from worldvla.eval.policy_eval import save_gif
    from worldvla.eval.world_eval import recorded_suite, sequence_grid, start_state
    from worldvla.utils.io import atomic_write_text
    from worldvla.utils.provenance import provenance
    from worldvla.world_model import WorldModel

    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"--steps must be in 1..{MAX_STEPS}, got {steps}")
    if not specs:
        raise ConfigError("give at least one action sequence (--actions)")
    wm = WorldModel.from_pretrained(checkpoint, guidance=guidance)
    with EpisodeReader(episodes_path) as reader:
        key = episode or next(iter(wm.bundle.val_episodes), None)
        if key is None:
            raise DataError(
                f"{checkpoint}: the checkpoint records no held-out episode; choose one with --episode"
            )
        if key not in reader.keys:
            raise DataError(f"{episodes_path}: no episode {key!r} (e.g. {', '.join(reader.keys[:3])})")
        ep = reader[key]
        cam = wm.layout.camera or reader.cameras[0]
        executed = ep.executed_actions if ep.executed_actions is not None else ep.actions
        if not 0 <= start_step < len(executed):
            raise ConfigError(
                f"--start-step must be in 0..{len(executed) - 1} for episode {key!r}, got {start_step}"
            )
        start = replace(
            start_state(key, ep, ep.frames[cam][start_step], executed[start_step:]),
            prefix=np.asarray(executed[:start_step], np.float32) if start_step else None,
        )
        sequences = [parse_sequence(s, start.actions, steps, seed) for s in specs]
        suite = suite or recorded_suite(reader, episodes_path)
    env = suite.make_env()
    try:
        result = run_probe(wm, env, start, sequences)
    finally:
        env.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": provenance(
            checkpoint=str(checkpoint),
            episodes=str(episodes_path),
            specs=list(specs),
            steps=steps,
            start_step=start_step,
        ),
        "checkpoint": str(checkpoint),
        "episode": result["episode"],
        "start_step": start_step,
        "task": result["task"],
        "guidance": wm.guidance,
        "suite": suite.name,
        "rows": result["rows"],
        "actions": {
            r["sequence"]: s.tolist() for r, s in zip(result["rows"][1:], (q.actions for q in sequences))
        },
    }
    save_gif(out / "probe.gif", sequence_grid(list(zip(result["sim"], result["pred"]))), scale=2, fps=6)
    atomic_write_text(out / "probe.md", probe_markdown(doc))
    atomic_write_text(out / "probe.json", json.dumps(doc, indent=2) + "\n")
    return doc
