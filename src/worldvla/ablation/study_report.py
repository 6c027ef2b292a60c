"""The claims study's report: per level, the two claim comparisons at equal exposure.

For every level of :data:`worldvla.ablation.config.STUDY_LEVELS` the study has three runs
per seed; the report pairs them by seed:

- **claim 1** (world-model data improves the policy): ``<level>/joint`` against
  ``<level>/action-only`` on held-out action L1 (lower is better) and closed-loop success;
  the pre-training level compares ``pretrain/action-ft`` with ``base/action-only``;
- **claim 2** (action data improves the world model): ``<level>/joint`` against
  ``<level>/world-only`` on PSNR at 10 frames (and at the episode end), SSIM, and — where
  the runs were scored against the simulator — action fidelity and the gain over the
  action-blind rollout (:mod:`worldvla.eval.counterfactual`).

A difference is the mean over seeds of the per-seed difference (the runs of one seed
share their held-out episodes), with the half-width of its 95% Student-t interval. The
verdict reads the interval of the first metric of each claim: **holds** when it lies on
the claim's side of zero, **reversed** when it lies on the other side, **not decided**
when it contains zero. Each run is judged at its best held-out loss of the compared
kind; the table says at which step, and whether the run stopped itself (converged) or
reached the step cap.

Outputs (atomically): ``table.md``, ``claims_vs_factor.png`` (the differences against the
factor's levels, 95% intervals) and ``runs.json`` (every run's raw result, the per-seed
differences and the provenance).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldvla.ablation.config import STUDY_LEVELS, VARIANTS, AblationConfig
from worldvla.eval.stats import mean_ci
from worldvla.utils.io import atomic_path, atomic_write_text

Result = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    label: str
    read: Callable[[Result], float | None]
    better: int  # +1: higher is better, -1: lower is better
    digits: int = 1


def _world(length: int | str, metric: str) -> Callable[[Result], float | None]:
    def read(r: Result) -> float | None:
        rows = [w for w in r.get("world", []) if w["method"] == "worldvla"]
        if length == "end":
            rows = rows[-1:]  # the longest requested rollout: stopped at the episode end
        else:
            rows = [w for w in rows if w["requested_length"] == length]
        if not rows:
            return None
        return rows[0][metric]  # SSIM is stored ×100 already (eval.metrics.image.frame_metrics)

    return read


def _cf(key: str) -> Callable[[Result], float | None]:
    def read(r: Result) -> float | None:
        cf = r.get("counterfactual") or {}
        if key == "fidelity":
            v = (cf.get("fidelity") or {}).get("10", {}).get("db")
        else:
            v = (cf.get("targets") or {}).get(key)
        return None if v is None or not math.isfinite(v) else float(v)

    return read


CLAIM1_METRICS = (
    Metric("action L1 ×100", lambda r: 100 * r["offline"]["l1"] if "offline" in r else None, -1),
    Metric("success %", lambda r: 100 * r["policy"]["success"] if "policy" in r else None, +1, 0),
)
CLAIM2_METRICS = (
    Metric("PSNR@10 dB", _world(10, "psnr"), +1, 2),
    Metric("PSNR@end dB", _world("end", "psnr"), +1, 2),
    Metric("SSIM@10 ×100", _world(10, "ssim"), +1, 1),
    Metric("fidelity@10 dB", _cf("fidelity"), +1, 2),
    Metric("gain over blind@10 dB", _cf("gain_over_blind_db"), +1, 2),
)


@dataclass(frozen=True)
class Comparison:
    claim: int
    level: str
    factor: str
    label: str
    baseline: str  # the variant without the other data kind
    joint: str  # the variant with it (or pre-trained on it)
    kind: str  # the sample kind compared: "action" (claim 1) or "world" (claim 2)

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return CLAIM1_METRICS if self.claim == 1 else CLAIM2_METRICS


def comparisons(cfg: AblationConfig) -> list[Comparison]:
    """The claim comparisons whose two variants are both in ``cfg``, in level order."""
    out = []
    for level, (factor, label, _) in STUDY_LEVELS.items():
        for claim, single, kind in ((1, "action-only", "action"), (2, "world-only", "world")):
            a, b = f"{level}/{single}", f"{level}/joint"
            if a in cfg.variants and b in cfg.variants:
                out.append(Comparison(claim, level, factor, label, a, b, kind))
    if "pretrain/action-ft" in cfg.variants and "base/action-only" in cfg.variants:
        label = "world-model pre-training, then action fine-tuning"
        out.append(
            Comparison(
                1, "pretrain", "pre-training", label, "base/action-only", "pretrain/action-ft", "action"
            )
        )
    return out


def _by_seed(results: list[Result]) -> dict[int, Result]:
    return {int(r["seed"]): r for r in results}


def paired(cmp: Comparison, res: dict[str, list[Result]], metric: Metric) -> dict[str, Any]:
    """Both arms and their per-seed difference (``joint - baseline``) on the seeds both finished."""
    a, b = _by_seed(res.get(cmp.baseline, [])), _by_seed(res.get(cmp.joint, []))
    seeds = sorted(
        s for s in set(a) & set(b) if metric.read(a[s]) is not None and metric.read(b[s]) is not None
    )
    va = [float(metric.read(a[s])) for s in seeds]  # type: ignore[arg-type]
    vb = [float(metric.read(b[s])) for s in seeds]  # type: ignore[arg-type]
    diffs = [y - x for x, y in zip(va, vb, strict=True)]
    out: dict[str, Any] = {"seeds": seeds, "baseline": va, "joint": vb, "diff": diffs}
    for name, vals in (("baseline", va), ("joint", vb), ("diff", diffs)):
        m, h = mean_ci(vals) if vals else (math.nan, math.nan)
        out[f"{name}_mean"], out[f"{name}_ci95"] = m, (h if len(vals) > 1 else math.nan)
    return out


def verdict(p: dict[str, Any], better: int) -> str:
    """The claim's reading of one paired difference (module docstring)."""
    n, m, h = len(p["diff"]), p["diff_mean"], p["diff_ci95"]
    if n < 2 or not math.isfinite(h):
        return "— (fewer than 2 seeds)"
    low, high = m - h, m + h
    if better * low > 0 and better * high > 0:
        return "holds"
    if better * low < 0 and better * high < 0:
        return "reversed"
    return "not decided"


