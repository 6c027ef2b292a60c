"""worldvla eval-policy: closed-loop success on a suite's held-out variations, with baselines.

worldvla eval-policy CHECKPOINT [--suite mw-quick] [--episodes-per-task 10] [--envs 8]
                     [--episodes DEMOS.hdf5] [--out DIR] [--gifs 2] [--seed 0]
                     [--variations 1000-1019] [--readout argmax|mean]
                     [--protocol lerobot-mt50] [--max-steps N]

--protocol lerobot-mt50 evaluates under LeRobot's Meta-World protocol (suite mt50 unless
--suite names another suite of that protocol, e.g. mt50-debug), runs the baselines without
rendering, and writes mt50.md / mt50.json: per-task and per-group success, the mean of the
groups, 95% intervals, published rows and the run's differences from the protocol.
"""

from __future__ import annotations

import argparse

from worldvla.tokenizers.action import READOUTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla eval-policy", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--suite", default=None, help="default: mw-quick, or mt50 with --protocol lerobot-mt50")
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
        choices=READOUTS,
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
    p.add_argument(
        "--protocol",
        choices=("lerobot-mt50",),
        default=None,
        help="evaluate under LeRobot's Meta-World MT50 protocol and write the comparison table",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="step limit per episode instead of the suite's (tests; the table flags a cut-short run)",
    )
    args = p.parse_args(argv)

    from dataclasses import replace
    from pathlib import Path

    from worldvla.envs.suites import suite_preset
    from worldvla.errors import ConfigError
    from worldvla.eval.policy_eval import evaluate_policy
    from worldvla.utils.paths import check_output_dir, require_input

    suite = suite_preset(args.suite or ("mt50" if args.protocol else "mw-quick"))
    if args.protocol and suite.protocol != "lerobot":
        raise ConfigError(f"--protocol {args.protocol}: suite {suite.name!r} is not a LeRobot-protocol suite")
    if args.protocol and args.episodes is None and not args.no_baselines:
        raise ConfigError(
            f"--protocol {args.protocol} runs the replay baseline: give the training demonstrations "
            "(--episodes DEMOS.hdf5), or --no-baselines"
        )
    if args.variations:
        suite = replace(suite, test_variations=parse_variations(args.variations))
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {args.max_steps}")
        suite = replace(suite, max_steps=args.max_steps)
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
        blind_baselines=args.protocol is not None,
    )
    for agent, s in doc["summary"].items():
        print(
            f"{agent:10s} success {100 * s['success']:5.1f}%  95% CI [{100 * s['ci95'][0]:.0f}, "
            f"{100 * s['ci95'][1]:.0f}]  ({s['episodes']} episodes)"
        )
    print(f"results: {out / 'results.json'}")
    if args.protocol:
        from worldvla.eval.mt50_report import write_mt50_report

        table = write_mt50_report(out, doc, args.episodes)
        for agent, r in table["agents"].items():
            m = r["mean"]
            print(
                f"{agent:10s} mean of {m['groups']} groups {100 * m['success']:5.1f}%  95% CI "
                f"[{100 * m['ci_low']:.0f}, {100 * m['ci_high']:.0f}]"
            )
        for d in table["differences"]:
            print(f"differs from the protocol: {d}")
        print(f"table: {out / 'mt50.md'}")
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
