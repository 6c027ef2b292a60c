"""LIBERO experiment presets that follow the reference training recipe (SPEC §5).

``libero-{spatial,object,goal,10}-{256,512}``: Chameleon-7B shape with the reference
Chameleon vocabulary layout, AdamW (0.9, 0.95), lr 5e-6 constant after 1% warmup, weight
decay 0.1, grad clip 4.0, residual dropout 0.05, batch 8 per GPU, 40 epochs, bf16 with
fp32 master weights, FSDP full-shard per decoder block, activation checkpointing, max
sequence 4,096, history M=2, chunk K=5 (K=10 for LIBERO-10/Long), image-target weight
α=0.04 and z-loss 1e-5 in the reference loss form, action and world-model samples ~1:1.

The recipe counts epochs and a per-GPU batch, while :class:`~worldvla.train.config.TrainConfig`
counts optimizer steps and a global batch; :meth:`LiberoPreset.train_config` converts for a
given dataset size and GPU count (warmup = 1% of the steps). Every preset has a tiny
sibling (``<name>-debug``: tiny model, compact vocabulary, fp32, single device) that runs
on a laptop CPU (STYLE §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from worldvla.envs.libero_benchmark import MAX_STEPS, RESOLUTIONS, suite_name
from worldvla.errors import ConfigError
from worldvla.model.config import ModelConfig, model_preset
from worldvla.train.config import TrainConfig
from worldvla.utils.registry import Registry
from worldvla.vocab import Vocab, VocabConfig

CHUNK_LEN = {"libero_spatial": 5, "libero_object": 5, "libero_goal": 5, "libero_10": 10}


@dataclass(frozen=True)
class LiberoPreset:
    """One LIBERO suite at one resolution: model shape, vocabulary, data layout and recipe."""

    name: str
    suite: str
    resolution: int
    train: TrainConfig  # the recipe; ``steps``/``warmup_steps``/``batch_size`` are set by train_config()
    vocab_layout: str = "chameleon-reference"  # or "compact" (debug siblings)
    image_tokenizer: str = "chameleon"  # the reference VQGAN, downsampling 16 (SPEC §2)
    downsample: int = 16
    max_seq_len: int = 4096
    epochs: int = 40
    batch_per_gpu: int = 8
    default_gpus: int = 4  # the reference trains on 2-4 GPUs
    warmup_fraction: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "suite", suite_name(self.suite))
        if self.resolution % self.downsample:
            raise ConfigError(
                f"{self.name}: resolution {self.resolution} is not a multiple of {self.downsample}"
            )
        if self.vocab_layout not in ("chameleon-reference", "compact"):
            raise ConfigError(f"{self.name}: unknown vocab layout {self.vocab_layout!r}")
        if min(self.epochs, self.batch_per_gpu, self.default_gpus) < 1 or not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"{self.name}: epochs, batch per GPU and GPUs must be >= 1, warmup in [0, 1)")

    # ------------------------------------------------------------------ derived
    @property
    def grid(self) -> int:
        """Image code grid side (16 at 256 px, 32 at 512 px)."""
        return self.resolution // self.downsample

    @property
    def max_episode_steps(self) -> int:
        return MAX_STEPS[self.suite]

    def vocab(self) -> Vocab:
        if self.vocab_layout == "chameleon-reference":
            return Vocab.chameleon_reference()
        return Vocab.build(VocabConfig(image_codes=512, max_grid=max(64, self.grid)))

    def model_config(self) -> ModelConfig:
        """The model preset with this vocabulary, residual dropout and context length."""
        cfg = model_preset(self.train.model)
        dropout = cfg.dropout if self.train.dropout is None else self.train.dropout
        return replace(
            cfg.with_vocab(self.vocab().size),
            dropout=dropout,
            max_seq_len=min(cfg.max_seq_len, self.max_seq_len),
        )

    def train_config(self, num_samples: int, num_gpus: int | None = None) -> TrainConfig:
        """The recipe as a TrainConfig for ``num_samples`` training samples on ``num_gpus`` GPUs.

        ``batch_size = batch_per_gpu × num_gpus`` (global), ``steps = epochs × ⌈num_samples /
        batch_size⌉``, ``warmup_steps = ⌈warmup_fraction × steps⌉``.
        """
        if num_samples < 1:
            raise ConfigError(f"{self.name}: need at least one training sample, got {num_samples}")
        gpus = self.default_gpus if num_gpus is None else num_gpus
        if gpus < 1:
            raise ConfigError(f"{self.name}: num_gpus must be >= 1, got {gpus}")
        batch = self.batch_per_gpu * gpus
        steps = self.epochs * math.ceil(num_samples / batch)
        warmup = math.ceil(self.warmup_fraction * steps)
        return replace(self.train, name=self.name, batch_size=batch, steps=steps, warmup_steps=warmup)

    def debug(self) -> LiberoPreset:
        """Tiny sibling: same layout switches (M, K, mask, loss), tiny model, compact vocab, fp32, CPU."""
        train = replace(
            self.train,
            name=f"{self.name}-debug",
            model="tiny",
            dropout=0.0,
            lr=1e-3,
            precision="fp32",
            fsdp=False,
            activation_checkpointing=False,
            log_every=1,
            val_every=2,
            val_batches=1,
            ckpt_every=2,
        )
        return replace(
            self,
            name=f"{self.name}-debug",
            train=train,
            vocab_layout="compact",
            image_tokenizer="vq",
            downsample=self.resolution // 8,
            max_seq_len=512,
            epochs=1,
            batch_per_gpu=4,
            default_gpus=1,
        )


def _reference(suite: str, resolution: int) -> LiberoPreset:
    short = suite.removeprefix("libero_")
    name = f"libero-{short}-{resolution}"
    train = TrainConfig(
        name=name,
        model="chameleon-7b",
        dropout=0.05,
        use_action_data=True,
        use_world_data=True,
        world_fraction=0.5,  # action and world-model samples concatenated and shuffled ~1:1
        history=2,
        chunk_len=CHUNK_LEN[suite],
        chunk_mask=True,
        loss_form="reference",
        image_weight=0.04,
        z_loss=1e-5,
        lr=5e-6,
        schedule="constant",
        min_lr_ratio=1.0,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        grad_clip=4.0,
        precision="bf16",
        fsdp=True,
        activation_checkpointing=True,
        log_every=10,
        val_every=2000,
        ckpt_every=2000,
        keep_last=2,
    )
    return LiberoPreset(name=name, suite=suite, resolution=resolution, train=train)


def _presets() -> Registry[LiberoPreset]:
    out: Registry[LiberoPreset] = Registry("LIBERO preset")
    for suite in CHUNK_LEN:
        for res in RESOLUTIONS:
            p = _reference(suite, res)
            out.register(p.name, p, f"{suite} at {res} px, the reference recipe (K={CHUNK_LEN[suite]})")
            out.register(f"{p.name}-debug", p.debug(), f"tiny sibling of {p.name}: tiny model, fp32, CPU")
    return out


LIBERO_PRESETS: Registry[LiberoPreset] = _presets()


def libero_preset(name: str) -> LiberoPreset:
    """A named LIBERO preset; a typo gets a "did you mean" (ConfigError)."""
    return LIBERO_PRESETS.get(name)
