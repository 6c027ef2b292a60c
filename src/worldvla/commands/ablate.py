"""``worldvla ablate``: train and evaluate the paper's ablations over seeds; tables and a plot.

    worldvla ablate [--preset mw-ablation] [--quick] [--out RUN] [--data DIR]
                    [--only V1,V2] [--seeds 0,1] [--jobs N] [--aggregate-only] [--results DIR]

Resumable: run the same command again after an interruption. ``--data`` reuses the data
stages of a quickstart of the same experiment (e.g. ``runs/quickstart-mw-quick``).
``--jobs N`` trains N runs at once, each on its share of the cores (small models use
several single-threaded processes better than one multi-threaded one); commands started
by hand on the same ``--out`` also share the runs, each run once. ``--results DIR`` keeps
the tables there up to date after every finished run, and on a machine without the run
directory restores the runs that ``DIR/runs.json`` records instead of running them again
(commit DIR as runs finish; an interrupted study resumes from it anywhere).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from worldvla.ablation.config import ABLATIONS, VARIANTS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla ablate", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="mw-ablation", help=f"ablation preset ({', '.join(ABLATIONS)})")
    p.add_argument("--quick", action="store_true", help="the preset's quick sibling (<preset>-quick)")
    p.add_argument("--out", default=None, help="ablation directory (default: runs/ablation-<preset>)")
    p.add_argument("--data", default=None, help="directory with the data stages (default: OUT/data)")
    p.add_argument("--only", type=_csv, default=None, help="comma-separated variants to run")
    p.add_argument("--seeds", type=_csv, default=None, help="comma-separated seeds (default: the preset's)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in worker processes")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild the tables from finished runs")
    p.add_argument(
        "--results",
        default=None,
        help="also write table, plot and runs.json here, after every run; "
        "runs recorded there are restored, not run again",
    )
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from worldvla.ablation.config import ablation_preset

    if args.list:
        for name in VARIANTS:
            v = VARIANTS.get(name)
            scale = f" x{v.step_scale} steps" if v.step_scale != 1 else ""
            print(f"{name:24s} {VARIANTS.description(name)}  {dict(v.changes) or ''}{scale}")
        return 0
    name = f"{args.preset}-quick" if args.quick else args.preset
    cfg = ablation_preset(name)
    for v in args.only or []:
        VARIANTS.get(v)  # a typo gets a "did you mean"
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds]
        except ValueError:
            p.error(f"--seeds: expected integers, got {args.seeds}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    cfg = cfg.select(args.only, seeds)
    out = Path(args.out or f"runs/ablation-{cfg.name}")

    from worldvla.ablation.aggregate import aggregate
    from worldvla.ablation.runner import run_ablation
    from worldvla.utils.paths import check_output_dir

    if args.aggregate_only:
        if not out.is_dir():
            p.error(f"--aggregate-only: {out} does not exist")
        table = aggregate(out, cfg)
    else:
        check_output_dir(out, "ablation folder")  # before the data stages start
        table = run_ablation(
            cfg, out, args.data, progress=not args.no_progress, jobs=args.jobs, results_dir=args.results
        )
    if args.results and args.aggregate_only:
        aggregate(out, cfg, out_dir=args.results)
    print(table.read_text())
    print(f"\ntable: {table}")
    return 0
