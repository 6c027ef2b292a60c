"""worldvla eval-world: world-model rollouts on held-out episodes vs. real frames.

worldvla eval-world CHECKPOINT --episodes DEMOS.hdf5 [--num 16] [--lengths 1,10,50] [--out DIR]
                    [--counterfactual | --no-counterfactual] [--suite NAME] [--max-length 60]
                    [--guidance W]

Counterfactual rollouts (other actions from the same start states, scored against the
simulator) run by default when the episode file records the suite it was collected in.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla eval-world", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--episodes", required=True, help="the episode store the checkpoint was trained on")
    p.add_argument("--num", type=int, default=16, help="held-out episodes to roll out")
    p.add_argument("--lengths", default="1,10,50", help="rollout lengths, comma separated")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/../eval_world)")
    p.add_argument("--gifs", type=int, default=2)
    p.add_argument(
        "--counterfactual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also roll out counterfactual actions against the simulator (default: when possible)",
    )
    p.add_argument("--suite", default=None, help="simulator suite (default: the one the file records)")
    p.add_argument("--max-length", type=int, default=60, help="longest counterfactual rollout (steps)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance on the actions, logits u + W(c - u); W != 1 needs a checkpoint "
        "trained with world_action_dropout > 0 (default: the checkpoint's, 1 = none unless its "
        "preset chose another)",
    )
    args = p.parse_args(argv)

    from pathlib import Path

    from worldvla.commands.eval_actions import check_inputs
    from worldvla.errors import ConfigError
    from worldvla.eval.world_eval import evaluate_world
    from worldvla.utils.paths import check_output_dir

    check_inputs(args.checkpoint, args.episodes)  # before any folder is made next to them
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval_world"
    check_output_dir(out, "output folder")
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lengths: expected comma-separated integers, got {args.lengths!r}") from None
    suite = None
    if args.suite:
        from worldvla.envs.suites import suite_preset

        suite = suite_preset(args.suite)
    doc = evaluate_world(
        args.checkpoint,
        args.episodes,
        out,
        args.num,
        lengths,
        args.gifs,
        counterfactual=args.counterfactual,
        suite=suite,
        counterfactual_length=args.max_length,
        progress=True,
        guidance=args.guidance,
    )
    for r in doc["rows"]:
        print(f"{r['method']:12s} {r['length']:3d} frames  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:5.1f}")
    from worldvla.eval.action_sensitivity import format_sensitivity

    print(format_sensitivity(doc["action_sensitivity"]))
    cf = doc.get("counterfactual")
    if cf:
        from worldvla.eval.counterfactual import format_table

        print(format_table(cf))
    print(f"results: {out / 'results.json'}")
    return 0
