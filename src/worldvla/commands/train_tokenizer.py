"""``worldvla train-tokenizer``: train the VQ image tokenizer on an episode store.

    worldvla train-tokenizer --episodes FILE --out DIR [--preset mw64] [--minutes M | --steps N] [--camera C]
                             [--batch-size B] [--lr LR] [--threads T] [--bf16]

Writes the tokenizer (``config.json`` + ``model.safetensors``), ``metrics.json`` (held-out
PSNR and codebook usage), ``reconstructions.png`` and TensorBoard logs into ``DIR``.
"""

from __future__ import annotations

import argparse

from worldvla.tokenizers.vq import PRESETS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla train-tokenizer", description="Train the VQ image tokenizer.")
    p.add_argument("--episodes", required=True, help="episode store (HDF5)")
    p.add_argument("--out", required=True, help="output directory of the tokenizer")
    p.add_argument("--preset", default="mw64", help=f"tokenizer preset: {', '.join(PRESETS)}")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default: 8)")
    budget.add_argument("--steps", type=int, default=None, help="number of optimizer steps")
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

    from worldvla.tokenizers.vq import vq_preset
    from worldvla.tokenizers.vq_train import VQTrainConfig, train_tokenizer

    vq_preset(args.preset)  # unknown name -> ConfigError with a suggestion
    if args.threads:
        torch.set_num_threads(args.threads)
    minutes = args.minutes if args.minutes is not None or args.steps is not None else 8.0
    cfg = VQTrainConfig(
        preset=args.preset,
        steps=args.steps if args.steps is not None else 10**9,  # the time budget ends training
        minutes=minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        bf16=args.bf16,
    )
    m = train_tokenizer(args.episodes, args.out, cfg, camera=args.camera, progress=not args.no_progress)
    print(
        f"tokenizer: {args.out} — {m['steps']} steps in {m['seconds']:.0f} s; held-out PSNR "
        f"{m['val_psnr']:.2f} dB, codebook usage {m['val_codebook_usage']:.1%} of {m['codebook_size']}"
    )
    return 0
