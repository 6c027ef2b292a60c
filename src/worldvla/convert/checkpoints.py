"""``worldvla convert``: a Hugging Face Chameleon folder <-> a project checkpoint directory.

From Hugging Face (:func:`convert_from_hf`) the output is a checkpoint directory that
``worldvla serve`` and ``WorldVLAPolicy.from_pretrained`` load like a trained one::

    OUT/model.safetensors        the language model (streamed; the source dtype unless told)
    OUT/config.json              model config, data layout (the reference's prompts:
                                 reference_prompts.py), vocabulary fingerprint (format 1)
    OUT/vocab.json               the reference token layout, grids in 32-pixel patches
    OUT/action_stats.json        the reference's fixed LIBERO bounds on its own bin grid
    OUT/image_tokenizer/         the Chameleon VQGAN (vqgan.yaml + vqgan.ckpt) at the image size
    OUT/image_tokenizer.json     its fingerprint (the codes mean nothing without it)
    OUT/hf_config.json           the source config.json, kept for provenance and the way back

To Hugging Face (:func:`convert_to_hf`) the output is a ``save_pretrained``-style folder
(``config.json``, ``model-0000i-of-0000n.safetensors``, ``model.safetensors.index.json``)
that transformers' ``ChameleonForConditionalGeneration.from_pretrained`` loads; it holds
the language model only (transformers initializes its unused VQ encoder afresh and says so).

Both write into a temporary directory renamed into place at the end and refuse an
existing output, so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from worldvla.artifacts.checkpoint import FORMAT, ImageTokenizerRef, load_bundle, resolve_checkpoint
from worldvla.convert.chameleon import (
    DTYPE_NAMES,
    INDEX_FILE,
    Report,
    convert_hf_weights,
    hf_config_from_model,
    hf_tensors,
    model_config_from_hf,
    read_hf_config,
)
from worldvla.convert.reference_prompts import (
    REFERENCE_PAD_HISTORY,
    REFERENCE_PROMPTS,
    check_frame_grid,
    check_text_tokenizer,
    reference_vocab,
)
from worldvla.convert.safetensors_io import TensorFile
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError, DataError
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.image_loader import load_image_tokenizer
from worldvla.tokenizers.text import load_text_tokenizer
from worldvla.train.config import TrainConfig
from worldvla.utils.io import atomic_dir
from worldvla.vocab import Vocab

TOKENIZER_DIR = "image_tokenizer"
HF_CONFIG = "hf_config.json"

# The LIBERO action bounds the reference hard-codes in its data and evaluation code
# (item_processor.norm_action, eval_solver.unnorm_min_max): Δxyz, Δrotation, gripper. They
# are the statistics the released checkpoints were trained with, so a converted checkpoint
# carries them as its asset (action_stats.json), on the reference's bin grid.
REFERENCE_LIBERO_ACTION_STATS = ActionStats(
    low=(-0.9375, -0.9375, -0.9375, -0.32571429, -0.375, -0.375, -1.0),
    high=(0.9375, 0.9375, 0.9375, 0.375, 0.375, 0.375, 1.0),
    mode="minmax",
    grid="reference",
)


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``None``/``"keep"`` -> None (keep the stored dtype); ``bf16`` / ``fp16`` / ``fp32``."""
    if name in (None, "keep"):
        return None
    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype must be keep, {', '.join(DTYPE_NAMES)}; got {name!r}")
    return DTYPE_NAMES[name]


def _fresh_output(out: Path) -> None:
    if out.exists():
        raise ConfigError(f"{out}: already exists; choose a new output directory")


def _image_tokenizer(path: str | Path, image_size: int | None, vocab: Vocab) -> Any:
    """The image tokenizer at ``image_size`` (the Chameleon VQGAN is convolutional: any multiple of 16)."""
    tok = load_image_tokenizer(path)
    if tok.codebook_size != vocab.image_codes:
        raise ConfigError(
            f"{path}: the tokenizer has {tok.codebook_size} codes, "
            f"the reference vocabulary {vocab.image_codes}"
        )
    if image_size is None or image_size == tok.image_size:
        return tok
    from worldvla.tokenizers.chameleon import ChameleonTokenizer, ChameleonVQGAN

    if not isinstance(tok, ChameleonTokenizer):
        raise ConfigError(f"{path}: only a Chameleon VQGAN can be re-sized (to {image_size})")
    cfg = replace(tok.cfg, resolution=image_size)
    if cfg.attn_resolutions:
        raise ConfigError(f"{path}: attention resolutions {cfg.attn_resolutions} tie the VQGAN to its size")
    side = image_size // 2 ** (len(cfg.ch_mult) - 1)
    if side < 1 or side * 2 ** (len(cfg.ch_mult) - 1) != image_size:
        raise ConfigError(f"image size {image_size} is not a multiple of the VQGAN's downsampling")
    model = ChameleonVQGAN(cfg)
    model.load_state_dict(tok.model.state_dict())
    return ChameleonTokenizer(model)


def _train_config(layout: DataLayout, vocab: Vocab) -> TrainConfig:
    """The training config a converted checkpoint records: the reference recipe's model, and M, K,
    the text tokenizer and the prompt wording of its layout."""
    return TrainConfig(
        name="converted-chameleon",
        model="chameleon-7b",
        history=layout.history,
        chunk_len=layout.chunk_len,
        chunk_mask=layout.chunk_mask,
        action_bins=vocab.action_bins,
        text_tokenizer=layout.text_tokenizer,
        action_prompt=layout.prompts.action_prompt,
        world_prompt=layout.prompts.world_prompt,
    )


