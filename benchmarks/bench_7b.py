"""The Chameleon-7B shape at work: one LIBERO action query in bf16, on a CPU or a GPU.

    python benchmarks/bench_7b.py [--preset chameleon-7b] [--device cpu|cuda] [--threads N]
                                  [--resolution 256[,512]] [--chunk-len 5,10] [--reps 3]
                                  [--warmup 1] [--layers N] [--sequential] [--dry-run]
                                  [--instruction TEXT] [--text-tokenizer JSON]
    python benchmarks/bench_7b.py --preset tiny --reps 2        # quick smoke run
    python benchmarks/bench_7b.py --dry-run                     # sizes and memory only, allocates nothing

The model of ``--preset`` gets the vocabulary of the released checkpoints
(:func:`worldvla.convert.reference_prompts.reference_vocab`, 65,536 ids) and random weights
made directly in bf16: it is built on the ``meta`` device, cast there (which costs nothing),
given uninitialized bf16 storage on ``--device`` and initialized in place by the model's own
:meth:`~worldvla.model.transformer.Transformer.reset_parameters` (``normal_`` writes bf16 in
place, without an fp32 temporary). No fp32 copy of the weights ever exists, so the 7B model
needs its ~13 GiB of bf16 weights, not 26 GiB more.

The prompt is the reference's LIBERO action query as a converted checkpoint's policy builds
it (:func:`worldvla.sequence.action_prompt_ids` with the reference vocabulary and wording,
docs/chameleon.md): BOS, "What action should the robot take to {instruction}?", the frames of
steps t-1 and t (history M of the LIBERO presets, the steady state after an episode's first
query), SEP; a frame at R² is (R/16)² codes of the 16-pixel VQGAN, with BOI, two grid tokens,
a row separator after each row and EOI. The codes are random. Chameleon's BPE is not part of
this project, so the instruction is counted by a stand-in, one token per word or punctuation
mark; ``--text-tokenizer`` takes Chameleon's ``text_tokenizer.json`` for the exact count.

Measured, batch 1, after ``--warmup`` untimed runs, median and best of ``--reps``:

- prefill: one forward pass over the prompt that fills the KV cache, logits at its last
  position (what the policy computes before the first chunk token);
- chunk decoding: one K-action chunk of D = 7 bins after the prefilled prompt, greedy, with
  the KV cache and the chunk mask, through :func:`worldvla.model.generation.decode_chunk`: the
  K actions side by side (D forward steps of K tokens), as the policy decodes a chunk;
  ``--sequential`` adds one-by-one decoding (K·D steps). K is each chunk length of the LIBERO
  presets (5; 10 for LIBERO-10) unless ``--chunk-len`` says otherwise.

Model FLOP/s follow ``Transformer.flops_per_token`` (2 FLOPs per weight and token, the
attention over the visible keys, the output head where logits are computed); MFU is against
a 4096³ bf16 matmul measured in the same run on the same device. A decoding step reads every
weight once for a handful of tokens, so it is bound by memory bandwidth: the chunk table
reports the weight bytes read per second. Peak memory is the process's peak resident memory
(Linux ``VmHWM``, reset before each phase) on a CPU and ``torch.cuda.max_memory_allocated`` on
a GPU. The last table states what a GPU needs, computed from the parameter count and the
prompt layout: the bf16 weights, the KV cache per token and at the prompt plus its chunk, the
FLOPs of a prefill and the weight bytes a chunk reads.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from bench_model import matmul_ceiling, synchronize
from worldvla.convert.reference_prompts import REFERENCE_PROMPTS, check_frame_grid, reference_vocab
from worldvla.envs.libero_benchmark import ACTION_DIM
from worldvla.libero_presets import CHUNK_LEN, libero_preset
from worldvla.model.config import ModelConfig, model_preset
from worldvla.model.generation import DecodeState, decode_chunk, left_pad
from worldvla.model.masks import attention_mask
from worldvla.model.transformer import Transformer
from worldvla.sequence import action_length, action_prompt_ids
from worldvla.tokenizers.text import TextTokenizer, load_text_tokenizer
from worldvla.vocab import Vocab

DTYPE = torch.bfloat16
GiB = 2**30
# A LIBERO-Spatial task (17 words, on the long side of the four suites' instructions).
INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


# ---------------------------------------------------------------------------- the model
def build_random(cfg: ModelConfig, device: torch.device) -> Transformer:
    """``cfg``'s model with random bf16 weights on ``device``, never holding fp32 weights."""
    with torch.device("meta"):
        model = Transformer(cfg).to(DTYPE)  # shapes only: casting meta tensors allocates nothing
    if any(True for _ in model.buffers()):
        raise RuntimeError("the model has buffers, which to_empty would leave uninitialized")
    model.to_empty(device=device)  # uninitialized bf16 storage
    with torch.no_grad():
        # What the constructor sets and reset_parameters leaves alone: norm weights 1, biases 0.
        for name, p in model.named_parameters():
            if p.dim() < 2:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
        model.reset_parameters()  # every matrix: normal_ in place, in bf16
    return model.eval()


