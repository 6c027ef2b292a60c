"""``worldvla train``: train the action world model on a token cache.

    worldvla train --preset mw-quick --cache CACHE_DIR --out RUN_DIR [--resume] [--set key=value ...]
                   [--readout argmax|mean]
    torchrun --nproc_per_node=4 -m worldvla.cli train --preset ... (DDP, or FSDP with --set fsdp=true)

``--preset`` names a training preset (:mod:`worldvla.train.config`) or a LIBERO preset
(:mod:`worldvla.libero_presets`, whose step count follows from the cache size and the
number of processes). ``--set`` overrides any field of the training config. ``--readout``
sets the action readout the checkpoints carry as their inference default (default: the
preset's; it does not change training).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

from worldvla.tokenizers.action import READOUTS
from worldvla.train.config import TrainConfig, apply_overrides, preset_inference, train_preset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla train", description="Train the action world model.")
    p.add_argument("--preset", default="debug", help="training preset (see --list-presets)")
    p.add_argument("--cache", help="token cache directory (from 'worldvla tokenize')")
    p.add_argument("--out", help="run directory: checkpoints/, metrics.jsonl, tb/")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run directory's latest checkpoint (an error if it has none)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training config field (repeatable), e.g. --set steps=500",
    )
    p.add_argument(
        "--readout",
        choices=READOUTS,
        default=None,
        help="the action readout the checkpoints carry as their inference default: argmax (greedy) or "
        "mean (expected bin); it does not change training (default: the preset's)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="optional wall-clock cap: stop and checkpoint when spent, with a warning; the LR "
        "schedule keeps the preset's steps, so a capped run is not comparable with a full one "
        "(default: no cap, the budget is the preset's steps)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the local GPU if any)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)"
    )
    p.add_argument(
        "--list-presets",
        action="store_true",
        help="print the training and LIBERO presets with their descriptions and exit",
    )
    return p


def _libero_config(name: str, cache_dir: str) -> TrainConfig | None:
    """A LIBERO preset's recipe, sized to the cache (epochs -> steps) and the process count."""
    from worldvla.libero_presets import LIBERO_PRESETS

    if name not in LIBERO_PRESETS:
        return None
    from worldvla.data.datasets import episode_field
    from worldvla.data.token_cache import open_cache

    preset = LIBERO_PRESETS.get(name)
    cache = open_cache(cache_dir)
    k = preset.train.chunk_len
    lengths = [int(episode_field(e, "length")) for e in cache.episodes]
    n_samples = sum(max(t - k + 1, 0) + max(t - 1, 0) for t in lengths)
    return preset.train_config(n_samples, num_gpus=int(os.environ.get("WORLD_SIZE", "1")))


def check_cache_codes(cache_dir: str | Path) -> None:
    """Refuse a token cache whose image codes fall outside its codebook (a corrupt or foreign
    cache): they would be read as ids of other token kinds."""
    from worldvla.data.token_cache import open_cache
    from worldvla.errors import DataError

    cache = open_cache(cache_dir)
    size = getattr(cache, "codebook_size", None)
    codes = getattr(cache, "codes", None)
    if size is None or codes is None or not len(codes):
        return
    top = int(codes.max())
    if top >= int(size):
        raise DataError(
            f"{cache_dir}: image codes reach {top} but the cache's codebook has {size} codes "
            f"(0-{int(size) - 1}); rebuild it with 'worldvla tokenize --overwrite'"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_presets:
        from worldvla.commands.presets import listing

        print(listing(["train", "libero"]))
        return 0
    if not args.cache or not args.out:
        _parser().error("--cache and --out are required")
    from worldvla.errors import ConfigError, DataError

    if args.minutes is not None and not 0 < args.minutes < math.inf:
        raise ConfigError(f"--minutes (a time cap) must be a positive number, got {args.minutes:g}")
    if not Path(args.cache).exists():
        raise DataError(f"{args.cache}: token cache not found (create it with 'worldvla tokenize')")
    from worldvla.utils.paths import check_output_dir

    check_output_dir(args.out, "run folder")
    cfg = _libero_config(args.preset, args.cache) or train_preset(args.preset)
    cfg = apply_overrides(cfg, args.overrides)
    inference = preset_inference(args.preset)
    if args.readout is not None:
        inference = replace(inference, action_readout=args.readout)
    check_cache_codes(args.cache)

    from worldvla.train.loop import train

    result = train(
        cfg,
        args.cache,
        args.out,
        resume=args.resume,
        minutes=args.minutes,
        device=args.device,
        progress=not args.no_progress,
        inference=inference,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        if result.stopped_early:
            print(f"early stop at step {result.step:,} of at most {cfg.steps:,}: no held-out loss improves")
        elif result.step < cfg.steps:
            why = f"time cap of {args.minutes:g} min" if result.stopped_by_budget else "ended early"
            print(
                f"WARNING: training stopped at step {result.step:,}/{cfg.steps:,} ({why}) — the learning "
                "rate has not annealed, results are not comparable with a full run; --resume continues it",
                file=sys.stderr,
            )
        print(f"stopped at step {result.step}/{cfg.steps}")
        since = f" since step {result.wall_from_step:,}" if result.wall_from_step else ""
        print(f"wall time of the steps{since}: {result.wall_seconds / 60:.1f} min (all commands)")
        print(f"checkpoint: {result.checkpoint}")
        for kind, b in result.best.items():
            best_dir = Path(args.out) / "best" / kind
            print(f"best {kind:6s}: {best_dir}  ({b['metric']} {b['best']:.4f} at step {b['step']:,})")
        print(
            f"metrics:    {Path(args.out) / 'metrics.jsonl'}  (tensorboard --logdir {Path(args.out) / 'tb'})"
        )
    return 0
