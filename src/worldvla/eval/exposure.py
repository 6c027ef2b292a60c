"""Held-out losses of several runs at equal exposure: as many samples of one kind seen.

The paper's claims compare a joint run with a single-role one at equal exposure (the joint
run trains twice the steps, so that it sees as many action — or world-model — samples).
Judged on their final numbers alone, two such runs say nothing about the way there; their
validation curves do. A run's ``metrics.jsonl`` records, at every validation, the held-out
``action_loss`` and ``world_loss`` (the ``val`` split) by *step*; the samples of a kind seen
by step ``s`` are ``s · batch_size · share``, where ``share`` is the kind's share of the
training stream (:attr:`TrainConfig.effective_world_fraction`, read from the run's latest
checkpoint). :func:`compare_at_exposure` puts the runs' losses side by side at every exposure
all of them validated at; :func:`exposure_markdown` writes that table.

The losses are comparable only when the runs hold out the same episodes of the same token
cache (same ``split_seed`` and ``val_fraction``, same validation batches): the table lists
what differs, and refuses runs whose held-out episodes differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldvla.errors import ConfigError, DataError

KINDS = ("action", "world")
METRICS_FILE = "metrics.jsonl"
# Training fields that decide what a held-out loss is measured on; a difference is listed.
_SAME = ("split_seed", "val_fraction", "val_batches", "model", "world_horizon", "state_bins")


@dataclass(frozen=True)
class RunCurve:
    """One run's held-out loss of one kind, by samples of that kind seen."""

    run: str
    kind: str
    samples_per_step: float  # samples of the kind per optimizer step
    steps: int  # the run's configured steps
    points: tuple[tuple[int, float], ...]  # (step, held-out loss), ascending steps
    train: dict[str, Any]  # the run's training config as stored
    val_episodes: tuple[str, ...]

    def at_samples(self) -> dict[int, float]:
        """``{samples seen: loss}`` (samples rounded to whole samples)."""
        return {round(s * self.samples_per_step): v for s, v in self.points}


def metrics_path(run: str | Path) -> Path:
    """The run's ``metrics.jsonl``: in the run directory or its ``train/`` (a quickstart's)."""
    run = Path(run)
    for path in (run / METRICS_FILE, run / "train" / METRICS_FILE):
        if path.is_file():
            return path
    raise DataError(f"{run}: no {METRICS_FILE} (looked in the folder and in its train/)")


def read_curve(run: str | Path, kind: str) -> RunCurve:
    """The held-out ``<kind>_loss`` of a run directory (training or quickstart run)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown sample kind {kind!r} (use one of {', '.join(KINDS)})")
    from worldvla.artifacts.checkpoint import read_config, resolve_checkpoint
    from worldvla.train.config import TrainConfig

    path = metrics_path(run)
    run_dir = path.parent
    doc = read_config(resolve_checkpoint(run_dir))
    try:
        cfg = TrainConfig.from_dict(doc["train"])
    except (KeyError, TypeError, ConfigError) as e:
        raise DataError(f"{run_dir}: the checkpoint's training config cannot be read ({e})") from None
    world = cfg.effective_world_fraction
    share = world if kind == "world" else 1.0 - world
    if share <= 0:
        raise ConfigError(f"{run}: the run trains no {kind} samples (world fraction {world:g})")
    points: dict[int, float] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or rec.get("split") != "val":
            continue
        step, loss = rec.get("step"), rec.get(f"{kind}_loss")
        if not isinstance(step, int) or isinstance(step, bool):
            raise DataError(f"{path}, line {n}: a validation record without an integer step")
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            points[step] = float(loss)  # a resumed run may validate a step again: the last counts
    if not points:
        raise DataError(f"{path}: no validation record with {kind}_loss")
    return RunCurve(
        run=str(run),
        kind=kind,
        samples_per_step=cfg.batch_size * share,
        steps=cfg.steps,
        points=tuple(sorted(points.items())),
        train=doc["train"],
        val_episodes=tuple(doc.get("val_episodes") or ()),
    )


def compare_at_exposure(runs: list[str | Path], kind: str) -> dict[str, Any]:
    """The runs' held-out ``kind`` losses at every exposure all of them validated at.

    Returns ``{"kind", "runs": [{run, samples_per_step, steps, last_step}], "rows": [{samples,
    steps: [..], losses: [..]}], "differences": [..]}``; refuses fewer than two runs and runs
    that hold out different episodes."""
    if len(runs) < 2:
        raise ConfigError("compare at least two runs")
    curves = [read_curve(r, kind) for r in runs]
    first = curves[0]
    for c in curves[1:]:
        if c.val_episodes != first.val_episodes:
            raise DataError(
                f"{c.run} holds out other episodes than {first.run} "
                f"({len(c.val_episodes)} vs. {len(first.val_episodes)}): their held-out losses do not compare"
            )
    differences = [
        f"{field}: " + ", ".join(f"{Path(c.run).name}={c.train.get(field)!r}" for c in curves)
        for field in _SAME
        if len({json.dumps(c.train.get(field)) for c in curves}) > 1
    ]
    maps = [c.at_samples() for c in curves]
    common = sorted(set.intersection(*(set(m) for m in maps)))
    rows = [
        {
            "samples": s,
            "steps": [round(s / c.samples_per_step) for c in curves],
            "losses": [m[s] for m in maps],
        }
        for s in common
    ]
    return {
        "kind": kind,
        "runs": [
            {
                "run": c.run,
                "samples_per_step": c.samples_per_step,
                "steps": c.steps,
                "last_step": c.points[-1][0],
            }
            for c in curves
        ],
        "rows": rows,
        "differences": differences,
    }


def exposure_markdown(doc: dict[str, Any]) -> str:
    """The comparison as a markdown table (Δ: each run's loss minus the first run's)."""
    runs = doc["runs"]
    names = [f"`{Path(r['run']).name}`" for r in runs]
    head = ["samples seen", *[f"{n} step" for n in names], *[f"{n} loss" for n in names]]
    head += [f"Δ {n}" for n in names[1:]]
    lines = [
        f"Held-out {doc['kind']} loss (nats per token) at equal {doc['kind']}-sample exposure "
        f"(Δ: run minus {names[0]}; lower is better).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in doc["rows"]:
        losses = row["losses"]
        cells = [f"{row['samples']:,}", *[f"{s:,}" for s in row["steps"]], *[f"{v:.4f}" for v in losses]]
        cells += [f"{v - losses[0]:+.4f}" for v in losses[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    if not doc["rows"]:
        lines.append("| (no exposure at which every run validated) |" + " |" * (len(head) - 1))
    lines.append("")
    for r, n in zip(runs, names):
        per = r["samples_per_step"]
        lines.append(
            f"- {n}: {per:g} {doc['kind']} samples per step, validated up to step "
            f"{r['last_step']:,} of {r['steps']:,} (`{r['run']}`)"
        )
    for d in doc["differences"]:
        lines.append(f"- differs: {d}")
    return "\n".join(lines) + "\n"
