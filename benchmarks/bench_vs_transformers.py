"""This project's transformer against transformers' Chameleon: same shape, same weights, one process.

    python benchmarks/bench_vs_transformers.py [--threads 1] [--reps 3] [--quick]
                                               [--shapes mt50,mini-16x256,small-16x256]
                                               [--variants eager,compile+math] [--packing]
                                               [--skip-train] [--skip-decode]

Both models are built from one set of weights: ours is a :class:`~worldvla.model.Transformer`
with Chameleon's QK-norm (every transformers Chameleon layer has one), converted tensor for
tensor with :func:`worldvla.convert.chameleon.hf_tensors` into a
``ChameleonForConditionalGeneration`` (SDPA attention), and the logits of the two are
checked to agree before anything is timed.

(a) Training step: bf16 autocast forward, fp32 cross-entropy over the *full* logits
``(B, L, V)`` (every position, in both), backward, AdamW step. Both models get the same
ids and the same boolean WorldVLA mask (transformers as a prepared 4-D mask). Shapes:
``mt50`` is a batch of the MT50 recipe (train preset ``mt50``: the ``compact`` model,
32 samples from its real sample stream over a synthetic Meta-World-shaped token cache,
padded as the loader pads them); ``mini-16x256`` / ``small-16x256`` are 16 random rows of
256 tokens. Tokens/s counts every position of the batch (padding included, the same work
in both); the model FLOP/s (``Transformer.flops_per_token``, full logits) is reported as
a share of the bf16 matmul ceiling (a 4096³ ``torch.matmul``) measured in the same run;
"in matmuls" is the time one more (profiled) step spends inside matmul kernels.

(b) World-model frame: one 8×8 frame (64 codes, row separators, 76 tokens) after a real
world-model prompt of the mt50 stream, batch 1, greedy, KV cache. (c) Action chunk: K=10
actions of D=4 after a real action prompt, decoded side by side as the policy does. Both
run the same decoder (:mod:`worldvla.model.generation`: the same plan, masks, positions
and forward calls); for transformers the network behind it is the Chameleon model with
its ``DynamicCache``, through a small adapter. The tokens must agree. The last column is
the time one decode spends inside matmul kernels (``torch.profiler``, one extra run):
at batch 1 these are matrix-vector products that read every weight once per step.

Variants of ours (``--variants``, the training step only), the switches of
:class:`~worldvla.train.config.TrainConfig`: ``eager``; ``math`` (``attention="math"``:
attention as explicit matmuls and an fp32 softmax instead of SDPA); ``compile``
(``compile=True``: each block ``torch.compile``d, SDPA inside); ``compile+math`` (both);
``compile+math+ce`` (and the cross-entropy compiled too: cast, log-softmax and its
backward fused).

(d) ``--packing``: ours on one mt50 batch, padded as the loader pads it vs packed first-fit
into rows of twice that length (each sample keeps its own mask block and positions),
real tokens/s for each variant.

Every timing is the best of ``--reps`` after a warm-up, the models taking turns (a burst
of load from another process hits them alike): on a shared machine the best run is the
least disturbed one. Threads: ``--threads`` (set once, for both models).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from bench_model import matmul_ceiling
from worldvla.convert.chameleon import UNUSED_VQ_CONFIG, hf_config_from_model, hf_tensors
from worldvla.data.datasets import InMemoryCache
from worldvla.model.config import ModelConfig, model_preset
from worldvla.model.generation import decode_chunk, generate_frame
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.train.config import train_preset
from worldvla.train.data import build_data
from worldvla.vocab import Vocab


# ---------------------------------------------------------------------------- the two models
def chameleon_config(preset: str, vocab_size: int) -> ModelConfig:
    """The preset with Chameleon's QK-norm (epsilon 1e-5), sized to the vocabulary."""
    return replace(model_preset(preset).with_vocab(vocab_size), qk_norm=True, qk_norm_eps=1e-5)


def build_pair(cfg: ModelConfig, seed: int = 0) -> tuple[Transformer, torch.nn.Module]:
    """Ours (random init, norms perturbed so a mis-mapped tensor shows) and transformers' copy of it."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    ours = Transformer(cfg)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf_cfg = ChameleonConfig(
        **hf_config_from_model(cfg), vq_config=UNUSED_VQ_CONFIG, attn_implementation="sdpa"
    )
    hf = ChameleonForConditionalGeneration(hf_cfg)
    state = ours.state_dict()
    missing, _ = hf.load_state_dict(dict(hf_tensors(cfg, state.__getitem__)), strict=False)
    if any("vqmodel" not in k for k in missing):
        raise RuntimeError(f"tensors not mapped onto transformers' model: {missing}")
    return ours, hf


def hf_logits(hf: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """transformers' full logits under a boolean ``(B, L, L)`` mask (a prepared 4-D mask, used as is)."""
    return hf(input_ids=ids, attention_mask=mask[:, None], use_cache=False).logits


