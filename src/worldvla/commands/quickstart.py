"""worldvla quickstart: the whole pipeline on the embedded benchmark, resumable.

worldvla quickstart [--preset mw-quick-guided|mw-quick|mt50|debug] [--out runs/quickstart-<preset>]
                    [--max-minutes-per-stage M] [--threads N] [--episodes FILE]

Every stage runs a fixed number of steps, so the same command gives the same model on a
fast or a slow machine (only slower). ``--max-minutes-per-stage M`` caps the wall time of
the image tokenizer and of training: a stage it cuts short is announced with a WARNING
line, marked in the report, and the command still exits 0 (the cap was asked for). A run
directory holding a stage cut short for any other reason, or by a cap of an earlier
command, exits with status 3 (:data:`EXIT_CUT_SHORT`) after writing its report.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from worldvla.experiments import EXPERIMENTS

EXIT_CUT_SHORT = 3  # finished, but some stage ended before its step budget


def exit_status(run_dir: str | Path, cap_asked: bool) -> int:
    """0 when every stage ran its full budget, or when a cap this command was given cut it;
    else :data:`EXIT_CUT_SHORT`."""
    from worldvla.pipeline import stopped_stages

    short = stopped_stages(run_dir)
    if not short:
        return 0
    by_this_cap = cap_asked and all("(time cap)" in v for v in short.values())
    return 0 if by_this_cap else EXIT_CUT_SHORT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla quickstart", description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset", default="mw-quick-guided", help=f"experiment preset ({', '.join(EXPERIMENTS)})"
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/quickstart-<preset>)")
    p.add_argument(
        "--max-minutes-per-stage",
        type=float,
        default=None,
        metavar="M",
        help="optional wall-clock cap on the image tokenizer and on training; what it cuts short is "
        "reported loudly and is not comparable with the README's results (default: no cap)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); on a machine busy with other "
        "jobs, 1 can be several times faster (README)",
    )
    p.add_argument(
        "--episodes",
        default=None,
        metavar="FILE",
        help="an episode file `worldvla collect` made with the preset's suite and settings, copied as the "
        "collect stage instead of collecting again (any other file is refused)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from worldvla.errors import ConfigError
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import run_pipeline

    cap = args.max_minutes_per_stage
    if cap is not None and not 0 < cap < math.inf:
        raise ConfigError(f"--max-minutes-per-stage must be a positive number, got {cap:g}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    exp = experiment_preset(args.preset)
    out = args.out or f"runs/quickstart-{exp.name}"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.episodes is not None:
        from worldvla.utils.paths import require_input

        require_input(args.episodes, "episode file")
    report = run_pipeline(
        exp, out, progress=not args.no_progress, max_minutes_per_stage=cap, episodes_from=args.episodes
    )
    print(f"\nreport: {report}  (also {report.with_suffix('.md')})")
    status = exit_status(out, cap_asked=cap is not None)
    if status:
        print(
            f"worldvla quickstart: {out} holds stages cut short (see the WARNING lines and the report); "
            f"exit status {status}",
            file=sys.stderr,
        )
    return status
