"""worldvla collect: scripted-expert demonstrations -> one HDF5 episode store."""

from __future__ import annotations

import argparse

from worldvla.envs.suites import SUITES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla collect", description=__doc__)
    p.add_argument("--preset", default="mw-quick", help=f"suite ({', '.join(SUITES)})")
    p.add_argument("--out", default=None, help="output HDF5 (default: data/<preset>.hdf5)")
    p.add_argument("--episodes-per-task", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--action-noise", type=float, default=0.0, help="σ of DART-style noise on executed actions"
    )
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    from worldvla.data.collect import collect
    from worldvla.envs.suites import suite_preset

    suite = suite_preset(args.preset)
    out = args.out or f"data/{suite.name}.hdf5"
    report = collect(suite, out, args.episodes_per_task, args.seed, args.action_noise, args.workers)
    print(report.summary())
    return 0
