"""A tiny, randomly initialized but real checkpoint, for plumbing checks of the serving path.

``write_random_checkpoint(out_dir)`` writes what ``worldvla train`` writes — the weights,
configs, vocabulary, action statistics and image tokenizer — with the project's own saving
code (:func:`worldvla.artifacts.checkpoint.write_checkpoint`, :meth:`VQTokenizer.save`), but
skips training. So ``WorldVLAPolicy.from_pretrained`` and ``worldvla serve`` load it through
exactly the code a trained checkpoint goes through (image tokenization, prompt building,
constrained decoding, de-normalization), in seconds and without data. Its actions are
meaningless; ``make test-libero`` serves it to a LIBERO episode (docs/libero.md). It is not
a starting point for training: it holds no optimizer state, so do not resume from it.

What it holds (``out_dir`` is a run directory)::

    out_dir/image_tokenizer/                   a random VQ tokenizer (FSQ, 1,000 codes): a
                                               ``image_size`` frame -> 8×8 codes
    out_dir/checkpoints/step_00000000/         the ``tiny`` transformer (model preset), random
    out_dir/checkpoints/latest                 weights; layout: ``history`` frames (M),
                                               ``chunk_len`` actions (K) of ``action_dim`` (D)

The action statistics are ``[-1, 1]`` in every dimension (LIBERO's and Meta-World's action
range), so every decoded action lies in that box. The checkpoint records the tokenizer by
absolute path, so to move the run directory, rebuild it at the new place.

Writes are atomic: the tokenizer directory and the checkpoint directory are each built
under a temporary name and renamed into place, and ``latest`` is written last, so a kill
leaves either no loadable checkpoint or a complete one. The same arguments (seed included)
give the same weights, so rebuilding into the same directory is safe.
"""

from __future__ import annotations

from pathlib import Path

import torch

from worldvla.artifacts.checkpoint import ImageTokenizerRef, write_checkpoint
from worldvla.data.datasets import DataLayout
from worldvla.errors import ConfigError
from worldvla.model.build import build_model, build_model_config
from worldvla.tokenizers.action import ActionStats
from worldvla.tokenizers.vq import VQConfig, VQTokenizer
from worldvla.train.config import TrainConfig
from worldvla.utils.io import atomic_dir
from worldvla.vocab import Vocab, VocabConfig

GRID = 8  # code grid side: 8×8 = 64 codes per frame keeps the prompt short at any resolution
TOKENIZER_DIR = "image_tokenizer"


def random_tokenizer_config(image_size: int) -> VQConfig:
    """A small FSQ tokenizer mapping ``image_size``² frames to 8×8 codes (one stride-2 stage per halving)."""
    stages = (image_size // GRID).bit_length() - 1
    if image_size % GRID or stages < 1 or GRID << stages != image_size:
        raise ConfigError(f"image_size must be 8 x a power of two (16, 32, ..., 256, 512), got {image_size}")
    return VQConfig(
        image_size=image_size,
        downsample=image_size // GRID,
        channels=(16,) * stages,
        blocks=(0,) * (stages - 1) + (1,),  # one residual block, at the lowest resolution only
        stem_channels=8,
        mid_blocks=1,
        latent_dim=8,
        groups=4,
    )


def write_random_checkpoint(
    out_dir: str | Path,
    action_dim: int = 7,
    image_size: int = 256,
    chunk_len: int = 5,
    history: int = 2,
    seed: int = 0,
    camera: str = "agentview",
    val_episodes: tuple[str, ...] = (),
) -> Path:
    """Write a randomly initialized run into ``out_dir``; return its checkpoint directory.

    ``action_dim`` (D), ``image_size``, ``chunk_len`` (K), ``history`` (M) and ``camera`` are
    recorded in the checkpoint's data layout, which is what the policy and the server read.
    ``val_episodes``: episode keys recorded as held out (what offline evaluation scores).
    """
    if action_dim < 1:
        raise ConfigError(f"action_dim must be >= 1, got {action_dim}")
    out = Path(out_dir).resolve()
    cfg = TrainConfig(
        name="random-init", model="tiny", history=history, chunk_len=chunk_len, precision="fp32"
    )
    vq_cfg = random_tokenizer_config(image_size)

    # Seeded without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = VQTokenizer(vq_cfg)
        tokenizer.model.eval()
        vocab = Vocab.build(VocabConfig(image_codes=tokenizer.codebook_size, action_bins=cfg.action_bins))
        model_cfg = build_model_config(cfg.model, vocab.size, cfg.dropout)
        model = build_model(model_cfg)

    with atomic_dir(out / TOKENIZER_DIR) as tmp:
        tokenizer.save(tmp)
    layout = DataLayout(
        action_dim=action_dim,
        grid=vq_cfg.grid,
        history=cfg.history,
        chunk_len=cfg.chunk_len,
        chunk_mask=cfg.chunk_mask,
        text_tokenizer=cfg.text_tokenizer,
        camera=camera,
        image_size=image_size,
    )
    return write_checkpoint(
        out,
        step=0,
        model_state=model.state_dict(),
        trainer_state={"step": 0, "data_pos": 0, "tokens_seen": 0, "world_size": 1},
        train=cfg.to_dict(),
        model_cfg=model_cfg,
        layout=layout,
        vocab=vocab,
        action_stats=ActionStats(low=(-1.0,) * action_dim, high=(1.0,) * action_dim),
        image_tokenizer=ImageTokenizerRef(str(out / TOKENIZER_DIR), tokenizer.fingerprint()),
        val_episodes=list(val_episodes),
        keep_last=1,
    )
