"""Attention kernels on CPU at the MT50 recipe's shape: forward + backward, bf16, one process.

    python benchmarks/bench_attention.py [--batch 32] [--heads 4] [--seq 192] [--head-dim 64]
                                         [--threads 1] [--reps 5]

The attention of one layer of the ``compact`` model on a batch of the ``mt50`` preset:
``(B, H, L, Dh)`` bf16 queries, keys and values, a boolean causal mask ``(B, 1, L, L)``
(a WorldVLA training mask is the causal mask minus a few blocks). Each kernel computes the
same function; the time is forward + backward of ``out.float().sum()``, the best of
``--reps`` rounds in which the kernels take turns.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from worldvla.model.transformer import math_attention

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kernels(mask: torch.Tensor) -> dict[str, Kernel]:
    additive = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, float("-inf"))

    def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    compiled = torch.compile(math_attention)
    return {
        "SDPA, bool mask (the model's default)": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask
        ),
        "SDPA, additive bf16 mask": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=additive
        ),
        "SDPA, is_causal (no mask tensor)": lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ),
        "SDPA, math backend": sdpa_math,
        "math_attention, eager": lambda q, k, v: math_attention(q, k, v, mask),
        "math_attention, torch.compile": lambda q, k, v: compiled(q, k, v, mask),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    qkv = [torch.randn(shape, dtype=torch.bfloat16) for _ in range(3)]
    mask = torch.ones(args.seq, args.seq, dtype=torch.bool).tril().expand(args.batch, 1, -1, -1)

    def run(kernel: Kernel) -> torch.Tensor:
        q, k, v = (t.clone().requires_grad_() for t in qkv)
        out = kernel(q, k, v)
        out.float().sum().backward()
        return out.detach()

    fns = kernels(mask)
    ref = run(fns["SDPA, bool mask (the model's default)"])
    err = {name: (run(fn).float() - ref.float()).abs().max().item() for name, fn in fns.items()}  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(args.reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            run(fn)
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"# bench_attention: {shape} bf16, causal mask, threads={args.threads}, best of {args.reps}")
    print("| kernel | fwd+bwd ms | vs SDPA bool mask | max abs diff of the output |")
    print("|---|---|---|---|")
    base = best["SDPA, bool mask (the model's default)"]
    for name, t in best.items():
        print(f"| {name} | {1e3 * t:.1f} | {base / t:.2f}x | {err[name]:.1e} |")


if __name__ == "__main__":
    main()
