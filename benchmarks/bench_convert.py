"""Peak memory of ``worldvla convert`` on a sharded Hugging Face Chameleon folder.

Writes a randomly initialized Chameleon-format folder (the tensor names and shapes of
``save_pretrained``, in bf16, split into shards of ``--shard-mb``) for a model of the
given width, then converts it in a fresh process and reports that process's peak resident
memory (Linux ``VmHWM``, reset just before the conversion) against its resident memory
before it, relative to the weights' size.
Nothing of transformers is needed: the folder is written with safetensors directly.

    python benchmarks/bench_convert.py                      # d_model 1024, 8 layers (~0.5 GB bf16)
    python benchmarks/bench_convert.py --d-model 2048 --layers 16 --shard-mb 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from worldvla.convert.chameleon import hf_config_from_model, hf_tensors
from worldvla.model.config import ModelConfig

# Linux /proc: VmRSS is the resident memory now, VmHWM its peak so far (ru_maxrss would
# include transient peaks of the imports, hiding the conversion's own).
CHILD = r"""
import json, sys, torch
from pathlib import Path
from worldvla.convert.chameleon import convert_hf_weights, model_config_from_hf, read_hf_config
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
src, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg, info = model_config_from_hf(read_hf_config(src))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
report = convert_hf_weights(src, cfg, info, out)
print(json.dumps({"before": before, "after": status("VmHWM"), "bytes": report.bytes_written}))
"""


def write_folder(cfg: ModelConfig, folder: Path, shard_bytes: int) -> int:
    """A Chameleon ``save_pretrained``-style folder of random bf16 weights; returns its size in bytes."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    names, weight_map, size, total = [], {}, 0, 0

    def flush() -> None:
        names.append(f"model-{len(names) + 1:05d}.safetensors")
        save_file(shard, str(folder / names[-1]), metadata={"format": "pt"})

    def make(name: str) -> torch.Tensor:
        t = next(t for t in targets if t.name == name)
        return torch.randn(t.shape, dtype=torch.bfloat16) * 0.02

    from worldvla.convert.chameleon import targets as plan

    targets = plan(cfg)
    for name, x in hf_tensors(cfg, make):
        n = x.numel() * x.element_size()
        if shard and size + n > shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = x
        size += n
        total += n
        weight_map[name] = len(names)
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(hf_config_from_model(cfg)))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=200.0)
    args = ap.parse_args()
    cfg = ModelConfig(
        vocab_size=65536,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.d_model // 128,
        ffn_hidden=int(args.d_model * 2.6875),
        qk_norm=True,
        qk_norm_eps=1e-5,
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "hf"
        total = write_folder(cfg, src, int(args.shard_mb * 2**20))
        shards = len(list(src.glob("*.safetensors")))
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(src), str(Path(tmp) / "out.safetensors")],
            check=True,
            capture_output=True,
            text=True,
        )
        m = json.loads(res.stdout.strip().splitlines()[-1])
    gib = 2**30
    print(f"model: d_model {cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size}; {shards} shards\n")
    print("| weights (bf16) | RSS before | peak RSS during | peak - before | (peak - before) / weights |")
    print("|---|---|---|---|---|")
    extra = m["after"] - m["before"]
    print(
        f"| {total / gib:.2f} GiB | {m['before'] / gib:.2f} GiB | {m['after'] / gib:.2f} GiB | "
        f"{extra / gib:.2f} GiB | {extra / total:.2f} |"
    )


if __name__ == "__main__":
    main()
