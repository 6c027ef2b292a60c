"""worldvla compare: held-out losses of runs at equal exposure to one sample kind.

    worldvla compare RUN_A RUN_B [RUN ...] [--kind action|world] [--out FILE.md]

E.g. a joint run against its action-only twin: ``worldvla compare runs/mt50
runs/mt50-action-only --kind action`` lines up their held-out action losses at the same
number of action samples seen (docs/ablations.md).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla compare", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (training or quickstart runs)")
    p.add_argument(
        "--kind", choices=("action", "world"), default="action", help="the sample kind (default action)"
    )
    p.add_argument("--out", default=None, help="also write the table here (markdown) and a .json beside it")
    args = p.parse_args(argv)

    import json
    from pathlib import Path

    from worldvla.eval.exposure import compare_at_exposure, exposure_markdown
    from worldvla.utils.io import atomic_write_text
    from worldvla.utils.paths import require_input

    for run in args.runs:
        require_input(run, "run directory")
    doc = compare_at_exposure(args.runs, args.kind)
    text = exposure_markdown(doc)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, text)
        atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
        print(f"written: {out}, {out.with_suffix('.json')}")
    return 0
