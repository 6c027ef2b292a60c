"""Tables, plot and raw JSON of an ablation, from the ``result.json`` of its runs.

Only finished runs are counted; a variant with fewer seeds than asked says so in its row.
Means over seeds come with the half-width of a 95% Student-t interval
(:func:`worldvla.eval.stats.mean_ci`); a single seed has no interval.

Outputs (atomically): ``table.md`` (the paper's table layout, SPEC §8), ``success_vs_chunk.png``
(success against chunk length, with and without the mask), ``runs.json`` (every run's
raw per-seed result and the provenance of the ablation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worldvla.ablation.config import VARIANTS, AblationConfig, resolve
from worldvla.ablation.plan import plan
from worldvla.eval.stats import mean_ci
from worldvla.utils.io import atomic_path, atomic_write_text

CHUNK_SWEEP = {  # (K, mask) -> variant of the full model
    (1, True): "joint-k1",
    (1, False): "k1-causal",
    (5, True): "full",
    (5, False): "k5-causal",
    (10, True): "k10-mask",
    (10, False): "k10-causal",
    (20, True): "k20-mask",
    (20, False): "k20-causal",
}


def collect_results(run_dir: Path, cfg: AblationConfig) -> dict[str, list[dict[str, Any]]]:
    """``{variant: [result of seed s, ...]}`` for the finished runs of ``cfg`` (seed order)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in plan(cfg):  # seed-major, so each variant's results come in seed order
        path = run_dir / "runs" / r.key / "result.json"
        if path.exists():
            doc = json.loads(path.read_text())
            for name in r.variants:
                if name in cfg.variants:
                    out.setdefault(name, []).append(doc)
    return out


def init_only_results(run_dir: Path, cfg: AblationConfig) -> list[dict[str, Any]]:
    """Results of finished runs that selected variants start from (``init_from``) but that no
    selected variant names: kept in runs.json beside the variants' runs, so that every
    finished run of the plan is recorded (:mod:`worldvla.ablation.restore` reads them)."""
    out = []
    for r in plan(cfg):
        path = run_dir / "runs" / r.key / "result.json"
        if path.exists() and not set(r.variants) & set(cfg.variants):
            out.append(json.loads(path.read_text()))
    return out


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "—"
    m, h = mean_ci([scale * v for v in values])
    return f"{m:.{digits}f} ± {h:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _success(results: list[dict[str, Any]]) -> list[float]:
    return [r["policy"]["success"] for r in results if "policy" in r]


def _l1(results: list[dict[str, Any]], field: str = "l1") -> list[float]:
    return [r["offline"][field] for r in results if "offline" in r]


