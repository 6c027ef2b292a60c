"""Model speed: training-step throughput and decoding latency, printed as tables.

    python benchmarks/bench_model.py [--preset small] [--seq 256] [--batch 16] [--steps 5]

Training: forward + backward + AdamW step on random ids with the WorldVLA mask, in fp32 and
in bf16 autocast. Model FLOP/s uses ``Transformer.flops_per_token`` (6·N + attention);
MFU is reported against large-matmul ceilings measured in the same run on the same
machine (a 4096³ torch.matmul in fp32 and in bf16).

Decoding: a K=5 action chunk (D=4) and one 8×8 frame after a ~300-token prompt, with the
KV cache (:mod:`worldvla.model.generation`) vs. recomputing the whole sequence at every
step (a full forward pass per new token, as the reference does).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from worldvla.config import model_preset
from worldvla.model.generation import action_plan, frame_plan, generate_actions, generate_frame
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.vocab import Vocab, VocabConfig


def matmul_ceiling(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def train_throughput(model: Transformer, vocab: Vocab, batch: int, seq: int, steps: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=False)
    ids = torch.randint(vocab.text_start, vocab.size, (batch, seq))
    mask = attention_mask(ids, vocab)
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids[:, :-1], attn_mask=mask[:, :-1, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * (seq - 1) * steps / (time.perf_counter() - t)


def recompute_decode(model: Transformer, vocab: Vocab, prompt: torch.Tensor, plan) -> float:  # noqa: ANN001
    """Latency of decoding ``plan`` by re-running the full sequence for each sampled token."""
    ids = prompt[None]
    t = time.perf_counter()
    with torch.inference_mode():
        for slot in plan:
            if slot.forced is not None:
                nxt = torch.tensor([[slot.forced]])
            else:
                logits = model(ids, attn_mask=attention_mask(ids, vocab))[:, -1, slot.low : slot.high]
                nxt = logits.argmax(-1, keepdim=True) + slot.low
            ids = torch.cat([ids, nxt], dim=1)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=300)
    args = ap.parse_args()

    torch.manual_seed(0)
    vocab = Vocab.build(VocabConfig(image_codes=512))
    model = Transformer(model_preset(args.preset).with_vocab(vocab.size))
    print(
        f"# bench_model: preset={args.preset} params={model.num_params() / 1e6:.2f}M "
        f"torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()}"
    )

    ceil32 = matmul_ceiling(torch.float32)
    ceil16 = matmul_ceiling(torch.bfloat16)
    print(f"\nmatmul ceiling (4096^3): fp32 {ceil32 / 1e9:.0f} GFLOP/s, bf16 {ceil16 / 1e9:.0f} GFLOP/s")

    fpt = model.flops_per_token(args.seq, training=True)
    print(f"\n## training step (fwd+bwd+AdamW), batch {args.batch} x seq {args.seq}")
    print("| precision | tokens/s | model GFLOP/s | % fp32 ceiling | % bf16 ceiling | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        tps = train_throughput(model, vocab, args.batch, args.seq, args.steps, bf16)
        flops = tps * fpt
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"| {name} | {tps:,.0f} | {flops / 1e9:.1f} | {100 * flops / ceil32:.0f}% | "
            f"{100 * flops / ceil16:.0f}% | {rss:.2f} |"
        )

    model.eval()
    prompt = torch.randint(vocab.text_start, vocab.text_start + vocab.text_size, (args.prompt,))
    prompt[-1] = vocab.sep
    print(f"\n## decoding after a {args.prompt}-token prompt (greedy, batch 1)")
    print("| what | cached (s) | recompute (s) | speed-up |")
    print("|---|---|---|---|")
    cases = [
        ("K=5 chunk, D=4", action_plan(vocab, 5, 4), lambda: generate_actions(model, vocab, [prompt], 5, 4)),
        ("one 8x8 frame", frame_plan(vocab, 8, 8), lambda: generate_frame(model, vocab, [prompt], (8, 8))),
    ]
    for name, plan, cached in cases:
        cached()
        reps = 3
        t = time.perf_counter()
        for _ in range(reps):
            cached()
        t_cached = (time.perf_counter() - t) / reps
        t_full = float(np.median([recompute_decode(model, vocab, prompt, plan) for _ in range(2)]))
        print(f"| {name} | {t_cached:.3f} | {t_full:.3f} | {t_full / t_cached:.1f}x |")


if __name__ == "__main__":
    main()