def convert_from_hf(
    src: str | Path,
    out: str | Path,
    image_tokenizer: str | Path,
    text_tokenizer: str,
    image_size: int | None = None,
    history: int = 2,
    chunk_len: int = 5,
    action_dim: int = 7,
    camera: str = "agentview",
    dtype: torch.dtype | None = None,
    action_stats: ActionStats | None = None,
) -> tuple[Path, Report]:
    """Write the project checkpoint of Hugging Face folder ``src`` into the new directory ``out``.

    ``image_tokenizer``: a Chameleon tokenizer directory (``vqgan.yaml`` + ``vqgan.ckpt``),
    copied into the checkpoint at ``image_size`` (default: its own). ``text_tokenizer``:
    Chameleon's ``tokenizers`` JSON (``"bytes"`` only for plumbing tests). ``history`` (M),
    ``chunk_len`` (K), ``action_dim`` (D) and ``camera`` are the data layout the policy
    builds prompts with (reference: M=2, K=5, or K=10 on LIBERO-10, D=7, agent view); the
    rest of the layout and the vocabulary make those prompts the reference's
    (:mod:`worldvla.convert.reference_prompts`), so ``image_size`` must be a multiple of 32
    and a tokenizer JSON must name the reference's tokens with the reference's ids.
    ``action_stats`` default: the reference's LIBERO bounds.
    """
    src, out = Path(src), Path(out).resolve()
    hf = read_hf_config(src)
    cfg, info = model_config_from_hf(hf, src / "config.json")
    _fresh_output(out)
    vocab = reference_vocab()
    if cfg.vocab_size != vocab.size:
        raise ConfigError(
            f"{src}/config.json: vocab_size={cfg.vocab_size}, the reference vocabulary has {vocab.size} ids"
        )
    stats = action_stats or REFERENCE_LIBERO_ACTION_STATS
    if stats.dim != action_dim:
        raise ConfigError(f"the action statistics have {stats.dim} dimensions, action_dim is {action_dim}")
    tok = _image_tokenizer(image_tokenizer, image_size, vocab)
    check_frame_grid(tuple(tok.grid), vocab)
    text_spec = "bytes" if text_tokenizer == "bytes" else str(Path(text_tokenizer).resolve())
    text = load_text_tokenizer(text_spec)
    if text.size > vocab.text_size:
        raise ConfigError(f"{text_tokenizer}: {text.size} text ids do not fit the reference vocabulary")
    check_text_tokenizer(text, vocab, text_tokenizer)
    layout = DataLayout(
        action_dim=action_dim,
        grid=tuple(tok.grid),
        history=history,
        chunk_len=chunk_len,
        chunk_mask=True,
        prompts=REFERENCE_PROMPTS,
        text_tokenizer=text_spec,
        camera=camera,
        image_size=tok.image_size,
        pad_history=REFERENCE_PAD_HISTORY,
    )
    with atomic_dir(out) as tmp:
        tok.save(tmp / TOKENIZER_DIR)
        report = convert_hf_weights(
            src, cfg, info, tmp / "model.safetensors", dtype, metadata={"format": "pt", "step": "0"}
        )
        ref = ImageTokenizerRef(str(out / TOKENIZER_DIR), tok.fingerprint())
        config = {
            "format": FORMAT,
            "step": 0,
            "model": asdict(cfg),
            "train": _train_config(layout, vocab).to_dict(),
            "layout": layout.to_dict(),
            "vocab_fingerprint": vocab.fingerprint(),
            "val_episodes": [],
            "converted_from": {
                "path": str(src.resolve()),
                "architectures": list(info.architectures),
                "qk_norm_shape": list(report.qk_norm_shape or ()),
                "skipped_tensors": report.skipped,
            },
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / HF_CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
        vocab.save(tmp / "vocab.json")
        stats.save(tmp / "action_stats.json")
        (tmp / "image_tokenizer.json").write_text(json.dumps(ref.saved_from(out), indent=2) + "\n")
    return out, report


def convert_to_hf(
    ckpt: str | Path,
    out: str | Path,
    max_shard_bytes: int = 5 * 2**30,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a project checkpoint as a sharded Hugging Face Chameleon folder ``out`` (new)."""
    path = resolve_checkpoint(ckpt)
    out = Path(out).resolve()
    _fresh_output(out)
    if max_shard_bytes < 1:
        raise ConfigError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    cfg = load_bundle(path).model_config
    base = None
    if (path / HF_CONFIG).exists():
        base = json.loads((path / HF_CONFIG).read_text())
    hf = hf_config_from_model(cfg, base)
    weights = TensorFile(path / "model.safetensors")

    def read(name: str) -> torch.Tensor:
        if name not in weights.entries:
            raise DataError(f"{path}/model.safetensors: tensor {name} missing for config.json's model")
        x = weights.read(name)
        return x.to(dtype) if dtype is not None else x

    with atomic_dir(out) as tmp:
        shards: list[dict[str, torch.Tensor]] = [{}]
        sizes = [0]
        names: list[str] = []

        def flush() -> None:
            names.append(f"model-{len(names) + 1:05d}.safetensors")
            save_file(shards[-1], str(tmp / names[-1]), metadata={"format": "pt"})

        weight_map: dict[str, int] = {}
        total = 0
        stored_dtype = None
        for name, x in hf_tensors(cfg, read):
            n = x.numel() * x.element_size()
            if shards[-1] and sizes[-1] + n > max_shard_bytes:
                flush()
                shards[-1] = {}  # the written shard's tensors are released here
                sizes.append(0)
            shards[-1][name] = x
            sizes[-1] += n
            total += n
            weight_map[name] = len(sizes) - 1
            stored_dtype = x.dtype
        flush()
        shards.clear()
        final = [f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i in range(len(names))]
        for a, b in zip(names, final):
            (tmp / a).rename(tmp / b)
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: final[i] for k, i in weight_map.items()},
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        hf["torch_dtype"] = str(stored_dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return out
