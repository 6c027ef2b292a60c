"""worldvla probe-world: imagine actions of your choosing and compare with the simulator.

    worldvla probe-world CHECKPOINT --episodes DEMOS.hdf5 --actions zero --actions hold:0,0,1,0
                         [--actions FILE.npy] [--episode KEY] [--start-step 0] [--steps 10] [--out DIR]
                         [--guidance W]

From the first frame of one episode (default: the first the checkpoint holds out), each
sequence is executed in the simulator and imagined by the world model, beside the
demonstration's own actions: a table of PSNR on the moving pixels, how much each video
changes from its first frame, and a GIF (simulator left, imagined right).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla probe-world", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--episodes", required=True, help="the episode store the checkpoint was trained on")
    p.add_argument(
        "--actions",
        action="append",
        required=True,
        help="zero, negated, random, hold:a,b,... (one action held) or a .npy/.csv/.txt file of (T, D) "
        "actions in [-1, 1]; repeat for several sequences",
    )
    p.add_argument("--episode", default=None, help="episode key to start from (default: the first held out)")
    p.add_argument("--steps", type=int, default=10, help="steps to roll out (at most the episode's length)")
    p.add_argument(
        "--start-step",
        type=int,
        default=0,
        help="start from this step of the episode (the simulator replays the demonstration up to it)",
    )
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/../probe)")
    p.add_argument("--suite", default=None, help="simulator suite (default: the one the file records)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sequence")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance on the actions (default: the checkpoint's)",
    )
    args = p.parse_args(argv)

    from pathlib import Path

    from worldvla.commands.eval_actions import check_inputs
    from worldvla.eval.probe import probe_markdown, probe_world
    from worldvla.utils.paths import check_output_dir

    check_inputs(args.checkpoint, args.episodes)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "probe"
    check_output_dir(out, "output folder")
    suite = None
    if args.suite:
        from worldvla.envs.suites import suite_preset

        suite = suite_preset(args.suite)
    doc = probe_world(
        args.checkpoint,
        args.episodes,
        out,
        args.actions,
        episode=args.episode,
        steps=args.steps,
        start_step=args.start_step,
        guidance=args.guidance,
        suite=suite,
        seed=args.seed,
    )
    print(probe_markdown(doc), end="")
    print(f"written: {out / 'probe.md'}, {out / 'probe.json'}, {out / 'probe.gif'}")
    return 0