class HFCache:
    """transformers' ``DynamicCache`` behind the two things the decoder asks of a :class:`KVCache`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.length = 0

    def truncate(self, length: int) -> None:
        drop = self.length - length
        if drop:
            for layer in self.inner.layers:
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
        self.length = length


class HFAsTransformer:
    """transformers' Chameleon with the decoding interface of :class:`Transformer`.

    The decoder of :mod:`worldvla.model.generation` then drives it exactly as it drives
    ours: the same plan, mask rows, positions and forward calls.
    """

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf
        self.tok_emb = hf.model.embed_tokens

    def new_cache(self, batch: int, max_len: int) -> HFCache:
        from transformers import DynamicCache

        return HFCache(DynamicCache(config=self.hf.config))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: HFCache | None = None,
    ) -> torch.Tensor:
        out = self.hf.model(
            input_ids=input_ids,
            attention_mask=attn_mask[:, None] if attn_mask is not None else None,  # (B, 1, L, S)
            position_ids=positions,
            past_key_values=cache.inner if cache is not None else None,
            use_cache=cache is not None,
        )
        if cache is not None:
            cache.length += input_ids.shape[1]
        return out.last_hidden_state

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(hidden)


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Shape:
    name: str
    preset: str
    batch: int
    seq: int  # 0: the mt50 stream's own (padded) lengths


def mt50_data(quick: bool) -> Any:
    """The sample streams of train preset ``mt50`` over a synthetic Meta-World-shaped cache."""
    cfg = train_preset("mt50")
    cache = InMemoryCache.synthetic(
        n_episodes=4 if quick else 8, length=40, grid=(8, 8), action_dim=4, codebook_size=512, state_dim=4
    )
    return build_data(cfg, cache, model_preset(cfg.model).max_seq_len)


def batch_ids(shape: Shape, data: Any, vocab: Vocab) -> torch.Tensor:
    if shape.seq == 0:
        return data.train.batch(0, shape.batch, vocab).ids  # (B, L) padded as the loader pads
    g = torch.Generator().manual_seed(0)
    return torch.randint(vocab.text_start, vocab.size, (shape.batch, shape.seq), generator=g)


# ---------------------------------------------------------------------------- timing
def best_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Best time of each function over ``reps`` rounds that run every function once, in turn.

    Interleaved, so that a burst of load from another process hits all of them alike.
    """
    for fn in fns.values():
        fn()  # warm-up (and compilation)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy of ``(B, L, V)`` logits, as the training loss computes it."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train_step_fn(
    model: torch.nn.Module,
    logits_fn: Callable[[], torch.Tensor],
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
) -> Callable[[], float]:
    """One bf16-autocast step: full logits, fp32 cross-entropy over every position, backward, AdamW."""
    params = [p for n, p in model.named_parameters() if "vqmodel" not in n]  # not transformers' VQGAN
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = logits_fn()  # (B, L, V)
        loss = loss_fn(logits, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


VARIANTS = ("eager", "math", "compile", "compile+math", "compile+math+ce")


def variant(ours: Transformer, name: str) -> Transformer:
    """A copy of ``ours`` run as the training loop runs it under ``TrainConfig`` ``compile``/``attention``.

    ``math``: ``attention="math"``; ``compile``: each block ``torch.compile``d (``compile=True``).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r} (use {VARIANTS})")
    model = Transformer(ours.cfg).train()
    model.load_state_dict(ours.state_dict())
    if "math" in name:
        model.set_attention_kernel("math")
    if "compile" in name:
        for block in model.blocks:
            block.compile()
    return model


def run_training(shape: Shape, data: Any, vocab: Vocab, variants: list[str], reps: int) -> list[dict]:
    cfg = chameleon_config(shape.preset, vocab.size)
    ours, hf = build_pair(cfg)
    ids = batch_ids(shape, data, vocab)  # (B, L)
    mask = attention_mask(ids, vocab)  # (B, L, L)
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():  # equal weights, equal function (fp32) before timing anything
        err = (ours(ids[:2], attn_mask=mask[:2]) - hf_logits(hf, ids[:2], mask[:2])).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"{shape.name}: ours and transformers' logits differ by {err:.2e}")
    ours.train(), hf.train()
    fns = {"transformers": train_step_fn(hf, lambda: hf_logits(hf, ids, mask), targets)}
    for v in variants:
        model = ours if v == "eager" else variant(ours, v)
        loss_fn = torch.compile(cross_entropy) if v.endswith("+ce") else cross_entropy
        fns[f"ours ({v})"] = train_step_fn(model, lambda m=model: m(ids, attn_mask=mask), targets, loss_fn)
    ceiling = matmul_ceiling(torch.bfloat16)
    tokens = ids.numel()
    flops = ours.flops_per_token(ids.shape[1], training=True, target_fraction=1.0)
    times = best_times(fns, reps)
    in_matmuls = {name: matmul_ms(fn) / 1e3 for name, fn in fns.items()}  # one more, profiled step
    base = times["transformers"]
    return [
        {
            "shape": f"{shape.name} ({shape.preset}, {ids.shape[0]}x{ids.shape[1]})",
            "model": name,
            "step_s": t,
            "tokens_s": tokens / t,
            "ceiling_pct": 100 * tokens / t * flops / ceiling,
            "ceiling": ceiling,
            "speedup": base / t,
            "matmul_s": in_matmuls[name],
        }
        for name, t in times.items()
    ]


def pack(samples: list[torch.Tensor], vocab: Vocab, capacity: int) -> tuple[torch.Tensor, ...]:
    """Samples packed first-fit, in order, into rows of at most ``capacity`` tokens.

    Returns ``(ids, mask, positions)``: each sample keeps its own WorldVLA mask (a block on
    the diagonal; nothing crosses samples) and positions from 0; the rows are right-padded
    to a common length (a multiple of 8, as the loader pads).
    """
    rows: list[list[torch.Tensor]] = []
    for s in samples:
        row = next((r for r in rows if sum(map(len, r)) + len(s) <= capacity), None)
        rows.append([s]) if row is None else row.append(s)
    width = -(-max(sum(map(len, r)) for r in rows) // 8) * 8
    ids = torch.full((len(rows), width), vocab.pad, dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # a PAD query sees itself
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for s in row:
            end = start + len(s)
            ids[b, start:end], positions[b, start:end] = s, torch.arange(len(s))
            mask[b, start:end, start:end] = attention_mask(s, vocab)[0]
            start = end
    return ids, mask, positions


def run_packing(data: Any, vocab: Vocab, variants: list[str], reps: int, quick: bool) -> list[dict]:
    """Ours on one mt50 batch, padded as the loader pads it vs packed into rows of twice its length."""
    n = 4 if quick else 32
    samples = [torch.as_tensor(data.train.sample(p)[0].ids) for p in range(n)]
    padded = data.train.batch(0, n, vocab).ids  # (B, L)
    real = sum(len(s) for s in samples)
    layouts = {
        "padded": (padded, attention_mask(padded, vocab), None),
        "packed": pack(samples, vocab, 2 * padded.shape[1]),
    }
    ours, _ = build_pair(chameleon_config("tiny" if quick else "compact", vocab.size))
    ids, mask, pos = layouts["packed"]
    with torch.no_grad():  # the first row's first sample: the same logits packed as alone
        first = len(samples[0])
        alone = ours(samples[0][None], attn_mask=attention_mask(samples[0], vocab))[0]
        packed = ours(ids[:1], attn_mask=mask[:1], positions=pos[:1])[0, :first]
    if (alone - packed).abs().max().item() > 1e-4:
        raise RuntimeError("a packed sample's logits differ from the sample's own")
    fns, shapes = {}, {}
    for v in variants:
        for layout, (ids, mask, pos) in layouts.items():
            model = variant(ours, v)  # one model per layout: a compiled block sees one family of shapes
            run = lambda m=model, i=ids, k=mask, p=pos: m(i, attn_mask=k, positions=p)  # noqa: E731
            fns[(v, layout)] = train_step_fn(model, run, torch.roll(ids, -1, dims=1))
            shapes[(v, layout)] = tuple(ids.shape)
    times = best_times(fns, reps)
    return [
        {
            "variant": v,
            "layout": layout,
            "shape": shapes[(v, layout)],
            "step_s": t,
            "real_tokens_s": real / t,
            "pad_pct": 100 * (1 - real / (shapes[(v, layout)][0] * shapes[(v, layout)][1])),
        }  # fmt: skip
        for (v, layout), t in times.items()
    ]


def run_decoding(data: Any, vocab: Vocab, reps: int, quick: bool) -> list[dict]:
    cfg = chameleon_config("tiny" if quick else "compact", vocab.size)
    ours, hf = build_pair(cfg)
    ours.eval(), hf.eval()
    other = HFAsTransformer(hf)
    samples = [data.train.sample(p) for p in range(8)]
    world = next(s for s, kind in samples if kind == 1)  # kind 1: a world-model sample
    action = next(s for s, kind in samples if kind == 0)
    world_prompt = torch.as_tensor(world.ids[: -(8 * 9 + 4) - 1])  # up to the SEP before the frame
    action_prompt = torch.as_tensor(action.ids[: -(10 * 6) - 1])  # up to the SEP before the chunk
    with torch.inference_mode():
        cases = {
            "8x8 world-model frame": lambda m: generate_frame(m, vocab, [world_prompt], (8, 8)),
            "K=10 action chunk, D=4 (side by side)": lambda m: (
                decode_chunk(m, vocab, [action_prompt], 10, 4).tokens
            ),
        }
        rows = []
        for what, fn in cases.items():
            a, b = fn(ours), fn(other)
            if not torch.equal(a, b):
                raise RuntimeError(f"{what}: ours and transformers decode different tokens")
            t = best_times({"hf": lambda fn=fn: fn(other), "ours": lambda fn=fn: fn(ours)}, reps)
            t_hf, t_ours = t["hf"], t["ours"]
            rows.append({"what": what, "prompt": len(world_prompt if "frame" in what else action_prompt),
                         "ours_ms": 1e3 * t_ours, "hf_ms": 1e3 * t_hf, "speedup": t_hf / t_ours,
                         "ours_mm_ms": matmul_ms(lambda fn=fn: fn(ours)),
                         "hf_mm_ms": matmul_ms(lambda fn=fn: fn(other))})  # fmt: skip
    return rows


def matmul_ms(fn: Callable[[], object]) -> float:
    """Milliseconds one call of ``fn`` spends inside matmul kernels (torch.profiler self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kernels = ("aten::mm", "aten::addmm", "aten::bmm")
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in kernels) / 1e3


def print_tables(train_rows: list[dict], decode_rows: list[dict], pack_rows: list[dict], reps: int) -> None:
    if train_rows:
        print(f"\n## training step, bf16 autocast, full logits (best of {reps}, interleaved)")
        print(
            "| shape | model | step s | in matmuls s | tokens/s | bf16 ceiling GFLOP/s | % of it "
            "| vs transformers |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in train_rows:
            print(
                f"| {r['shape']} | {r['model']} | {r['step_s']:.3f} | {r['matmul_s']:.3f} | "
                f"{r['tokens_s']:,.0f} | {r['ceiling'] / 1e9:.0f} | {r['ceiling_pct']:.0f}% | "
                f"{r['speedup']:.2f}x |"
            )
    if pack_rows:
        print(f"\n## padding vs packing, ours, one mt50 batch (best of {reps}, interleaved)")
        print("| variant | layout | rows x length | pad share | step s | real tokens/s |")
        print("|---|---|---|---|---|---|")
        for r in pack_rows:
            rows, length = r["shape"]
            print(
                f"| {r['variant']} | {r['layout']} | {rows}x{length} | {r['pad_pct']:.0f}% | "
                f"{r['step_s']:.3f} | {r['real_tokens_s']:,.0f} |"
            )
    if decode_rows:
        print(f"\n## decoding, batch 1, greedy, KV cache, fp32 (best of {reps}, interleaved)")
        print(
            "| what | prompt tokens | ours ms | transformers ms | speed-up | matmuls: ours, transformers ms |"
        )
        print("|---|---|---|---|---|---|")
        for r in decode_rows:
            ms = f"{r['ours_ms']:.1f} | {r['hf_ms']:.1f}"
            mm = f"{r['ours_mm_ms']:.1f}, {r['hf_mm_ms']:.1f}"
            print(f"| {r['what']} | {r['prompt']} | {ms} | {r['speedup']:.2f}x | {mm} |")


SHAPES = {
    "mt50": Shape("mt50", "compact", 32, 0),
    "mini-16x256": Shape("mini-16x256", "mini", 16, 256),
    "small-16x256": Shape("small-16x256", "small", 16, 256),
    "tiny": Shape("tiny", "tiny", 2, 32),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="mt50,mini-16x256,small-16x256")
    ap.add_argument("--variants", help=f"of ours, any of {VARIANTS} (default: all; --quick: eager)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny shape, tiny decoder, 1 rep")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--packing", action="store_true", help="also: one mt50 batch padded vs packed (ours)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.reps = "tiny", 1
    args.variants = args.variants or ("eager" if args.quick else ",".join(VARIANTS))
    torch.set_num_threads(args.threads)
    import transformers

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# bench_vs_transformers: torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={args.threads} cpu={platform.processor() or platform.machine()} load(1/5/15 min)={load}"
    )
    data = mt50_data(args.quick)
    vocab = data.vocab
    train_rows: list[dict] = []
    if not args.skip_train:
        for name in args.shapes.split(","):
            train_rows += run_training(SHAPES[name], data, vocab, args.variants.split(","), args.reps)
    variants = args.variants.split(",")
    pack_rows = run_packing(data, vocab, variants, args.reps, args.quick) if args.packing else []
    decode_rows = [] if args.skip_decode else run_decoding(data, vocab, args.reps, args.quick)
    print_tables(train_rows, decode_rows, pack_rows, args.reps)


if __name__ == "__main__":
    main()
