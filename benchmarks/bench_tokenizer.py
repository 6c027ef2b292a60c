"""Image tokenizer speed: training step, encode and decode throughput per preset, as a table.

    python benchmarks/bench_tokenizer.py [--presets mw64 mw64-vq] [--threads 1 2] [--batch 32]

Timings are medians over a few repetitions after a warm-up, on random frames (speed does
not depend on the content). On a machine shared with other jobs, more threads can be
slower than fewer: small convolutions spin-wait for cores that are busy elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from worldvla.tokenizers.vq import VQTokenizer, vq_preset


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(preset: str, threads: int, batch: int, reps: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = VQTokenizer(vq_preset(preset))
    size = tok.image_size
    frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tok.init_codebook(frames)
    model = tok.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, S, S)

    def step() -> None:
        model.train()
        rec, _, aux = model(x)
        loss = F.mse_loss(rec, x) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_s = _median_time(step, reps)
    model.eval()
    enc_s = _median_time(lambda: tok.encode(frames), reps)
    codes = tok.encode(frames)
    dec_s = _median_time(lambda: tok.decode(codes), reps)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "train_step_s": train_s,
        "encode_fps": batch / enc_s,
        "decode_fps": batch / dec_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["mw64", "mw64-vq"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    print(
        f"| preset | threads | params (M) | train step, batch {args.batch} (s) "
        "| encode (frames/s) | decode (frames/s) |"
    )
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        for threads in args.threads:
            r = bench(preset, threads, args.batch, args.reps)
            print(
                f"| {preset} | {threads} | {r['params_m']:.2f} | {r['train_step_s']:.3f} | "
                f"{r['encode_fps']:.0f} | {r['decode_fps']:.0f} |"
            )


if __name__ == "__main__":
    main()