def _world(results: list[dict[str, Any]], method: str, length: int, metric: str) -> list[float]:
    return [
        row[metric]
        for r in results
        for row in r.get("world", [])
        if row["method"] == method and row["requested_length"] == length
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _seeds(results: list[dict[str, Any]], cfg: AblationConfig) -> str:
    n = len(results)
    return f"{n}" if n == len(cfg.seeds) else f"{n} of {len(cfg.seeds)}"


def _policy_rows(names: list[str], res: dict[str, list[dict]], cfg: AblationConfig) -> list[list[str]]:
    rows = []
    for name in names:
        if name not in cfg.variants:
            continue
        t = resolve(cfg, name, cfg.seeds[0])
        rs = res.get(name, [])
        per_seed = ", ".join(f"{100 * s:.0f}" for s in _success(rs)) or "—"
        rows.append(
            [
                name,
                "✓" if t.use_world_data else "",
                str(t.chunk_len),
                "—" if t.chunk_len == 1 else ("chunk" if t.chunk_mask else "causal"),
                str(t.history),
                str(t.steps),
                _fmt(_success(rs)),
                per_seed,
                _fmt(_l1(rs), 100, 1),
                _fmt(_l1(rs, "l1_first"), 100, 1),
                _seeds(rs, cfg),
            ]
        )
    return rows


def write_table(run_dir: Path, cfg: AblationConfig, res: dict[str, list[dict]], meta: dict[str, Any]) -> str:
    header = [
        "variant",
        "world data",
        "K",
        "mask",
        "M",
        "steps",
        "success % (mean ± 95% CI)",
        "per seed",
        "action L1 ×100",
        "first-action L1 ×100",
        "seeds",
    ]
    claim1 = _policy_rows(["action-only-k1", "joint-k1", "joint-k1-matched"], res, cfg)
    claim3 = _policy_rows(["action-only-k5-causal", "action-only-k5-mask", "k5-causal", "full"], res, cfg)
    history = _policy_rows(["full", "history-2", "history-4"], res, cfg)
    parts = [
        f"# Ablation `{cfg.name}`",
        "",
        f"Command: `{meta.get('command')}` · commit `{meta.get('commit')}` · "
        f"machine: {meta.get('machine', {}).get('cpus')} CPUs, {meta.get('machine', {}).get('platform')} · "
        f"{cfg.steps} optimizer steps per run (base preset `{cfg.train}`, data `{cfg.experiment}`), "
        f"seeds {list(cfg.seeds)}, {cfg.eval_episodes_per_task} held-out episodes per task per run.",
        "",
    ]
    base = meta.get("baselines")
    if base:
        parts += [
            "Closed-loop baselines on the same held-out episodes: "
            + ", ".join(f"{a} {100 * s['success']:.1f}%" for a, s in base.items())
            + ".",
            "",
        ]
    const = [v for rs in res.values() for v in _l1(rs, "baseline_mean_action_l1")]
    parts += [
        "With world_fraction 0.5 a joint model sees half as many action (or world) samples per "
        "step as a single-role model; `-matched` variants train 2× the steps to see as many.",
        "",
    ]
    parts += [
        "Mask `—`: with K = 1 there is no earlier action of the chunk to hide. "
        "Action L1: generated chunks vs. the demonstrations of the held-out validation episodes, "
        "in normalized units (×100; each dimension's range mapped to [-1, 1]), averaged over the chunk"
        + (
            f"; predicting the mean held-out action scores {100 * min(const):.1f}–{100 * max(const):.1f} "
            "(the compared steps depend on K)."
            if const
            else "."
        )
        + " Lower is better; success is higher-better.",
        "",
    ]
    for title, rows in (
        ("Claim 1 — world-model data improves the policy", claim1),
        ("Claim 3 — action chunks need the attention mask", claim3),
        ("History frames M (chunk + mask model)", history),
    ):
        if len(rows) > 1:  # a comparison needs two rows
            parts += [f"## {title}", "", _table(header, rows), ""]
    positions = []
    for name in ("action-only-k5-causal", "action-only-k5-mask", "k5-causal", "full"):
        per = [
            r["offline"]["l1_per_position"]
            for r in res.get(name, [])
            if "l1_per_position" in r.get("offline", {})
        ]
        if name in cfg.variants and per:
            positions.append([name, *(f"{100 * sum(col) / len(col):.1f}" for col in zip(*per))])
    if len(positions) > 1:
        k = max(len(r) - 1 for r in positions)
        parts += [
            "Action L1 ×100 by position in the chunk (mean over seeds): error propagation inside a chunk.",
            "",
            _table(["variant", *(f"action {i + 1}" for i in range(k))], positions),
            "",
        ]
    sweep = []
    for k in sorted({k for k, _ in CHUNK_SWEEP}):
        cells = []
        for metric in (_success, _l1):
            for mask in (False, True):
                name = CHUNK_SWEEP[(k, mask)]
                rs = res.get(name, []) if name in cfg.variants else []
                cells.append(_fmt(metric(rs)) if rs else "—")
        if any(c != "—" for c in cells):
            sweep.append([str(k), *cells])
    if sweep:
        parts += [
            "## Chunk length K (full model)",
            "",
            _table(
                [
                    "K",
                    "success %, causal",
                    "success %, chunk mask",
                    "action L1 ×100, causal",
                    "action L1 ×100, chunk mask",
                ],
                sweep,
            ),
            "",
        ]
    world_rows = []
    for name in ("world-only", "full", "full-matched"):
        if name not in cfg.variants or name not in res:
            continue
        cells = [f"{name} ({resolve(cfg, name, cfg.seeds[0]).steps} steps)"]
        for n in cfg.rollout_lengths:
            cells += [
                _fmt(_world(res[name], "worldvla", n, "psnr"), 1, 2),
                _fmt(_world(res[name], "worldvla", n, "ssim"), 1, 1),
            ]
        world_rows.append(cells)
    if world_rows:
        any_res = res.get("full") or res.get("world-only") or []
        cells = ["repeat last frame"]
        for n in cfg.rollout_lengths:
            cells += [
                _fmt(_world(any_res, "repeat-last", n, "psnr"), 1, 2),
                _fmt(_world(any_res, "repeat-last", n, "ssim"), 1, 1),
            ]
        world_rows.append(cells)
        header2 = ["model"]
        for n in cfg.rollout_lengths:
            header2 += [f"PSNR@{n} (dB)", f"SSIM@{n} (×100)"]
        parts += [
            "## Claim 2 — action data improves the world model on long rollouts",
            "",
            _table(header2, world_rows),
            "",
            "Rollouts longer than an episode stop at its end (`length` in runs.json).",
            "",
        ]
    text = "\n".join(parts)
    atomic_write_text(run_dir / "table.md", text)
    return text


def plot_chunk_sweep(path: Path, cfg: AblationConfig, res: dict[str, list[dict]]) -> bool:
    """Success and held-out action L1 against K, with and without the chunk mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    drawn = False
    for ax, metric, scale, ylabel in (
        (axes[0], _success, 100.0, "closed-loop success (%)"),
        (axes[1], _l1, 100.0, "held-out action L1 (×100)"),
    ):
        for mask, label in ((True, "chunk mask"), (False, "causal mask")):
            ks, ms, hs = [], [], []
            for (k, m), name in sorted(CHUNK_SWEEP.items()):
                vals = metric(res.get(name, [])) if m == mask and name in cfg.variants else []
                if vals:
                    mean, half = mean_ci([scale * v for v in vals])
                    ks.append(k), ms.append(mean), hs.append(half)
            if ks:
                ax.errorbar(ks, ms, yerr=hs, marker="o", capsize=3, label=label)
                drawn = True
        ax.set(xlabel="chunk length K", ylabel=ylabel)
        ax.set_xticks(sorted({k for k, _ in CHUNK_SWEEP}))
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if not drawn:
        plt.close(fig)
        return False
    axes[0].set_ylim(0, 100)
    fig.suptitle(f"{cfg.name}: chunk length, with and without the mask (mean over seeds, 95% CI)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def aggregate(run_dir: str | Path, cfg: AblationConfig, out_dir: str | Path | None = None) -> Path:
    """Write table.md, success_vs_chunk.png and runs.json into ``out_dir`` (default ``run_dir``);
    for the claims study (``cfg.report == "study"``) its own tables and plot
    (:mod:`worldvla.ablation.study_report`)."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    res = collect_results(run, cfg)
    meta = json.loads((run / "ablation.json").read_text()) if (run / "ablation.json").exists() else {}
    base_path = run / "baselines" / "results.json"
    if base_path.exists():
        base = json.loads(base_path.read_text())["summary"]
        meta["baselines"] = {a: {"success": s["success"], "ci95": s["ci95"]} for a, s in base.items()}
    if cfg.report == "study":
        from worldvla.ablation.study_report import aggregate_study

        return aggregate_study(out, cfg, res, meta, init_only_results(run, cfg))
    write_table(out, cfg, res, meta)
    plot_chunk_sweep(out / "success_vs_chunk.png", cfg, res)
    doc = {
        "ablation": cfg.to_dict(),
        "provenance": {k: meta.get(k) for k in ("command", "commit", "time", "machine", "preset", "budget")},
        "baselines": meta.get("baselines"),
        "variants": {
            name: {"description": VARIANTS.description(name), "runs": res.get(name, [])}
            for name in cfg.variants
        },
        "init_runs": init_only_results(run, cfg),
    }
    atomic_write_text(out / "runs.json", json.dumps(doc, indent=2) + "\n")
    return out / "table.md"