def model_config(args: argparse.Namespace, vocab: Vocab) -> ModelConfig:
    cfg = model_preset(args.preset).with_vocab(vocab.size)
    return replace(cfg, n_layers=args.layers) if args.layers else cfg


def kv_bytes_per_token(cfg: ModelConfig) -> int:
    """Keys and values of one token in every layer, in bf16."""
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.head_dim * DTYPE.itemsize


def weight_bytes_read(model: Transformer) -> int:
    """Bytes of the weights one forward step reads: all but the input embedding table (a lookup)."""
    return model.num_params(embeddings=False) * DTYPE.itemsize


# ---------------------------------------------------------------------------- the prompt
class WordTokenizer:
    """Stand-in for Chameleon's BPE: one token per word or punctuation mark.

    Common English words are mostly one BPE token each, so the count is close (a rare word
    may take two or three). Ids avoid every id the reference layout gives a meaning (specials,
    image codes, grid tokens, action bins), so the attention mask sees plain text.
    """

    def __init__(self, vocab: Vocab) -> None:
        taken = set(vocab.specials.values())
        taken |= set(range(vocab.image_start, vocab.image_start + vocab.image_codes))
        taken |= set(range(vocab.action_start, vocab.action_start + vocab.action_bins))
        taken |= set(range(vocab.grid_start, vocab.grid_start + vocab.max_grid + 1))
        self.plain = [t for t in range(vocab.text_size) if vocab.text_start + t not in taken]
        self.size = vocab.text_size

    def encode(self, text: str) -> list[int]:
        words = re.findall(r"\w+|[^\w\s]", text)
        return [self.plain[zlib.crc32(w.encode()) % len(self.plain)] for w in words]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError("the stand-in tokenizer only counts")

    def fingerprint(self) -> str:
        return "bench-words"


@dataclass(frozen=True)
class Query:
    """The LIBERO action query at one resolution."""

    resolution: int
    history: int  # frames in the prompt
    prompt: np.ndarray  # (P,) ids

    @property
    def length(self) -> int:
        return len(self.prompt)


def reference_query(vocab: Vocab, text: TextTokenizer, instruction: str, resolution: int) -> Query:
    """The prompt of the reference's steady-state LIBERO action query at ``resolution``² pixels."""
    preset = libero_preset(f"libero-goal-{resolution}")  # every suite shares the layout but K
    grid = preset.grid  # codes per side: resolution / the VQGAN's 16 pixels
    check_frame_grid((grid, grid), vocab)
    rng = np.random.default_rng(resolution)
    frames = [rng.integers(0, vocab.image_codes, (grid, grid)) for _ in range(preset.train.history)]
    prompt = action_prompt_ids(vocab, text, instruction, frames, REFERENCE_PROMPTS)
    return Query(resolution, preset.train.history, prompt)


