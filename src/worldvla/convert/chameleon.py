"""Hugging Face Chameleon checkpoints <-> this project's :class:`~worldvla.model.Transformer`.

The released WorldVLA and RynnVLA-002 models were saved with ``save_pretrained`` from
subclasses of transformers' ``ChameleonForConditionalGeneration`` (docs/chameleon.md): a
folder with ``config.json`` and ``model.safetensors`` or sharded ``*.safetensors`` with
``model.safetensors.index.json``. The mapping, per decoder layer ``i``
(``model.layers.{i}.`` on the left, ``blocks.{i}.`` on the right)::

    self_attn.{q,k,v}_proj.weight        attn.wqkv.weight   rows [q; k; v] (one fused matmul)
    self_attn.{q,k,v}_proj.bias          attn.wqkv.bias     (attention_bias only)
    self_attn.o_proj.{weight,bias}       attn.wo.{weight,bias}
    self_attn.{q,k}_norm.{weight,bias}   attn.{q,k}_norm.{weight,bias}  (heads, head_dim)
    mlp.{gate,up}_proj.{weight,bias}     ffn.w13.{weight,bias} rows [gate; up]
    mlp.down_proj.{weight,bias}          ffn.w2.{weight,bias}
    input_layernorm.weight               attn_norm.weight
    post_attention_layernorm.weight      ffn_norm.weight

plus ``model.embed_tokens.weight`` -> ``tok_emb.weight``, ``model.norm.weight`` ->
``norm.weight`` and ``lm_head.weight`` -> ``output.weight``. The q/k rows are taken as
they are: Hugging Face checkpoints are already in the half-split RoPE layout the
transformer uses (transformers' conversion permuted Meta's interleaved rows into it).

QK-norm parameters come in two shapes: ``(num_heads, head_dim)`` (transformers since its
Chameleon release) or ``(model_parallel_size, head_dim)``, one row per tensor-parallel
shard shared by that shard's heads (the ``modeling_chameleon.py`` the reference
repositories vendor, whose ``ChameleonLayerNorm.repeat_param`` repeat-interleaves it). The
second is expanded to the first exactly. The reverse conversion writes the first.

Known tensors that are not the language model are skipped and reported:
``model.vqmodel.*`` (the VQGAN *encoder* transformers keeps inside the model; this
project reads the whole VQGAN, decoder included, from Chameleon's tokenizer files) and
``*.rotary_emb.inv_freq`` (a buffer older versions saved). Anything else is refused by
name, e.g. RynnVLA-002's continuous action head (``action_head.*``, an ``ActionHead``:
a 2-layer ``nn.TransformerEncoder`` over a 1,024-wide projection of the hidden states
with an L1-regression MLP), which this project does not implement.

Memory. Tensors are read one at a time (:class:`~worldvla.convert.safetensors_io.TensorFile`,
no memory map) and written at their final offset as soon as their last piece is read
(:class:`~worldvla.convert.safetensors_io.StreamingWriter`), so the resident memory is
that of the pieces waiting for a partner in a later shard, not of the model
(``benchmarks/bench_convert.py`` measures it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worldvla.convert.safetensors_io import StreamingWriter, TensorFile
from worldvla.errors import ConfigError, DataError
from worldvla.model.config import ModelConfig

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SKIPPED_PREFIXES = ("model.vqmodel.",)
SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
# Modules of the reference repositories' subclasses that this project does not implement,
# named so that a refusal says what the checkpoint holds.
UNSUPPORTED_MODULES = {
    "action_head.": (
        "RynnVLA-002's continuous action head (ActionHead: a TransformerEncoder + L1 regression MLP "
        "over the hidden states); only its discrete action tokens can be served here"
    ),
}
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class HFInfo:
    """What the conversion needs from a Hugging Face ``config.json`` beyond :class:`ModelConfig`."""

    model_parallel_size: int
    architectures: tuple[str, ...]
    torch_dtype: str | None


# ---------------------------------------------------------------------------- configs
def _get(hf: dict[str, Any], key: str, default: Any) -> Any:
    v = hf.get(key, default)
    return default if v is None else v


def model_config_from_hf(hf: dict[str, Any], path: Path | str = "config.json") -> tuple[ModelConfig, HFInfo]:
    """Read a Chameleon ``config.json`` (transformers 4.x or 5.x) into a :class:`ModelConfig`.

    Refuses, naming the field, every option the transformer does not implement.
    """
    path = Path(path)
    if hf.get("model_type") != "chameleon":
        raise ConfigError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'chameleon'")
    archs = tuple(hf.get("architectures") or ())
    for arch in archs:
        if "action_head" in arch.lower():
            raise ConfigError(
                f"{path}: architecture {arch} carries {UNSUPPORTED_MODULES['action_head.']}; "
                "this project cannot run it"
            )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{path}: hidden_act={act!r}; the transformer implements SwiGLU (silu) only")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = rope.get("rope_type", "default")
    if scaling or rope_type != "default":
        raise ConfigError(
            f"{path}: RoPE scaling {scaling or rope_type!r} is not implemented (plain RoPE only)"
        )
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    d_model = int(hf["hidden_size"])
    n_heads = int(hf["num_attention_heads"])
    if hf.get("head_dim") not in (None, d_model // n_heads):
        raise ConfigError(f"{path}: head_dim={hf['head_dim']} != hidden_size / num_attention_heads")
    kv = int(_get(hf, "num_key_value_heads", n_heads))
    mp = int(_get(hf, "model_parallel_size", 1))
    try:
        cfg = ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            d_model=d_model,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=None if kv == n_heads else kv,
            ffn_hidden=int(hf["intermediate_size"]),
            max_seq_len=int(_get(hf, "max_position_embeddings", 4096)),
            rope_theta=theta,
            qk_norm=True,  # every Chameleon layer has q_norm / k_norm
            qk_norm_eps=1e-5,  # fixed in ChameleonLayerNorm, whatever rms_norm_eps says
            norm_eps=float(_get(hf, "rms_norm_eps", 1e-5)),
            dropout=float(_get(hf, "dropout", 0.0)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            swin_norm=bool(hf.get("swin_norm", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
        )
    except KeyError as e:
        raise ConfigError(f"{path}: missing field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if n_heads % mp or kv % mp:
        raise ConfigError(f"{path}: model_parallel_size={mp} does not divide the heads ({n_heads}, {kv})")
    return cfg, HFInfo(mp, archs, hf.get("torch_dtype") or hf.get("dtype"))


# The smallest VQGAN config transformers' ChameleonConfig accepts: for models made here whose
# image encoder is never run (image codes come from the project's own tokenizer), so that it
# costs next to nothing to build and save.
UNUSED_VQ_CONFIG: dict[str, Any] = {
    "embed_dim": 8,
    "num_embeddings": 16,
    "latent_channels": 8,
    "resolution": 32,
    "base_channels": 32,
    "channel_multiplier": [1, 2],
    "num_res_blocks": 1,
}


def hf_config_from_model(cfg: ModelConfig, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A transformers ``ChameleonConfig`` dict for ``cfg`` (fields of ``base`` kept otherwise)."""
    if not cfg.qk_norm:
        raise ConfigError("a Chameleon checkpoint needs QK-norm (every Chameleon layer has q_norm/k_norm)")
    if cfg.qk_norm_eps not in (None, 1e-5) or (cfg.qk_norm_eps is None and cfg.norm_eps != 1e-5):
        raise ConfigError("transformers' Chameleon fixes the QK-norm epsilon at 1e-5")
    hf = {k: v for k, v in (base or {}).items() if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    hf.update(
        model_type="chameleon",
        architectures=["ChameleonForConditionalGeneration"],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        intermediate_size=cfg.ffn_hidden,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        hidden_act="silu",
        swin_norm=cfg.swin_norm,
        attention_bias=cfg.attention_bias,
        mlp_bias=cfg.mlp_bias,
        tie_word_embeddings=cfg.tie_embeddings,
        model_parallel_size=1,
    )
    # transformers' forward reads vocabulary_map to mask image-token logits; an empty map
    # (no "IMGIMG…" names) masks nothing, which is what this project's model computes.
    hf.setdefault("vocabulary_map", {})
    return hf


# ---------------------------------------------------------------------------- tensor plan
@dataclass(frozen=True)
class Target:
    """One tensor of the output: its shape and the source tensors it is made of."""

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    combine: str  # "copy", "cat" (rows) or "heads" (QK-norm rows expanded to one per head)


def _layer_targets(cfg: ModelConfig, i: int) -> list[Target]:
    d, hd, h, kv, f = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads, cfg.ffn_hidden
    src, dst = f"model.layers.{i}.", f"blocks.{i}."
    qkv = (h + 2 * kv) * hd
    out = [
        Target(dst + "attn_norm.weight", (d,), (src + "input_layernorm.weight",), "copy"),
        Target(
            dst + "attn.wqkv.weight",
            (qkv, d),
            tuple(src + f"self_attn.{p}_proj.weight" for p in "qkv"),
            "cat",
        ),
        Target(dst + "attn.wo.weight", (d, h * hd), (src + "self_attn.o_proj.weight",), "copy"),
    ]
    if cfg.attention_bias:
        out += [
            Target(
                dst + "attn.wqkv.bias", (qkv,), tuple(src + f"self_attn.{p}_proj.bias" for p in "qkv"), "cat"
            ),
            Target(dst + "attn.wo.bias", (d,), (src + "self_attn.o_proj.bias",), "copy"),
        ]
    if cfg.qk_norm:
        for which, heads in (("q", h), ("k", kv)):
            for p in ("weight", "bias"):
                out.append(
                    Target(
                        dst + f"attn.{which}_norm.{p}",
                        (heads, hd),
                        (src + f"self_attn.{which}_norm.{p}",),
                        "heads",
                    )
                )
    out += [
        Target(dst + "ffn_norm.weight", (d,), (src + "post_attention_layernorm.weight",), "copy"),
        Target(
            dst + "ffn.w13.weight",
            (2 * f, d),
            (src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight"),
            "cat",
        ),
        Target(dst + "ffn.w2.weight", (d, f), (src + "mlp.down_proj.weight",), "copy"),
    ]
    if cfg.mlp_bias:
        out += [
            Target(
                dst + "ffn.w13.bias", (2 * f,), (src + "mlp.gate_proj.bias", src + "mlp.up_proj.bias"), "cat"
            ),
            Target(dst + "ffn.w2.bias", (d,), (src + "mlp.down_proj.bias",), "copy"),
        ]
    return out


def targets(cfg: ModelConfig) -> list[Target]:
    """Every tensor of the project model (state-dict order) and where it comes from."""
    out = [Target("tok_emb.weight", (cfg.vocab_size, cfg.d_model), ("model.embed_tokens.weight",), "copy")]
    for i in range(cfg.n_layers):
        out += _layer_targets(cfg, i)
    out.append(Target("norm.weight", (cfg.d_model,), ("model.norm.weight",), "copy"))
    head = "model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"
    out.append(Target("output.weight", (cfg.vocab_size, cfg.d_model), (head,), "copy"))
    return out


def source_shapes(cfg: ModelConfig, mp: int) -> dict[str, set[tuple[int, ...]]]:
    """The shapes each Hugging Face tensor may have (QK-norm: per head or per parallel shard)."""
    hd = cfg.head_dim
    rows = {"q_proj": cfg.n_heads * hd, "k_proj": cfg.kv_heads * hd, "v_proj": cfg.kv_heads * hd}
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for t in targets(cfg):
        for s in t.sources:
            leaf = s.rsplit(".", 2)[-2]
            if t.combine == "heads":
                shapes[s] = {t.shape, (mp, hd)}
            elif t.combine == "cat" and leaf in rows:
                shapes[s] = {(rows[leaf], *t.shape[1:])}
            elif t.combine == "cat":  # gate / up
                shapes[s] = {(cfg.ffn_hidden, *t.shape[1:])}
            else:
                shapes[s] = {t.shape}
    return shapes


def _combine(t: Target, parts: list[torch.Tensor]) -> torch.Tensor:
    if t.combine == "cat":
        return torch.cat(parts, 0)
    x = parts[0]
    if t.combine == "heads" and x.shape[0] != t.shape[0]:
        return x.repeat_interleave(t.shape[0] // x.shape[0], dim=0)
    return x


# ---------------------------------------------------------------------------- reading HF
def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path}: not found (expected a Hugging Face Chameleon folder)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a JSON object")
    return doc


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: from the index when there is one, in its order."""
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{index}: not a safetensors index (expected a 'weight_map'): {e}") from e
        names = list(dict.fromkeys(weight_map.values()))
        for n in names:
            if "/" in n or n.startswith("."):
                raise DataError(f"{index}: shard name {n!r} leaves the folder")
        return [folder / n for n in names]
    if (folder / SINGLE_FILE).exists():
        return [folder / SINGLE_FILE]
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise DataError(f"{folder}: no {INDEX_FILE}, {SINGLE_FILE} or *.safetensors")
    return found


def _unsupported(keys: list[str]) -> str | None:
    for prefix, what in UNSUPPORTED_MODULES.items():
        hits = [k for k in keys if k.startswith(prefix)]
        if hits:
            return f"{len(hits)} tensors of module {prefix.rstrip('.')} ({what}), e.g. {hits[0]}"
    return None


@dataclass
class Report:
    """What a conversion read, wrote and skipped."""

    tensors: int = 0
    bytes_written: int = 0
    skipped: int = 0
    qk_norm_shape: tuple[int, ...] | None = None


def convert_hf_weights(
    folder: Path,
    cfg: ModelConfig,
    info: HFInfo,
    out_file: Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    on_shard: Callable[[Path], None] | None = None,
) -> Report:
    """Stream the Hugging Face weights of ``folder`` into the project's ``out_file``.

    Every key and shape is checked before anything is written: an unknown key, a missing
    one or a wrong shape is a :class:`DataError` naming it. ``dtype`` None keeps the stored
    dtype (bf16 for the released checkpoints).
    """
    files = [TensorFile(p) if p.exists() else None for p in shard_files(folder)]
    for p, f in zip(shard_files(folder), files):
        if f is None:
            raise DataError(f"{p}: shard listed in {INDEX_FILE} is missing")
    where: dict[str, TensorFile] = {}
    for f in files:
        for k in f.names():
            if k in where:
                raise DataError(f"{f.path}: tensor {k} also stored in {where[k].path.name}")
            where[k] = f
    plan = targets(cfg)
    expected = source_shapes(cfg, info.model_parallel_size)
    report = Report()
    known = [k for k in where if k in expected]
    skipped = [k for k in where if k.startswith(SKIPPED_PREFIXES) or k.endswith(SKIPPED_SUFFIXES)]
    unknown = sorted(set(where) - set(known) - set(skipped))
    if cfg.tie_embeddings:
        unknown = [k for k in unknown if k != "lm_head.weight"]  # a tied head may be stored too
    if unknown:
        what = _unsupported(unknown)
        raise DataError(
            f"{folder}: "
            + (what if what else f"{len(unknown)} tensors this converter does not know, e.g. {unknown[:4]}")
        )
    missing = sorted(set(expected) - set(where))
    if missing:
        raise DataError(
            f"{folder}: {len(missing)} tensors missing for the config.json model, e.g. {missing[:4]}"
        )
    for k, shapes in expected.items():
        got = where[k].shape(k)
        if got not in shapes:
            raise DataError(
                f"{where[k].path}: tensor {k} has shape {list(got)}, expected "
                + " or ".join(str(list(s)) for s in sorted(shapes))
            )
        if k.endswith("q_norm.weight"):
            report.qk_norm_shape = got
    report.skipped = len(skipped)
    stored = {where[s].dtype(s) for t in plan for s in t.sources}
    if dtype is None and len(stored) > 1:
        raise DataError(
            f"{folder}: tensors of several dtypes {sorted(map(str, stored))}; choose one with dtype"
        )
    out_dtype = dtype or stored.pop()

    # Where each source is needed, and which targets wait on it.
    waiting: dict[str, list[Target]] = {}
    for t in plan:
        for s in t.sources:
            waiting.setdefault(s, []).append(t)
    pieces: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    with StreamingWriter(out_file, [(t.name, out_dtype, t.shape) for t in plan], metadata) as writer:
        for f in files:
            for k in f.names():
                if k not in waiting:
                    continue
                pieces[k] = f.read(k).to(out_dtype)
                for t in waiting[k]:
                    if t.name in done or not all(s in pieces for s in t.sources):
                        continue
                    tensor = _combine(t, [pieces[s] for s in t.sources])
                    writer.write(t.name, tensor)
                    report.tensors += 1
                    report.bytes_written += tensor.numel() * tensor.element_size()
                    done.add(t.name)
                # Free every piece whose targets are all written.
                for s in [s for s in pieces if all(t.name in done for t in waiting[s])]:
                    del pieces[s]
            if on_shard is not None:
                on_shard(f.path)
    return report


# ---------------------------------------------------------------------------- project -> HF
def hf_tensors(cfg: ModelConfig, read: Callable[[str], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """The Hugging Face tensors of a project model, one at a time (``read`` fetches a project tensor)."""
    hd = cfg.head_dim
    for t in targets(cfg):
        if cfg.tie_embeddings and t.name == "output.weight":
            continue
        x = read(t.name)
        if t.combine == "cat":
            if t.sources[0].endswith(("q_proj.weight", "q_proj.bias")):
                sizes = [cfg.n_heads * hd, cfg.kv_heads * hd, cfg.kv_heads * hd]
            else:
                sizes = [cfg.ffn_hidden, cfg.ffn_hidden]
            yield from zip(t.sources, (p.contiguous() for p in x.split(sizes, 0)))
        else:
            yield t.sources[0], x
