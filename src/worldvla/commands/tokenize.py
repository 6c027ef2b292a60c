"""``worldvla tokenize``: encode an episode store into a token cache (SPEC §2).

    worldvla tokenize --episodes FILE --tokenizer DIR --out CACHE_DIR [--camera C]
                      [--stats-mode minmax|percentile] [--overwrite]

Rerunning the same command after an interruption resumes the partial cache; a cache made
by another tokenizer or from another episode file is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worldvla tokenize", description="Encode an episode store into a token cache."
    )
    p.add_argument("--episodes", required=True, help="episode store (HDF5)")
    p.add_argument(
        "--tokenizer", required=True, help="image tokenizer directory (ours or Chameleon's vqgan files)"
    )
    p.add_argument("--out", required=True, help="token cache directory")
    p.add_argument("--camera", default=None, help="camera to encode (default: the first in the file)")
    p.add_argument("--stats-mode", choices=("minmax", "percentile"), default="minmax", help="action bounds")
    p.add_argument("--batch-size", type=int, default=64, help="frames per encoder call")
    p.add_argument("--device", default="cpu", help="device of the image tokenizer")
    p.add_argument("--overwrite", action="store_true", help="rebuild a cache that does not match")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from worldvla.data.token_cache import build_token_cache
    from worldvla.tokenizers.image_loader import load_image_tokenizer
    from worldvla.utils.paths import check_output_dir, require_input

    require_input(args.episodes, "episode file")
    require_input(args.tokenizer, "image tokenizer")
    check_output_dir(args.out, "token cache folder")
    tok = load_image_tokenizer(args.tokenizer, device=args.device)
    cache = build_token_cache(
        args.episodes,
        tok,
        args.out,
        tokenizer_path=args.tokenizer,
        camera=args.camera,
        stats_mode=args.stats_mode,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"token cache: {Path(args.out)} — {len(cache.episodes)} episodes, {len(cache.codes)} frames, "
        f"grid {cache.grid}, codebook {cache.codebook_size}, camera {cache.camera!r}"
    )
    return 0