def _fmt(m: float, h: float, digits: int, signed: bool = False) -> str:
    if not math.isfinite(m):
        return "—"
    sign = "+" if signed else ""
    return f"{m:{sign}.{digits}f} ± {h:.{digits}f}" if math.isfinite(h) else f"{m:{sign}.{digits}f}"


def _exposure(results: list[Result], kind: str) -> tuple[str, str]:
    """Mean step of the best held-out loss of ``kind``, and how many runs converged (of all)."""
    steps = [r["best"][kind]["step"] for r in results if kind in r.get("best", {})]
    converged = sum(1 for r in results if r.get("stopped_early"))
    step = f"{sum(steps) / len(steps):,.0f}" if steps else "—"
    return step, f"{converged}/{len(results)}" if results else "—"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def study_tables(cfg: AblationConfig, res: dict[str, list[Result]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown of both claims' tables and the comparisons as data (for runs.json)."""
    parts, data = [], []
    for claim, title, first in (
        (1, "Claim 1 — world-model data improves the policy", "action-only"),
        (2, "Claim 2 — action data improves the world model", "world-only"),
    ):
        cmps = [c for c in comparisons(cfg) if c.claim == claim]
        if not cmps:
            continue
        metrics = cmps[0].metrics
        lead = metrics[0]
        header = ["level", "factor", f"{lead.label}: without", "with", "Δ (with − without)"]
        header += [f"Δ {m.label}" for m in metrics[1:]]
        header += ["best step (without / with)", "converged (without / with)", "seeds", "verdict"]
        rows = []
        for c in cmps:
            row = [f"`{c.level}` ({c.label})", c.factor]
            entry: dict[str, Any] = {
                "claim": claim,
                "level": c.level,
                "factor": c.factor,
                "without": c.baseline,
                "with": c.joint,
                "metrics": {},
            }
            for m in metrics:
                p = paired(c, res, m)
                entry["metrics"][m.label] = p | {
                    "verdict": verdict(p, m.better),
                    "higher_is_better": m.better > 0,
                }
                if m is lead:
                    row += [
                        _fmt(p["baseline_mean"], p["baseline_ci95"], m.digits),
                        _fmt(p["joint_mean"], p["joint_ci95"], m.digits),
                    ]
                row.append(_fmt(p["diff_mean"], p["diff_ci95"], m.digits, signed=True))
            sa, ca = _exposure(res.get(c.baseline, []), c.kind)
            sb, cb = _exposure(res.get(c.joint, []), c.kind)
            n = len(entry["metrics"][metrics[0].label]["diff"])
            entry["verdict"] = entry["metrics"][metrics[0].label]["verdict"]
            row += [
                f"{sa} / {sb}",
                f"{ca} / {cb}",
                f"{n} of {len(cfg.seeds_of(c.joint))}",
                f"**{entry['verdict']}**",
            ]
            rows.append(row)
            data.append(entry)
        pretrain = (
            " Pre-training: `pretrain/action-ft` (base/world-only's best world model fine-tuned on "
            "action data; its best step counts the fine-tuning only) against `base/action-only`."
            if claim == 1
            else ""
        )
        direction = "lower" if lead.better < 0 else "higher"
        parts += [
            f"## {title}",
            "",
            f"Without: `<level>/{first}`; with: `<level>/joint` (2× the steps: as many samples of the "
            f"compared kind).{pretrain} Verdict on {lead.label} ({direction} is better); Δ of every "
            "metric is with − without.",
            "",
            _table(header, rows),
            "",
        ]
    return "\n".join(parts), data


def _build(r: Result) -> str | None:
    """A short name of the data build a run trained on (None: the run has no record)."""
    d = r.get("data") or {}
    if not d.get("collection") and not d.get("tokenizer"):
        return None
    return f"{str(d.get('collection'))[:8]}/{str(d.get('tokenizer'))[:8]}"


def data_note(cfg: AblationConfig, res: dict[str, list[Result]]) -> str:
    """Which data builds (collection digest / tokenizer fingerprint) the runs trained on, and
    the compared pairs that straddle a change: one run recorded, the other on another build or
    without a record (pairs of two unrecorded runs cannot be told apart)."""
    runs = [r for rs in res.values() for r in rs]
    builds: dict[str | None, set[str]] = {}
    for r in runs:
        builds.setdefault(_build(r), set()).add(str(r.get("key")))
    known = sorted((b, len(k)) for b, k in builds.items() if b is not None)
    parts = [f"`{b}` ({n} run{'s' if n != 1 else ''})" for b, n in known]
    if None in builds:
        parts.append(f"no record ({len(builds[None])} runs, finished before runs recorded it)")
    if not parts:
        return ""
    mixed = []
    for c in comparisons(cfg):
        a, b = _by_seed(res.get(c.baseline, [])), _by_seed(res.get(c.joint, []))
        for seed in sorted(set(a) & set(b)):
            ba, bb = _build(a[seed]), _build(b[seed])
            if (ba is not None or bb is not None) and ba != bb:
                mixed.append(f"{c.level} claim {c.claim} seed {seed}")
    note = "Data builds (collection digest / tokenizer fingerprint): " + ", ".join(parts) + "."
    if mixed and len(builds) > 1:
        note += (
            " Pairs that straddle a change of build (the data stages were made again on another "
            f"machine between their runs): {', '.join(mixed)}."
        )
    return note


def write_study_table(
    out: Path, cfg: AblationConfig, res: dict[str, list[Result]], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    body, data = study_tables(cfg, res)
    machine = meta.get("machine", {})
    base = dict(cfg.base_changes)
    head = [
        f"# Claims study `{cfg.name}`",
        "",
        f"Command: `{meta.get('command')}` · commit `{meta.get('commit')}` · machine: "
        f"{machine.get('cpus')} CPUs, {machine.get('platform')} · data `{cfg.experiment}`, base preset "
        f"`{cfg.train}` with {', '.join(f'{k}={v}' for k, v in base.items()) or 'no changes'} · at most "
        f"{cfg.steps:,} steps per single-role run ({2 * cfg.steps:,} joint), early stopping after "
        f"{base.get('early_stop_patience', 0)} validations without improvement · seeds {list(cfg.seeds)} · "
        f"{cfg.eval_episodes_per_task} closed-loop episodes per task, {cfg.eval_world_episodes} world-model "
        "episodes per run.",
        "",
        "Means over seeds ± the half-width of a 95% Student-t interval; Δ is the mean of the per-seed "
        "differences. Best step: the step of the best held-out loss of the compared kind (the "
        "checkpoint evaluated); converged: runs that stopped themselves rather than at the step cap.",
        "",
    ]
    note = data_note(cfg, res)
    if note:
        head += [note, ""]
    atomic_write_text(out / "table.md", "\n".join(head) + "\n" + body)
    return data


def plot_study(path: Path, data: list[dict[str, Any]]) -> bool:
    """Each claim's first-metric difference against the levels, grouped by factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    drawn = False
    for ax, claim, ylabel in (
        (axes[0], 1, "action L1 ×100: action-only − joint\n(> 0: world data helps the policy)"),
        (axes[1], 2, "PSNR@10 dB: joint − world-only\n(> 0: action data helps the world model)"),
    ):
        entries = [e for e in data if e["claim"] == claim]
        xs, ms, hs, labels = [], [], [], []
        for i, e in enumerate(entries):
            p = next(iter(e["metrics"].values()))
            sign = -1.0 if not p["higher_is_better"] else 1.0  # plot "improvement from the other data"
            if p["diff"]:
                ax.plot([i] * len(p["diff"]), [sign * d for d in p["diff"]], ".", color="0.6", ms=5)
                xs.append(i)
                ms.append(sign * p["diff_mean"])
                hs.append(p["diff_ci95"] if math.isfinite(p["diff_ci95"]) else 0.0)
            labels.append(f"{e['level']}\n({e['factor']})")
        if xs:
            ax.errorbar(xs, ms, yerr=hs, fmt="o", capsize=4)
            drawn = True
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30, ha="right")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(f"claim {claim}")
    if not drawn:
        plt.close(fig)
        return False
    fig.suptitle(
        "Joint against single-role training at equal exposure: mean over seeds with its 95% CI (blue), "
        "each seed (grey)",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def aggregate_study(
    out: Path,
    cfg: AblationConfig,
    res: dict[str, list[Result]],
    meta: dict[str, Any],
    init_runs: list[Result] | None = None,
) -> Path:
    """Write table.md, claims_vs_factor.png and runs.json into ``out`` (``init_runs``: the
    results of runs that the selected variants start from but do not name)."""
    data = write_study_table(out, cfg, res, meta)
    plot_study(out / "claims_vs_factor.png", data)
    doc = {
        "ablation": cfg.to_dict(),
        "provenance": {k: meta.get(k) for k in ("command", "commit", "time", "machine", "preset", "budget")},
        "baselines": meta.get("baselines"),
        "comparisons": data,
        "variants": {
            name: {"description": VARIANTS.description(name), "runs": res.get(name, [])}
            for name in cfg.variants
        },
        "init_runs": list(init_runs or []),
    }
    atomic_write_text(out / "runs.json", json.dumps(doc, indent=2) + "\n")
    return out / "table.md"
