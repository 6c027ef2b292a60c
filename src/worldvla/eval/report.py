"""A report per run directory: ``report.md`` and ``report.html`` with tables, plots and GIFs.

Reads whatever the pipeline produced (missing parts are skipped, never invented):

    stages.json                 per-stage wall time (quickstart)
    tokenizer/metrics.json      held-out PSNR and codebook usage of the image tokenizer
    train/metrics.jsonl         training / validation curves
    eval_policy/results.json    closed-loop success per task, model and baselines
    eval_world/results.json     rollout metrics per length, model and baselines
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.errors import DataError
from worldvla.utils.io import atomic_write_text

NOT_COMPARABLE = "results are not comparable with the README's"
STAGE_NAMES = {"tokenizer": "image tokenizer", "train": "training"}  # in sentences about a stage
# Files a run directory may hold; a folder with none of them has nothing to report.
RESULT_FILES = (
    "stages.json",
    "tokenizer/metrics.json",
    "train/metrics.jsonl",
    "eval_policy/results.json",
    "eval_world/results.json",
)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        split = rec.get("split", "train")
        for k, v in rec.items():
            if k in ("step", "split") or not isinstance(v, (int, float)):
                continue
            out.setdefault(f"{split}/{k}", []).append((int(rec["step"]), float(v)))
    return out


def _plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    keys = [
        k
        for k in (
            "train/loss",
            "train/action_loss",
            "train/world_loss",
            "val/loss",
            "val/action_loss",
            "val/world_loss",
        )
        if k in curves
    ]
    accs = [
        k for k in ("train/action_acc", "val/action_acc", "train/image_acc", "val/image_acc") if k in curves
    ]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if accs else 1, figsize=(11 if accs else 6, 3.6), squeeze=False)
    for k in keys:
        s, v = zip(*curves[k])
        axes[0, 0].plot(s, v, label=k, marker="o" if k.startswith("val") else None, ms=3)
    axes[0, 0].set(xlabel="step", ylabel="loss", yscale="log", title="losses")
    axes[0, 0].legend(fontsize=7)
    for k in accs:
        s, v = zip(*curves[k])
        axes[0, 1].plot(s, v, label=k, marker="o" if k.startswith("val") else None, ms=3)
    if accs:
        axes[0, 1].set(xlabel="step", ylabel="token accuracy", title="accuracy")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_success(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = list(summary)
    tasks = list(next(iter(summary.values()))["per_task"])
    x = np.arange(len(tasks) + 1)
    width = 0.8 / len(agents)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(x), 3.6))
    for i, a in enumerate(agents):
        per = summary[a]["per_task"]
        vals = [100 * per[t]["success"] for t in tasks] + [100 * summary[a]["success"]]
        lo = [100 * (per[t]["success"] - per[t]["ci_low"]) for t in tasks] + [
            100 * (summary[a]["success"] - summary[a]["ci95"][0])
        ]
        hi = [100 * (per[t]["ci_high"] - per[t]["success"]) for t in tasks] + [
            100 * (summary[a]["ci95"][1] - summary[a]["success"])
        ]
        ax.bar(x + (i - (len(agents) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=2, label=a)
    ax.set_xticks(x, [t.replace("-v3", "") for t in tasks] + ["mean"], rotation=20, fontsize=8)
    ax.set(
        ylabel="success rate (%)", ylim=(0, 105), title="closed-loop success on held-out variations (95% CI)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _guidance_note(meta: dict[str, Any]) -> str:
    """One sentence when the frames were imagined with classifier-free guidance on the actions."""
    w = float(meta.get("guidance", 1.0))
    if w == 1.0:
        return ""
    return (
        f" Every frame imagined with classifier-free guidance on the actions, w = {w:g} "
        "(logits u + w(c - u) of the prompt without and with its actions; the teacher-forced "
        "check below reads the plain model)."
    )


def _plot_psnr(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = {}
    for r in rows:
        if r["method"] not in longest or r["length"] > longest[r["method"]]["length"]:
            longest[r["method"]] = r
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m, r in longest.items():
        ax.plot(np.arange(1, len(r["psnr_per_step"]) + 1), r["psnr_per_step"], label=m)
    ax.set(xlabel="rollout step", ylabel="PSNR (dB)", title="world-model rollouts vs. real frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _checkpoint_steps(train_dir: Path) -> int | None:
    """The step budget recorded by the latest checkpoint of ``train_dir`` (older stage records lack it)."""
    latest = train_dir / "checkpoints" / "latest"
    try:
        name = latest.read_text().strip()
        return int(_load(train_dir / "checkpoints" / name / "config.json")["train"]["steps"])
    except (OSError, TypeError, KeyError, ValueError):
        return None


def stage_shortfall(
    name: str, st: dict[str, Any], run: Path | None = None
) -> tuple[int | None, int | None, str] | None:
    """``(step, total_steps, reason)`` when a finished stage ended before its step budget, else None.

    Stage records of ``stages.json`` (``worldvla.pipeline``): ``step``, ``total_steps`` and
    ``stopped`` (the reason, e.g. "time cap"); records written before budgets were steps
    have ``stopped_by_budget`` instead, and no ``total_steps``.
    """
    if not st.get("done"):
        return None
    reason = st.get("stopped")
    if not reason and st.get("stopped_by_budget"):
        reason = "time cap"
    if not reason:
        return None
    total = st.get("total_steps")
    if total is None and name == "train" and run is not None:
        total = _checkpoint_steps(run / "train")
    return st.get("step"), total, str(reason)


def _shortfall_text(short: tuple[int | None, int | None, str]) -> str:
    step, total, reason = short
    if step is None:
        return f"stopped early ({reason})"
    if not total:
        return f"stopped at step {step:,} ({reason})"
    return f"stopped at {step:,}/{total:,} steps ({reason})"


def cut_short(stages: dict[str, Any], run: Path | None = None) -> dict[str, str]:
    """Stages of a ``stages.json`` document that ended early, e.g. train -> 'stopped at 277/1,500
    steps (time cap)'."""
    out = {}
    for name, st in (stages.get("stages") or {}).items():
        short = stage_shortfall(name, st, run) if isinstance(st, dict) else None
        if short:
            out[name] = _shortfall_text(short)
    return out


