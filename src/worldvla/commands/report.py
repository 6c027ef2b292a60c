"""worldvla report: (re)build report.md / report.html for a run directory."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla report", description=__doc__)
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    from worldvla.eval.report import write_report

    print(write_report(args.run_dir))
    return 0
