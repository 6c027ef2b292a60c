"""``worldvla convert HF_DIR OUT``: a Hugging Face Chameleon checkpoint -> a project checkpoint.

``worldvla convert --to-hf CKPT OUT`` goes the other way. See :mod:`worldvla.convert` and
docs/chameleon.md (the mapping, what is refused and why) and docs/libero.md (the released
WorldVLA weights, end to end).
"""

from __future__ import annotations

import argparse
import resource
import sys

from worldvla.convert.checkpoints import convert_from_hf, convert_to_hf, parse_dtype
from worldvla.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldvla convert", description=__doc__.split("\n")[0])
    p.add_argument(
        "src", help="Hugging Face folder (config.json + *.safetensors), or with --to-hf a checkpoint"
    )
    p.add_argument("out", help="output directory (must not exist)")
    p.add_argument("--to-hf", action="store_true", help="project checkpoint -> Hugging Face folder")
    p.add_argument(
        "--image-tokenizer", help="Chameleon tokenizer directory with vqgan.yaml + vqgan.ckpt (required)"
    )
    p.add_argument(
        "--text-tokenizer",
        help="Chameleon's text tokenizer JSON (required; 'bytes' only for plumbing tests)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="frame size: the rendering size, 256 or 512 (a multiple of 32; default: the VQGAN's)",
    )
    p.add_argument("--history", type=int, default=2, help="history frames M of the prompt (reference: 2)")
    p.add_argument(
        "--chunk-len", type=int, default=5, help="actions per chunk K (reference: 5; LIBERO-10: 10)"
    )
    p.add_argument("--action-dim", type=int, default=7, help="action dimension D (LIBERO: 7)")
    p.add_argument("--camera", default="agentview", help="camera the policy reads (default agentview)")
    p.add_argument(
        "--dtype",
        default="keep",
        help="weights dtype: keep (as stored; bf16 for the releases), bf16, fp16, fp32",
    )
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="--to-hf: largest shard in GB (default 5)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    dtype = parse_dtype(a.dtype)
    if a.to_hf:
        out = convert_to_hf(a.src, a.out, max_shard_bytes=int(a.max_shard_gb * 1e9), dtype=dtype)
        print(f"[convert] wrote {out}")
        return 0
    if not a.image_tokenizer or not a.text_tokenizer:
        raise ConfigError(
            "converting a Hugging Face folder needs --image-tokenizer DIR and --text-tokenizer JSON"
        )
    out, report = convert_from_hf(
        a.src,
        a.out,
        image_tokenizer=a.image_tokenizer,
        text_tokenizer=a.text_tokenizer,
        image_size=a.image_size,
        history=a.history,
        chunk_len=a.chunk_len,
        action_dim=a.action_dim,
        camera=a.camera,
        dtype=dtype,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    print(
        f"[convert] wrote {out}: {report.tensors} tensors, "
        f"{report.bytes_written / 2**30:.2f} GiB of weights, {report.skipped} tensors skipped "
        f"(VQ encoder), peak memory {peak:.0f} MiB"
    )
    return 0
