"""worldvla eval-actions: generated chunks vs. the demonstrations of held-out episodes.

worldvla eval-actions CHECKPOINT --episodes DEMOS.hdf5 [--stride 2] [--no-swap-probe] [--out DIR]
"""

from __future__ import annotations

import argparse


def check_inputs(checkpoint: str, episodes: str) -> None:
    """Both inputs exist, and the episodes' actions have the checkpoint's dimension."""
    from worldvla.artifacts.checkpoint import read_config, resolve_checkpoint
    from worldvla.data.episodes import EpisodeReader
    from worldvla.errors import DataError
    from worldvla.utils.paths import require_input

    require_input(checkpoint, "checkpoint")
    require_input(episodes, "episode file")
    ckpt = resolve_checkpoint(checkpoint)
    want = read_config(ckpt).get("layout", {}).get("action_dim")
    with EpisodeReader(episodes) as reader:
        have = int(reader.actions(0).shape[-1]) if len(reader) else None
    if want is not None and have is not None and int(want) != have:
        raise DataError(
            f"{episodes} holds {have}-D actions but the checkpoint {ckpt} was trained on {want}-D "
            "actions; give the episode file it was trained on"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla eval-actions", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--episodes", required=True, help="the episode store the checkpoint was trained on")
    p.add_argument("--stride", type=int, default=2, help="score every N-th step of each episode")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--no-swap-probe", action="store_true", help="skip the image probe (halves the cost)")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/../eval_actions)")
    args = p.parse_args(argv)

    from pathlib import Path

    from worldvla.eval.offline_actions import evaluate_offline_actions
    from worldvla.utils.paths import check_output_dir

    check_inputs(args.checkpoint, args.episodes)  # before any folder is made next to them
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval_actions"
    check_output_dir(out, "output folder")
    doc = evaluate_offline_actions(
        args.checkpoint,
        args.episodes,
        out,
        stride=args.stride,
        max_episodes=args.max_episodes,
        swap_probe=not args.no_swap_probe,
    )
    pos = " ".join(f"{100 * v:.1f}" for v in doc["l1_per_position"])
    n = f"{doc['samples']} chunks of {doc['episodes']} episodes"
    print(f"held-out action L1 ×100: {100 * doc['l1']:.1f} over {n}")
    print(f"  by chunk position: {pos}")
    print(f"  mean-action baseline: {100 * doc['baseline_mean_action_l1']:.1f}")
    if doc.get("swapped_samples"):
        print(
            f"  image probe: {100 * doc['l1_real_on_swapped']:.1f} with the episode's own frames, "
            f"{100 * doc['l1_swapped']:.1f} with another placement's ({doc['swapped_samples']} chunks)"
        )
    for text, row in doc["per_task"].items():
        swapped = "" if row.get("l1_swapped") is None else f", swapped frames {100 * row['l1_swapped']:.1f}"
        print(
            f"  {text!r}: {100 * row['l1']:.1f} (mean action {100 * row['baseline_mean_action_l1']:.1f}"
            f"{swapped})"
        )
    print(f"results: {out / 'results.json'}")
    return 0