def _stage_status(name: str, st: dict[str, Any], stages: dict[str, Any], run: Path) -> str:
    if not st.get("done"):
        return "not done"
    short = stage_shortfall(name, st, run)
    if short:
        return _shortfall_text(short)
    minutes = _time_budget_minutes(st, stages) if name == "tokenizer" else None
    if minutes is not None:
        steps = (_load(run / "tokenizer" / "metrics.json") or {}).get("steps")
        done = f"{steps:,} steps" if isinstance(steps, int) else "done"
        return f"{done} in a {minutes:g}-min time budget (made before budgets were steps)"
    if isinstance(st.get("step"), int) and st.get("total_steps"):
        return f"done, {st['step']:,}/{st['total_steps']:,} steps"
    return "done"


def _time_budget_minutes(st: dict[str, Any], stages: dict[str, Any]) -> float | None:
    """The time budget of a tokenizer stage made before budgets were steps (None: a step budget)."""
    if "time_budget_minutes" in st:
        return st["time_budget_minutes"]
    exp = stages.get("experiment") or {}
    if "tokenizer_minutes" in exp and exp.get("tokenizer_steps") is None:
        return exp["tokenizer_minutes"]
    return None


def _steps_of(tok: dict[str, Any]) -> str:
    """'2,000 steps', or '411 of 2,000 steps, stopped early (time cap)'."""
    steps, total = tok.get("steps"), tok.get("total_steps")
    if not isinstance(steps, int):
        return "? steps"
    if tok.get("stopped") and total:
        return f"{steps:,} of {total:,} steps, stopped early ({tok['stopped']})"
    return f"{steps:,} steps"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Build ``report.md`` and ``report.html`` in ``run_dir``; returns the path of the HTML report.

    A missing folder, or one without any of :data:`RESULT_FILES`, is a :class:`DataError`
    (nothing is written). A stage cut short is marked in the stage table and in the summary.
    """
    run = Path(run_dir)
    if not run.is_dir():
        what = "is not a folder" if run.exists() else "does not exist"
        raise DataError(f"{run}: the run folder {what}")
    if not any((run / f).is_file() for f in RESULT_FILES):
        raise DataError(
            f"{run}: no run results to report (none of {', '.join(RESULT_FILES)}); "
            "give the folder of a quickstart or a training run"
        )
    from worldvla.utils.paths import check_output_dir

    check_output_dir(run, "run folder")
    plots = run / "plots"
    plots.mkdir(exist_ok=True)
    stages = _load(run / "stages.json")
    if not isinstance(stages, dict):
        stages = None
    short = cut_short(stages, run) if stages else {}
    if title is None and stages and stages.get("preset"):
        title = f"WorldVLA quickstart ({stages['preset']})"  # a pipeline's run directory
    md: list[str] = [f"# {title or 'WorldVLA run'}: `{run.name}`", ""]
    if short:
        md += [f"**Cut short: {cut_summary(short)} — {NOT_COMPARABLE}.**", ""]
    if stages:
        mach = stages.get("machine", {})
        md += [
            "## Pipeline",
            "",
            f"Command: `{stages.get('command', '')}` — experiment preset "
            f"`{stages.get('preset', '')}`, seed {stages.get('seed', '')}, commit `{stages.get('commit')}`.",
            f"Machine: {mach.get('processor', '')}, {mach.get('cpus', '')} CPUs, "
            f"torch {mach.get('torch', '')}.",
            "",
        ]
        rows = [
            [k, f"{v.get('seconds', 0) / 60:.1f}", _stage_status(k, v, stages, run)]
            for k, v in stages.get("stages", {}).items()
        ]
        total = sum(v.get("seconds", 0) for v in stages.get("stages", {}).values())
        rows.append(["**total**", f"**{total / 60:.1f}**", ""])
        md += [_table(["stage", "minutes", "status"], rows), ""]

    tok = _load(run / "tokenizer" / "metrics.json")
    if tok:
        md += [
            "## Image tokenizer",
            "",
            f"Held-out PSNR **{tok.get('val_psnr', float('nan')):.2f} dB**, codebook usage "
            f"**{100 * tok.get('val_codebook_usage', 0):.0f}%** of {tok.get('codebook_size')} codes "
            f"({_steps_of(tok)}, {tok.get('seconds', 0):.0f} s).",
            "",
        ]
        if (run / "tokenizer" / "reconstructions.png").exists():
            md += [
                "![reconstructions: originals (top) vs. tokenizer (bottom)](tokenizer/reconstructions.png)",
                "",
            ]

    curves = _curves(run / "train" / "metrics.jsonl")
    if _plot_curves(curves, plots / "training.png"):
        md += ["## Training", "", "![training curves](plots/training.png)", ""]

    pol = _load(run / "eval_policy" / "results.json")
    if pol:
        summary = pol["summary"]
        tasks = list(next(iter(summary.values()))["per_task"])
        mt50 = run / "eval_policy" / "mt50.md"
        if mt50.exists():  # 50 tasks: per task in the comparison table below, not as columns
            tasks = []
        header = ["agent", *[t.replace("-v3", "") for t in tasks], "mean [95% CI]", "episodes", "steps"]
        rows = []
        for a, s in summary.items():
            rows.append(
                [
                    a,
                    *[f"{100 * s['per_task'][t]['success']:.0f}" for t in tasks],
                    f"**{100 * s['success']:.1f}** [{100 * s['ci95'][0]:.0f}, {100 * s['ci95'][1]:.0f}]",
                    str(s["episodes"]),
                    str(s["steps"]),
                ]
            )
        _plot_success(summary, plots / "success.png")
        meta = pol.get("meta", {})
        how = meta.get("policy", {})
        every = how.get("replan_every")
        plan = "open-loop" if every is None else f"replanned every {every} steps"
        md += [
            "## Policy: closed-loop success (%) on held-out variations",
            "",
            f"{meta.get('episodes_per_task')} episodes per task, variations "
            f"{meta.get('suite', {}).get('test_variations')}, wall time {meta.get('wall_seconds', 0):.0f} s. "
            f"WorldVLA: chunks of {how.get('chunk_len', '?')} actions executed {plan}, action readout "
            f"{how.get('action_readout', 'argmax')}.",
            "",
            _table(header, rows),
            "",
            "![success per task](plots/success.png)",
            "",
        ]
        if mt50.exists():  # the comparison under LeRobot's protocol, one heading level down
            body = mt50.read_text().split("\n", 1)[1]
            md += ["## Policy under LeRobot's Meta-World protocol", ""]
            md += [("#" + line) if line.startswith("#") else line for line in body.splitlines()] + [""]
        gifs = sorted((run / "eval_policy" / "gifs").glob("*.gif"))
        if gifs:
            md += ["Episodes:", ""] + [f"![{g.stem}](eval_policy/gifs/{g.name})" for g in gifs] + [""]

    world = _load(run / "eval_world" / "results.json")
    if world:
        rows = [
            [
                r["method"],
                str(r["requested_length"]),
                str(r["length"]),
                f"{r['psnr']:.2f}",
                f"{r['ssim']:.1f}",
                f"{r['lpips']:.1f}" if "lpips" in r else "—",
                f"{r['fvd']:.0f}" if "fvd" in r else "—",
                str(r["videos"]),
            ]
            for r in world["rows"]
        ]
        _plot_psnr(world["rows"], plots / "psnr.png")
        md += [
            "## World model: rollouts from the first frame with ground-truth actions",
            "",
            "PSNR in dB, SSIM ×100, LPIPS ×100 (— : standard weights not available locally)."
            + _guidance_note(world.get("meta", {})),
            "",
            _table(["method", "requested frames", "frames", "PSNR", "SSIM", "LPIPS", "FVD", "videos"], rows),
            "",
            "![PSNR per rollout step](plots/psnr.png)",
            "",
        ]
        gifs = sorted((run / "eval_world" / "gifs").glob("rollout_*.gif"))
        if gifs:
            md += ["Real (left) vs. imagined (right):", ""]
            md += [f"![{g.stem}](eval_world/gifs/{g.name})" for g in gifs] + [""]
        sens = world.get("action_sensitivity")
        if sens:
            from worldvla.eval.action_sensitivity import format_sensitivity

            md += [
                "## World model: does it read its actions? (teacher-forced)",
                "",
                "Cross-entropy of the real next frame's codes with other actions than the executed "
                "ones, minus with the executed ones (worldvla.eval.action_sensitivity); 0 = the "
                "model ignores its actions.",
                "",
                "```",
                format_sensitivity(sens),
                "```",
                "",
            ]
        cf = world.get("counterfactual")
        if cf:
            from worldvla.eval.counterfactual import KINDS, format_table

            md += [
                "## World model: counterfactual actions, scored against the simulator",
                "",
                f"From the first frame of {len(cf['episodes'])} held-out demonstrations, other action "
                "sequences are executed in the simulator and imagined by the world model "
                "(worldvla.eval.counterfactual). *action-blind*: the rollout with the demonstration's "
                "actions scored against the outcome of the given ones. *tokenizer*: the simulator's "
                "frames for the given actions through the image tokenizer, the best any world model "
                "with these codes can draw. Moving pixels: "
                f"{100 * cf['moving_share']:.1f}% of the frame (changed by > {cf['threshold']} levels "
                "in any sequence's simulated frame).",
                "",
                format_table(cf),
                "",
                format_table(cf, "psnr"),
                "",
            ]
            cf_gifs = sorted((run / "eval_world" / "gifs").glob("counterfactual_*.gif"))
            if cf_gifs:
                order = ", ".join(KINDS)
                md += [f"Simulator (left) vs. imagined (right), one row per sequence: {order}.", ""]
                md += [f"![{g.stem}](eval_world/gifs/{g.name})" for g in cf_gifs] + [""]

    if stages:
        md += ["## Summary", "", _summary(stages, short, run), ""]
    text = "\n".join(md)
    atomic_write_text(run / "report.md", text + "\n")
    atomic_write_text(run / "report.html", _to_html(text, title or run.name))
    return run / "report.html"


def cut_summary(short: dict[str, str]) -> str:
    """'image tokenizer stopped at 411/2,000 steps (time cap); training ...' of :func:`cut_short`."""
    return "; ".join(f"{STAGE_NAMES.get(k, k)} {v}" for k, v in short.items())


def _summary(stages: dict[str, Any], short: dict[str, str], run: Path) -> str:
    """The report's last line: was every stage run to its full budget?"""
    pending = [k for k, v in stages.get("stages", {}).items() if not v.get("done") and k != "report"]
    if short:
        return (
            f"**Not comparable with the README's results:** {cut_summary(short)}. A stage cut short "
            "has not finished its learning-rate schedule; run without a time cap, in a new run folder, "
            "for results that are."
        )
    if pending:
        return f"Stages not finished yet: {', '.join(pending)}."
    tok = stages.get("stages", {}).get("tokenizer")
    minutes = _time_budget_minutes(tok, stages) if isinstance(tok, dict) and tok.get("done") else None
    if minutes is not None:
        return (
            f"Every stage finished. The image tokenizer was trained for {minutes:g} minutes of wall time "
            "(this run was made before budgets were steps), so its quality depends on the machine's "
            "speed at the time."
        )
    return "Every stage ran its full step budget."


def _to_html(markdown: str, title: str) -> str:
    """A small Markdown subset (headings, tables, images, paragraphs) to standalone HTML."""
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
        return s

    out, table = [], []

    def flush() -> None:
        if table:
            rows = [r.strip().strip("|").split("|") for r in table if not set(r.strip()) <= set("|-")]
            out.append("<table>")
            for i, r in enumerate(rows):
                tag = "th" if i == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{inline(c.strip())}</{tag}>" for c in r) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if m := re.match(r"^(#+) (.*)", line):
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2))}</h{n}>")
        elif m := re.match(r"^!\[(.*)\]\((.*)\)$", line):
            src, alt = html.escape(m.group(2)), html.escape(m.group(1))
            out.append(f'<img src="{src}" alt="{alt}" title="{alt}">')
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;margin:4px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
