"""Training throughput through the real loop (data + mask + forward/backward + AdamW).

    python benchmarks/bench_train.py [--preset mw-quick] [--steps 12] [--precision fp32 bf16]
                                     [--model mini,compact] [--compile on|off] [--attention sdpa|math]

Builds a synthetic token cache shaped like the embedded Meta-World set (8x8 code grids,
4-D actions, 512 codes), trains ``--steps`` steps of the preset with :func:`worldvla.train.
loop.train`, and reports tokens/s (non-PAD tokens) after the first two steps, the share of
a step spent building batches, the padding overhead, and the achieved FLOP rate as a
percentage of the dense matmul ceiling measured in the same process at the same precision.

FLOPs per token are estimated as ``6·N_blocks + 6·d·V·f_target + 12·n_layers·d·L``
(parameter matmuls forward+backward, the output head only at the target fraction
``f_target`` of positions, and dense masked attention over the padded length ``L``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from worldvla.data.datasets import InMemoryCache
from worldvla.train.config import train_preset
from worldvla.train.distributed import DistInfo, pick_device
from worldvla.train.loop import Trainer, train


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    """Dense ``n x n @ n x n`` FLOP/s at ``dtype``: the best this device does on a plain matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(trainer: Trainer, mean_len: float, target_fraction: float) -> float:
    cfg = trainer.model_cfg
    n_all = sum(p.numel() for p in trainer.model.parameters())
    n_embed = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    n_blocks = n_all - n_embed
    head = 6 * cfg.d_model * cfg.vocab_size * target_fraction
    attention = 12 * cfg.n_layers * cfg.d_model * mean_len
    return 6 * n_blocks + head + attention


def run(
    preset: str,
    steps: int,
    precision: str,
    device: str | None,
    batch_size: int | None,
    model: str | None = None,
    execution: dict | None = None,
) -> dict:
    state_dim = 4 if train_preset(preset).use_state else 0
    cache = InMemoryCache.synthetic(
        n_episodes=24, length=60, grid=(8, 8), action_dim=4, codebook_size=512, state_dim=state_dim
    )
    cfg = replace(train_preset(preset), steps=steps, precision=precision, log_every=1, val_every=0,
                  ckpt_every=10**6, warmup_steps=1, **(execution or {}))  # fmt: skip
    if batch_size:
        cfg = replace(cfg, batch_size=batch_size)
    if model:
        cfg = replace(cfg, model=model)
    info = DistInfo(device=pick_device(device))
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, cache, Path(tmp) / "run", device=device, progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        trainer = Trainer(cfg, cache, Path(tmp) / "probe", info, progress=False)
    train_rows = [r for r in rows if r["split"] == "train"][2:]  # skip warm-up steps
    tok_s = statistics.median(r["tokens_per_s"] for r in train_rows)
    # Data cost and padding, measured on the same stream.
    t = time.perf_counter()
    batches = [trainer.micro_batches(trainer.data.train, s) for s in range(steps)]
    data_s = (time.perf_counter() - t) / steps
    flat = [b for bs in batches for b in bs]
    real = sum(b.n_tokens for b in flat)
    padded = sum(b.ids.numel() for b in flat)
    targets = sum(int((b.weights[:, 1:] > 0).sum()) for b in flat)
    mean_len = padded / sum(len(b) for b in flat)
    tokens_per_step = real / steps
    step_s = tokens_per_step / tok_s
    dev = info.device
    ceiling = matmul_ceiling(dev, torch.bfloat16 if precision == "bf16" else torch.float32)
    achieved = tok_s * flops_per_token(trainer, mean_len, targets / padded)
    return {
        "preset": preset,
        "model": cfg.model,
        "compile": cfg.compile,
        "attention": cfg.attention,
        "precision": precision,
        "device": str(dev),
        "params_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        "batch": cfg.batch_size,
        "tokens/step": tokens_per_step,
        "tokens/s": tok_s,
        "step_s": step_s,
        "data_%": 100 * data_s / step_s,
        "pad_%": 100 * (padded - real) / padded,
        "GFLOP/s": achieved / 1e9,
        "ceiling_GFLOP/s": ceiling / 1e9,
        "%ceiling": 100 * achieved / ceiling,
        "final_loss": result.losses[-1],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mw-quick")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--model", default=None, help="model presets (comma-separated) instead of the preset's")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", choices=["on", "off"], default=None, help="override the preset's compile")
    p.add_argument("--attention", choices=["sdpa", "math"], default=None, help="override its attention")
    args = p.parse_args()
    execution = {} if args.compile is None else {"compile": args.compile == "on"}
    if args.attention:
        execution["attention"] = args.attention
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        run(args.preset, args.steps, prec, args.device, args.batch_size, model, execution)
        for model in (args.model.split(",") if args.model else [None])
        for prec in args.precision
    ]
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys))


if __name__ == "__main__":
    main()
