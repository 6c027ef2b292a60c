"""worldvla eval-policy: closed-loop success on a suite's held-out variations, with baselines.

worldvla eval-policy CHECKPOINT [--suite mw-quick] [--episodes-per-task 10] [--envs 8]
                     [--episodes DEMOS.hdf5] [--out DIR] [--gifs 2] [--seed 0]
                     [--variations 1000-1019] [--readout argmax|mean]
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla eval-policy", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--suite", default="mw-quick")
    p.add_argument("--episodes-per-task", type=int, default=10)
    p.add_argument("--envs", type=int, default=8, help="environments stepped together (batched policy calls)")
    p.add_argument("--episodes", default=None, help="demonstrations for the open-loop replay baseline")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/../eval_policy)")
    p.add_argument("--gifs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument(
        "--replan-every",
        type=int,
        default=None,
        help="ask for a new chunk every N steps (default: execute each chunk open-loop, as the reference)",
    )
    p.add_argument(
        "--readout",
        choices=("argmax", "mean"),
        default=None,
        help="how action bins are read out: argmax (greedy, reference) or mean (expected bin); "
        "default: the checkpoint's",
    )
    p.add_argument(
        "--variations",
        default=None,
        help="held-out variations to evaluate instead of the suite's, e.g. 1000-1019 or 40,41,1000-1009 "
        "(refused if any is a training variation)",
    )
    args = p.parse_args(argv)

    from dataclasses import replace
    from pathlib import Path

    from worldvla.envs.suites import suite_preset
    from worldvla.eval.policy_eval import evaluate_policy
    from worldvla.utils.paths import check_output_dir, require_input

    suite = suite_preset(args.suite)
    if args.variations:
        suite = replace(suite, test_variations=parse_variations(args.variations))
    require_input(args.checkpoint, "checkpoint")  # before any folder is made next to it
    if args.episodes:
        from worldvla.commands.eval_actions import check_inputs

        check_inputs(args.checkpoint, args.episodes)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval_policy"
    check_output_dir(out, "output folder")
    doc = evaluate_policy(
        args.checkpoint,
        suite,
        out,
        args.episodes_per_task,
        args.envs,
        args.episodes,
        args.gifs,
        args.seed,
        baselines=not args.no_baselines,
        replan_every=args.replan_every,
        action_readout=args.readout,
    )
    for agent, s in doc["summary"].items():
        print(
            f"{agent:10s} success {100 * s['success']:5.1f}%  95% CI [{100 * s['ci95'][0]:.0f}, "
            f"{100 * s['ci95'][1]:.0f}]  ({s['episodes']} episodes)"
        )
    print(f"results: {out / 'results.json'}")
    return 0


def parse_variations(spec: str) -> tuple[int, ...]:
    """'1000-1019' or '40,41,1000-1009' -> the variations, in order, each once."""
    from worldvla.errors import ConfigError

    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"--variations: {part!r} is not a number or a range a-b") from None
        if b < a:
            raise ConfigError(f"--variations: empty range {part!r}")
        out.extend(v for v in range(a, b + 1) if v not in out)
    return tuple(out)