# ---------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory of one phase: resident memory on a CPU (Linux), allocated memory on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM back to the current resident size
        except OSError:
            pass  # then the peak is the process's so far

    def _status(self, key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return self._status("VmHWM")

    def now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return self._status("VmRSS")


def timed(fn: Callable[[], object], reps: int, warmup: int, device: torch.device, what: str) -> list[float]:
    """Seconds of each of ``reps`` runs of ``fn`` after ``warmup`` untimed ones (progress on stderr)."""
    for _ in range(warmup):
        fn()
        synchronize(device)
    times = []
    for i in range(reps):
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
        print(f"  {what}: run {i + 1}/{reps} {times[-1]:.3f} s", file=sys.stderr, flush=True)
    return times


@torch.inference_mode()
def prefill(model: Transformer, vocab: Vocab, prompt: np.ndarray, capacity: int) -> DecodeState:
    """One forward pass over ``prompt`` into a fresh KV cache of ``capacity`` tokens; logits at its end."""
    ids, positions = left_pad([prompt], vocab.pad)  # (1, P) each
    device = model.tok_emb.weight.device
    ids, positions = ids.to(device), positions.to(device)
    cache = model.new_cache(1, capacity)
    hidden = model.hidden_states(ids, attn_mask=attention_mask(ids, vocab), positions=positions, cache=cache)
    model.output_logits(hidden[:, -1])  # (1, V): what predicts the chunk's first token
    return DecodeState(ids, positions, cache, ids.shape[1])


def decode_work(model: Transformer, prompt_len: int, k: int, d: int, parallel: bool) -> tuple[int, float]:
    """``(forward steps, model FLOPs)`` of decoding a K×D chunk after a cached ``prompt_len`` prompt.

    Side by side: D steps feed K tokens each; one by one: K·D steps feed the K·(D+2) - 2
    tokens before the last bin. Logits at K·D positions either way; every fed token attends
    to the prompt's keys (its own few earlier chunk tokens are left out).
    """
    cfg = model.cfg
    per_token = model.flops_per_token(0, training=False, target_fraction=0.0)  # 2 x block weights
    head = 2 * cfg.d_model * cfg.vocab_size
    attention = 4 * cfg.d_model * cfg.n_layers * prompt_len  # scores and sums over the prompt keys
    fed = k * d if parallel else k * (d + 2) - 2
    steps = d if parallel else k * d
    return steps, fed * (per_token + attention) + k * d * head


# ---------------------------------------------------------------------------- report
def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return f"cpu={cpu_name()}"
    if not torch.cuda.is_available():
        return f"gpu=(none here) cpu={cpu_name()}"
    props = torch.cuda.get_device_properties(device)
    return f"gpu={props.name} ({props.total_memory / GiB:.1f} GiB) cpu={cpu_name()}"


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


@dataclass
class Measured:
    """Times (s) and peak memory (bytes) of one measurement; ``flops`` and ``steps`` per run."""

    what: str
    query: Query
    times: list[float]
    peak: int
    flops: float
    steps: int = 1  # forward steps per run
    k: int = 0  # chunk length (0 for a prefill)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def measure(
    model: Transformer, vocab: Vocab, queries: list[Query], chunk_lens: list[int], args: argparse.Namespace
) -> tuple[list[Measured], list[Measured]]:
    """Prefill of each query, then each chunk length decoded after it: ``(prefills, chunks)``."""
    device = model.tok_emb.weight.device
    mem = PeakMemory(device)
    capacity_extra = max(chunk_lens) * action_length(ACTION_DIM)
    modes = [("side by side (policy)", True)] + ([("one by one", False)] if args.sequential else [])
    prefills, chunks = [], []
    for q in queries:
        capacity = q.length + capacity_extra

        def run_prefill(q: Query = q, capacity: int = capacity) -> DecodeState:
            return prefill(model, vocab, q.prompt, capacity)

        mem.reset()
        times = timed(run_prefill, args.reps, args.warmup, device, f"prefill {q.resolution}²")
        flops = q.length * model.flops_per_token(q.length, training=False, target_fraction=1 / q.length)
        prefills.append(Measured("prefill", q, times, mem.peak(), flops))
        state = run_prefill()  # the cached prompt every chunk below continues from
        for k in chunk_lens:
            for how, parallel in modes:

                def run_chunk(state: DecodeState = state, k: int = k, parallel: bool = parallel) -> None:
                    state.cache.truncate(state.fed)  # forget the previous run's chunk
                    decode_chunk(model, vocab, [[]], k, ACTION_DIM, state=state, parallel=parallel)

                mem.reset()
                times = timed(run_chunk, args.reps, args.warmup, device, f"K={k} {how} {q.resolution}²")
                steps, flops = decode_work(model, q.length, k, ACTION_DIM, parallel)
                chunks.append(Measured(how, q, times, mem.peak(), flops, steps, k))
    return prefills, chunks


