"""worldvla quickstart: the whole pipeline on the embedded benchmark, resumable.

worldvla quickstart [--preset mw-quick|debug] [--out runs/quickstart-<preset>]
"""

from __future__ import annotations

import argparse

from worldvla.presets import EXPERIMENTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="mw-quick", help=f"experiment preset ({', '.join(EXPERIMENTS)})")
    p.add_argument("--out", default=None, help="run directory (default: runs/quickstart-<preset>)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from worldvla.pipeline import run_pipeline
    from worldvla.presets import experiment_preset

    exp = experiment_preset(args.preset)
    out = args.out or f"runs/quickstart-{exp.name}"
    report = run_pipeline(exp, out, progress=not args.no_progress)
    print(f"\nreport: {report}  (also {report.with_suffix('.md')})")
    return 0
