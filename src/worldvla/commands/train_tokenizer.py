"""``worldvla train-tokenizer``: train the VQ image tokenizer on an episode store.

    worldvla train-tokenizer --episodes FILE --out DIR [--preset mw64] [--steps N] [--minutes M] [--camera C]
                             [--batch-size B] [--lr LR] [--threads T] [--bf16]

The budget is ``--steps`` (default 2,000; the learning-rate schedule follows it), so the
same command gives the same tokenizer on any machine. ``--minutes`` adds a wall-clock cap
that stops training early, with a warning.

Writes the tokenizer (``config.json`` + ``model.safetensors``), ``metrics.json`` (held-out
PSNR and codebook usage), ``reconstructions.png`` and TensorBoard logs into ``DIR``.
"""

from __future__ import annotations

import argparse
import sys

from worldvla.tokenizers.vq_config import PRESETS
from worldvla.tokenizers.vq_train import VQTrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla train-tokenizer", description="Train the VQ image tokenizer.")
    p.add_argument("--episodes", required=True, help="episode store (HDF5)")
    p.add_argument("--out", required=True, help="output directory of the tokenizer")
    p.add_argument("--preset", default="mw64", help=f"tokenizer preset: {', '.join(PRESETS)}")
    p.add_argument(
        "--steps",
        type=int,
        default=VQTrainConfig.steps,
        help=f"optimizer steps (default {VQTrainConfig.steps:,})",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="optional wall-clock cap: stop early, with a warning (the schedule keeps --steps)",
    )
    p.add_argument("--camera", default=None, help="camera whose frames are used (default: the first)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the training forward pass")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    from worldvla.tokenizers.vq_config import vq_preset
    from worldvla.train.image_tokenizer import train_tokenizer
    from worldvla.utils.paths import check_output_dir, require_input

    vq_preset(args.preset)  # unknown name -> ConfigError with a suggestion
    cfg = VQTrainConfig(
        preset=args.preset,
        steps=args.steps,
        minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=args.bf16,
    )
    require_input(args.episodes, "episode file")
    check_output_dir(args.out, "tokenizer folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    m = train_tokenizer(args.episodes, args.out, cfg, camera=args.camera, progress=not args.no_progress)
    if m["stopped"]:
        print(
            f"WARNING: image tokenizer stopped at step {m['steps']:,}/{cfg.steps:,} ({m['stopped']} of "
            f"{cfg.minutes:g} min) — its learning rate has not annealed; not comparable with a full run",
            file=sys.stderr,
        )
    print(
        f"tokenizer: {args.out} — {m['steps']} steps in {m['seconds']:.0f} s; held-out PSNR "
        f"{m['val_psnr']:.2f} dB, codebook usage {m['val_codebook_usage']:.1%} of {m['codebook_size']}"
    )
    return 0
