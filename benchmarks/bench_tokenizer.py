"""Image tokenizer speed: training step, encode and decode throughput per preset, as a table.

    python benchmarks/bench_tokenizer.py [--presets mw64 mw64-vq] [--threads 1 2] [--batch 32]
                                         [--modes fp32 bf16 channels_last bf16+channels_last]

Timings are medians over a few repetitions after a warm-up, on random frames (speed does
not depend on the content). On a machine shared with other jobs, more threads can be
slower than fewer: small convolutions spin-wait for cores that are busy elsewhere.

Modes: ``fp32`` (what training uses), ``bf16`` (``torch.autocast("cpu", torch.bfloat16)``
around the forward pass), ``channels_last`` (model and input in NHWC memory format) and
both; the measurement decides whether training uses them (docs/image_tokenizer.md).
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


MODES = ("fp32", "bf16", "channels_last", "bf16+channels_last")


def bench(preset: str, threads: int, batch: int, reps: int, mode: str = "fp32") -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = VQTokenizer(vq_preset(preset))
    size = tok.image_size
    frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tok.init_codebook(frames)
    model = tok.model
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, S, S)
    if "channels_last" in mode:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = "bf16" in mode

    def step() -> None:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            rec, _, aux = model(x)
        loss = F.mse_loss(rec.float(), x) + aux.float()
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
    p.add_argument("--modes", nargs="+", default=["fp32"], choices=MODES)
    args = p.parse_args()
    print(
        f"| preset | threads | mode | params (M) | train step, batch {args.batch} (s) "
        "| encode (frames/s) | decode (frames/s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for threads in args.threads:
            for mode in args.modes:
                r = bench(preset, threads, args.batch, args.reps, mode)
                print(
                    f"| {preset} | {threads} | {mode} | {r['params_m']:.2f} | {r['train_step_s']:.3f} | "
                    f"{r['encode_fps']:.0f} | {r['decode_fps']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
