"""Model speed: training-step throughput and decoding latency, printed as Markdown tables.

    python benchmarks/bench_model.py [--preset small] [--seq 256] [--batch 16] [--steps 4]
                                     [--threads N] [--compile] [--skip-train] [--skip-decode]

Training: forward + backward + AdamW step of the preset on random ids under the WorldVLA
mask, in fp32 and in bf16 autocast. As in the training loop, logits are computed only at
the target positions (``--target-fraction`` of each row, the end of the sample). Model
FLOP/s uses ``Transformer.flops_per_token`` (6·N + attention, head at the target
fraction); MFU is reported against the fp32 and bf16 matmul ceilings (a 4096³
``torch.matmul``) measured in the same run, right before each configuration. Each
configuration runs in a fresh process so that its peak RSS is its own.

Decoding: a K=5 action chunk (D=4 and D=7; token by token, and side by side as the policy
decodes it under the chunk mask) and one 8×8 frame after a ~300-token prompt,
batch 1, greedy: with the KV cache (:mod:`worldvla.model.generation`) vs. recomputing the
whole sequence at every sampled token (a full forward pass per token, as the reference
does). Times are the best of ``--reps`` runs: the machine may be shared, and the best run
is the one least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch

from worldvla.model.config import model_preset
from worldvla.model.generation import Slot, action_plan, decode, decode_chunk, frame_plan
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.vocab import Vocab, VocabConfig

VOCAB = Vocab.build(VocabConfig(image_codes=512))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(
    dtype: torch.dtype, n: int = 4096, reps: int = 3, device: str | torch.device = "cpu"
) -> float:
    """Best FLOP/s of an ``n³`` matmul in ``dtype``: what this machine's GEMM can do right now.

    On a GPU one matmul takes a fraction of a millisecond, so each timing covers 10 of them.
    """
    device = torch.device(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    inner = 1 if device.type == "cpu" else 10
    torch.matmul(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * inner / best


def _train_worker(args: dict) -> dict:
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    model = Transformer(model_preset(args["preset"]).with_vocab(VOCAB.size)).train()
    batch, seq, bf16 = args["batch"], args["seq"], args["bf16"]
    n_target = max(1, round(args["target_fraction"] * seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(VOCAB.text_start, VOCAB.size, (batch, seq + 1))
    inputs, targets = ids[:, :-1], ids[:, -n_target:]  # targets: the last n_target tokens of each row
    mask = attention_mask(inputs, VOCAB)  # (B, seq, seq)

    def forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        hidden = model.hidden_states(x, attn_mask=m)  # (B, seq, d)
        return model.output_logits(hidden[:, -n_target:])  # (B, n_target, V): logits at targets only

    fwd = torch.compile(forward) if args["compile"] else forward

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(inputs, mask)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    step()  # warm-up (and compilation)
    warmup = time.perf_counter() - t
    ceiling = matmul_ceiling(torch.bfloat16 if bf16 else torch.float32)
    times = []
    for _ in range(args["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "times": times,
        "warmup": warmup,
        "ceiling": ceiling,
        "flops_per_token": model.flops_per_token(seq, training=True, target_fraction=n_target / seq),
        "params": model.num_params(),
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_training(args: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    ceil32 = ceil16 = None
    rows = []
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        job = {
            "preset": args.preset,
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "bf16": bf16,
            "compile": args.compile,
            "threads": args.threads,
            "target_fraction": args.target_fraction,
        }
        with ctx.Pool(1) as pool:
            r = pool.apply(_train_worker, (job,))
        if bf16:
            ceil16 = r["ceiling"]
        else:
            ceil32 = r["ceiling"]
        rows.append((name, r))
    ceil32 = ceil32 or matmul_ceiling(torch.float32)
    ceil16 = ceil16 or matmul_ceiling(torch.bfloat16)
    tokens = args.batch * args.seq
    print(
        f"\nmatmul ceiling (4096^3, best of 3): fp32 {ceil32 / 1e9:.0f} GFLOP/s, "
        f"bf16 {ceil16 / 1e9:.0f} GFLOP/s"
    )
    print(
        f"\n## training step (fwd+bwd+AdamW), batch {args.batch} x seq {args.seq}, "
        f"logits at {args.target_fraction:.0%} of positions{', torch.compile' if args.compile else ''}"
    )
    print(
        "| precision | tokens/s (median) | tokens/s (best) | model GFLOP/s (best) | % fp32 ceiling "
        "| % bf16 ceiling | warm-up s | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        med, best = tokens / statistics.median(r["times"]), tokens / min(r["times"])
        flops = best * r["flops_per_token"]
        print(
            f"| {name} | {med:,.0f} | {best:,.0f} | {flops / 1e9:.1f} | {100 * flops / ceil32:.0f}% | "
            f"{100 * flops / ceil16:.0f}% | {r['warmup']:.1f} | {r['rss_gib']:.2f} |"
        )


@torch.inference_mode()
def recompute_decode(model: Transformer, prompt: torch.Tensor, plan: list[Slot]) -> torch.Tensor:
    """Decode ``plan`` without a cache: a full forward pass over the whole sequence per sampled token."""
    ids = prompt[None]  # (1, P)
    for slot in plan:
        if slot.forced is not None:
            nxt = torch.tensor([[slot.forced]])
        else:
            hidden = model.hidden_states(ids, attn_mask=attention_mask(ids, VOCAB))[:, -1]  # (1, d)
            nxt = model.output_logits(hidden)[:, slot.low : slot.high].argmax(-1, keepdim=True) + slot.low
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(prompt) :]


def best_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_decoding(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = Transformer(model_preset(args.preset).with_vocab(VOCAB.size)).eval()
    prompt = torch.randint(VOCAB.text_start, VOCAB.text_start + VOCAB.text_size, (args.prompt,))
    prompt[-1] = VOCAB.sep
    print(f"\n## decoding after a {args.prompt}-token prompt (greedy, batch 1, fp32, best of {args.reps})")
    print("| what | sampled tokens | cached s | per sampled token ms | recompute s | speed-up |")
    print("|---|---|---|---|---|---|")

    def one_by_one(plan: list[Slot]) -> Callable[[], torch.Tensor]:
        return lambda: decode(model, VOCAB, [prompt], plan).tokens[0]

    def side_by_side(k: int, d: int) -> Callable[[], torch.Tensor]:
        return lambda: decode_chunk(model, VOCAB, [prompt], k, d).tokens[0]

    d4, d7, frame = action_plan(VOCAB, 5, 4), action_plan(VOCAB, 5, 7), frame_plan(VOCAB, 8, 8)
    cases = [
        ("K=5 chunk, D=4", d4, one_by_one(d4)),
        ("K=5 chunk, D=4, parallel (policy)", d4, side_by_side(5, 4)),
        ("K=5 chunk, D=7", d7, one_by_one(d7)),
        ("K=5 chunk, D=7, parallel (policy)", d7, side_by_side(5, 7)),
        ("one 8x8 frame", frame, one_by_one(frame)),
    ]
    for name, plan, run in cases:
        n = sum(s.forced is None for s in plan)
        assert torch.equal(run(), recompute_decode(model, prompt, plan)), "cached != recomputed"
        t_cached = best_time(run, args.reps)
        t_full = best_time(lambda plan=plan: recompute_decode(model, prompt, plan), max(1, args.reps // 2))
        print(
            f"| {name} | {n} | {t_cached:.3f} | {1e3 * t_cached / n:.1f} | "
            f"{t_full:.3f} | {t_full / t_cached:.1f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per precision")
    ap.add_argument("--target-fraction", type=float, default=0.25, help="share of positions with a loss")
    ap.add_argument("--prompt", type=int, default=300)
    ap.add_argument("--reps", type=int, default=4, help="decoding repetitions (best is reported)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward pass")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.device("meta"):
        n_params = Transformer(model_preset(args.preset).with_vocab(VOCAB.size)).num_params()
    try:
        load = " ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    except OSError:
        load = "n/a"
    print(
        f"# bench_model: preset={args.preset} params={n_params / 1e6:.2f}M torch={torch.__version__} "
        f"threads={args.threads} cpu={platform.processor() or platform.machine()} load(1/5/15 min)={load}"
    )
    if not args.skip_train:
        run_training(args)
    if not args.skip_decode:
        run_decoding(args)


if __name__ == "__main__":
    main()
