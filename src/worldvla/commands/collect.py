"""worldvla collect: scripted-expert demonstrations -> one HDF5 episode store (docs/metaworld.md)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from worldvla.envs.suites import SUITES

    p = argparse.ArgumentParser(prog="worldvla collect", description=__doc__)
    p.add_argument("--preset", default="mw-quick", help=f"suite ({', '.join(SUITES)}; default mw-quick)")
    p.add_argument("--out", default=None, help="output HDF5 (default: data/<preset>.hdf5)")
    p.add_argument(
        "--episodes-per-task", type=int, default=None, help="default: the suite's episodes_per_task"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the action noise (default 0)")
    p.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="σ of Gaussian noise on the executed actions; the stored label stays the expert's (DART)",
    )
    p.add_argument(
        "--explore-per-task",
        type=int,
        default=0,
        help="exploratory segments per task for the world model (docs/world_model.md; default 0: none)",
    )
    p.add_argument(
        "--explore-steps",
        type=int,
        default=20,
        help="recorded control steps per exploratory segment (default 20)",
    )
    p.add_argument("--workers", type=int, default=2, help="simulator processes (default 2)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (the new file is written in full before the old one goes)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from worldvla.data.collect import collect
    from worldvla.data.exploration import ExplorationConfig
    from worldvla.envs.suites import suite_preset
    from worldvla.utils.paths import check_output_file

    suite = suite_preset(args.preset)
    exploration = ExplorationConfig(per_task=args.explore_per_task, steps=args.explore_steps)  # checks them
    out = args.out or f"data/{suite.name}.hdf5"
    check_output_file(out, args.overwrite, what="episode file")  # before any simulator starts
    report = collect(
        suite,
        out,
        episodes_per_task=args.episodes_per_task,
        seed=args.seed,
        action_noise=args.action_noise,
        workers=args.workers,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        exploration=exploration if exploration.per_task else None,
    )
    print(report.summary())
    return 0