def print_prefill(rows: list[Measured], ceiling: float, args: argparse.Namespace) -> None:
    print(
        f"\n## prefill: one forward pass over the prompt (batch 1, median and best of {args.reps} "
        f"after {args.warmup} warm-up)"
    )
    print(
        "| resolution | prompt tokens | median s | best s | tokens/s (best) | model GFLOP/s (best) "
        "| % bf16 ceiling | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rate = r.flops / r.best
        print(
            f"| {r.query.resolution}² | {r.query.length:,} | {r.median:.3f} | {r.best:.3f} | "
            f"{r.query.length / r.best:,.0f} | {rate / 1e9:,.1f} | {100 * rate / ceiling:.0f}% | "
            f"{gib(r.peak)} |"
        )


def print_chunks(
    rows: list[Measured],
    prefills: list[Measured],
    model: Transformer,
    ceiling: float,
    args: argparse.Namespace,
) -> None:
    print(
        f"\n## chunk decoding after the cached prompt: K actions of D={ACTION_DIM} bins, greedy, "
        f"chunk mask (median and best of {args.reps})"
    )
    print(
        "| resolution | K | how | forward steps | sampled tokens | median s | best s | per token ms "
        "| per step ms | weights read GB/s | model GFLOP/s | % bf16 ceiling | prefill + chunk s | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    read = weight_bytes_read(model)
    prefill_best = {r.query.resolution: r.best for r in prefills}
    for r in rows:
        sampled, rate = r.k * ACTION_DIM, r.flops / r.best
        print(
            f"| {r.query.resolution}² | {r.k} | {r.what} | {r.steps} | {sampled} | {r.median:.3f} | "
            f"{r.best:.3f} | {1e3 * r.best / sampled:.1f} | {1e3 * r.best / r.steps:.1f} | "
            f"{r.steps * read / r.best / 1e9:,.1f} | {rate / 1e9:,.1f} | {100 * rate / ceiling:.0f}% | "
            f"{prefill_best[r.query.resolution] + r.best:.3f} | {gib(r.peak)} |"
        )


def print_needs(
    model: Transformer, queries: list[Query], chunk_lens: list[int], peaks: dict[int, int] | None
) -> None:
    """What a GPU needs, computed; ``peaks``: the measured peak per resolution (None in a dry run)."""
    cfg = model.cfg
    weights = model.num_params() * DTYPE.itemsize
    per_token = kv_bytes_per_token(cfg)
    chunk_tokens = max(chunk_lens) * action_length(ACTION_DIM)
    print("\n## what a GPU needs (bf16, batch 1)")
    print(
        f"weights {gib(weights)} GiB ({count(model.num_params())} parameters x {DTYPE.itemsize} bytes); "
        f"KV cache {per_token / 2**10:,.1f} KiB per token (2 x {cfg.n_layers} layers x {cfg.kv_heads} "
        f"KV heads x {cfg.head_dim} x {DTYPE.itemsize} bytes); a forward step reads "
        f"{gib(weight_bytes_read(model))} GiB of weights (all but the embedding table)"
    )
    print(
        f"| resolution | prompt tokens | + K={max(chunk_lens)} chunk | KV cache GiB | weights + KV cache GiB "
        "| prefill GFLOP | weights read per chunk GiB (side by side) | measured peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for q in queries:
        tokens = q.length + chunk_tokens
        flops = q.length * model.flops_per_token(q.length, training=False, target_fraction=1 / q.length)
        measured = gib(peaks[q.resolution]) if peaks else "-"
        print(
            f"| {q.resolution}² | {q.length:,} | {tokens:,} | {gib(tokens * per_token)} | "
            f"{gib(weights + tokens * per_token)} | {flops / 1e9:,.1f} | "
            f"{gib(ACTION_DIM * weight_bytes_read(model))} | {measured} |"
        )
    if cfg.max_seq_len < max(q.length for q in queries) + chunk_tokens:
        print(f"\nnote: the longest sequence exceeds this preset's max_seq_len ({cfg.max_seq_len})")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="chameleon-7b", help="model preset (tiny for a smoke run)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--resolution", default="256", help="frame sizes in pixels, e.g. 256,512")
    ap.add_argument(
        "--chunk-len",
        default=",".join(str(k) for k in sorted(set(CHUNK_LEN.values()))),
        help="chunk lengths K (default: those of the LIBERO presets)",
    )
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    ap.add_argument("--layers", type=int, default=None, help="keep only this many decoder layers")
    ap.add_argument("--sequential", action="store_true", help="also decode chunks one token at a time")
    ap.add_argument("--instruction", default=INSTRUCTION)
    ap.add_argument("--text-tokenizer", default=None, help="Chameleon's text_tokenizer.json (exact count)")
    ap.add_argument(
        "--dry-run", action="store_true", help="sizes and memory estimates only; allocates nothing"
    )
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0 or (args.layers is not None and args.layers < 1):
        ap.error("need --reps >= 1, --warmup >= 0 and --layers >= 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = reference_vocab()
    text = load_text_tokenizer(args.text_tokenizer) if args.text_tokenizer else WordTokenizer(vocab)
    queries = [reference_query(vocab, text, args.instruction, r) for r in parse_ints(args.resolution)]
    chunk_lens = parse_ints(args.chunk_len)
    cfg = model_config(args, vocab)
    with torch.device("meta"):
        shape = Transformer(cfg)  # sizes without storage
    layers = f" ({cfg.n_layers} layers)" if args.layers else ""
    print(
        f"# bench_7b: preset={args.preset}{layers} params={count(shape.num_params())} bf16 "
        f"random weights device={device} threads={args.threads} torch={torch.__version__} "
        f"{device_name(device)} load(1/5/15 min)={load_average()}"
    )
    text_tokens = len(text.encode(REFERENCE_PROMPTS.action_prompt.format(instruction=args.instruction)))
    counted = args.text_tokenizer or "stand-in: one per word or punctuation mark"
    print(
        f"prompt: the reference LIBERO action query with M={queries[0].history} frames; "
        f"{args.instruction!r} makes {text_tokens} text tokens ({counted})"
    )
    if args.dry_run:
        print_needs(shape, queries, chunk_lens, None)
        if device.type == "cpu":
            longest = max(q.length for q in queries) + max(chunk_lens) * action_length(ACTION_DIM)
            now = PeakMemory(device).now()
            need = now + shape.num_params() * DTYPE.itemsize + longest * kv_bytes_per_token(cfg)
            print(
                f"\nthis process holds {gib(now)} GiB now; a CPU run needs about {gib(need)} GiB "
                "(that + weights + KV cache) plus the activations of one layer at a time"
            )
        return

    torch.manual_seed(0)
    mem = PeakMemory(device)
    mem.reset()
    t = time.perf_counter()
    model = build_random(cfg, device)
    synchronize(device)
    print(
        f"built in {time.perf_counter() - t:.1f} s (meta, then bf16 on {device}); peak {gib(mem.peak())} GiB"
    )
    ceiling = matmul_ceiling(DTYPE, device=device)
    print(f"matmul ceiling (4096^3 bf16, best of 3): {ceiling / 1e9:,.0f} GFLOP/s")
    prefills, chunks = measure(model, vocab, queries, chunk_lens, args)
    print_prefill(prefills, ceiling, args)
    print_chunks(chunks, prefills, model, ceiling, args)
    peaks = {q.resolution: max(r.peak for r in prefills + chunks if r.query is q) for q in queries}
    print_needs(model, queries, chunk_lens, peaks)


if __name__ == "__main__":
    main()
