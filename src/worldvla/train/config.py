"""Training configuration: one frozen dataclass, named presets, ablations as fields.

Every knob of a run lives in :class:`TrainConfig` — data mixture, sample layout, loss form,
optimizer, schedule, precision, parallelism, intervals — so an experiment is a preset name
plus ``--set key=value`` overrides, never a forked script (STYLE, "anti-patterns"). The
paper's ablations (SPEC §1, §8) are field changes of ``mw-quick`` defined once in
:data:`VARIANTS`, each a preset ``mw-quick-<name>`` and a building block of the ablation
variants (:mod:`worldvla.ablation.config`); a test asserts each preset differs from its
parent only in the intended fields. All presets sit in one registry (``TRAIN_PRESETS``).

What the policy does at inference (its action readout) is not a training field: a preset
chooses the inference defaults its checkpoints carry (:func:`preset_inference`,
:mod:`worldvla.artifacts.inference`), and changing them makes no other run.

Batch sizes are *global*: ``batch_size`` samples per optimizer step, split into
``grad_accum`` micro-batches and then across the data-parallel ranks. The same config
therefore trains the same model on 1 process or under ``torchrun`` with N processes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from worldvla.artifacts.inference import DEFAULT_INFERENCE, LEGACY_TRAIN_KEYS, InferenceDefaults
from worldvla.errors import ConfigError
from worldvla.model.config import MODEL_PRESETS
from worldvla.sequence import PromptConfig
from worldvla.utils.registry import Registry

LossForm = Literal["reference", "split"]
Schedule = Literal["cosine", "constant"]
Precision = Literal["bf16", "fp32"]
AttentionKernel = Literal["sdpa", "math"]  # worldvla.model.transformer.ATTENTION_KERNELS
WorldData = Literal["all", "demos", "explore"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (model size by preset name)."""

    name: str = "custom"
    model: str = "tiny"  # a key of worldvla.model.config.MODEL_PRESETS
    dropout: float | None = None  # None: the model preset's residual dropout

    # ---- data / sample layout (SPEC §2, §5)
    use_action_data: bool = True  # action-model samples (the policy role)
    use_world_data: bool = True  # world-model samples (the world-model role)
    world_fraction: float = 0.5  # share of world-model samples in the mixed stream (reference ~1:1)
    # Which episodes world-model samples come from: "all" (demonstrations and the exploratory
    # segments of worldvla.data.exploration, where the data has them), "demos" only, or
    # "explore" only (every world sample's actions vary independently of the scene).
    world_data: WorldData = "all"
    history: int = 2  # M frames of the action-model prompt
    chunk_len: int = 5  # K actions per action-model sample
    chunk_mask: bool = True  # SPEC §3 attention mask over action chunks
    action_bins: int = 256  # uniform bins per action dimension (SPEC §2; the reference uses 256)
    # The proprioceptive state of step t in the action-model prompt (a state block after the
    # images, docs/ARCHITECTURE.md); needs a token cache with states. Off: the layout, the
    # vocabulary and every checkpoint trained before the option are unchanged.
    use_state: bool = False
    state_bins: int = 256  # uniform bins per state dimension (used only with use_state)
    text_tokenizer: str = "bytes"  # "bytes" or a tokenizers JSON path
    # Prompt templates (saved in the checkpoint's layout; the policy builds the same ones).
    # The reference's sentences cost ~65 byte tokens per sample; CPU presets shorten them.
    action_prompt: str = PromptConfig.action_prompt
    world_prompt: str = PromptConfig.world_prompt
    val_fraction: float = 0.1  # share of episodes held out for validation
    split_seed: int = 0  # the held-out episodes depend only on this seed
    # Train on the first n training demonstrations of every task (file order; the held-out
    # episodes and the exploratory segments stay as they are): the scarce-data regime
    # without another collection. 0: every training demonstration.
    train_demos_per_task: int = 0

    # ---- loss (SPEC §4)
    loss_form: LossForm = "reference"
    # α: the loss weight of image-code targets (SPEC §4), applied by worldvla.train.loss (the
    # samples weigh every target 1).
    image_weight: float = 0.04
    # Multiplier on the weight of world-model target codes that differ from the input frame's
    # code at the same position (where the picture changes; docs/world_model.md). 1.0: the
    # paper's loss.
    world_changed_weight: float = 1.0
    # World-model samples span k = 1..world_horizon control steps: IMG(t), ACT(t..t+k-1) ->
    # IMG(t+k), and rollouts imagine up to that many frames from one anchor frame
    # (docs/world_model.md). 1: the paper's IMG(t), ACT(t) -> IMG(t+1).
    world_horizon: int = 1
    # With world_horizon > 1: the share of one-step samples among the world-model samples (the
    # one-step samples are repeated to reach it); 0: every (t, k) once.
    world_one_step_share: float = 0.0
    # The share of world-model samples trained with their actions not given (null-action ids
    # in the action block; the vocabulary gains that id): what a world model needs to be
    # guided towards its actions when it imagines (WorldModel guidance, docs/world_model.md).
    # 0: none, the paper's.
    world_action_dropout: float = 0.0
    # Initial input embeddings of the action bins: "random" (N(0, init_std), every bin on its
    # own, the paper's) or "ordinal" (bin b starts at e_mid + (2b/(n-1) - 1)·e_dir + noise:
    # neighbouring bins start alike and an action's value is a direction, so what the model
    # learns about one bin carries to its neighbours; docs/world_model.md).
    action_embedding_init: Literal["random", "ordinal"] = "random"
    z_loss: float = 1e-5

    # ---- optimizer and schedule (SPEC §5)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_steps: int = 20
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 4.0  # 0 disables clipping
    steps: int = 1000  # the schedule's length; with early stopping, the most steps a run may take
    batch_size: int = 8  # global samples per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step
    # Early stopping (worldvla.train.early_stop): stop once the held-out loss of every sample
    # kind the run trains (action_loss, world_loss) has not improved for this many
    # validations in a row, keeping the best weights of each kind as run/best/<kind>. The
    # schedule still follows `steps`. 0: off, train all `steps`.
    early_stop_patience: int = 0
    # Start from the weights of this checkpoint (a run or checkpoint directory; same model,
    # vocabulary and image tokenizer) with a fresh optimizer and schedule: fine-tuning, e.g.
    # action training after world-model pre-training. None: random initial weights.
    init_from: str | None = None

    # ---- execution
    precision: Precision = "bf16"  # bf16 autocast with fp32 master weights, or plain fp32
    compile: bool = False  # torch.compile the model
    # "math": attention as explicit matmuls + fp32 softmax, the form torch.compile fuses
    # (faster with compile, the same function up to rounding); "sdpa": PyTorch's kernel.
    attention: AttentionKernel = "sdpa"
    activation_checkpointing: bool = False
    fsdp: bool = False  # FSDP2 full-shard per decoder block under torchrun (else DDP)
    seed: int = 0

    # ---- intervals and bookkeeping
    log_every: int = 10
    val_every: int = 200  # 0 disables periodic validation
    val_batches: int = 4
    ckpt_every: int = 200
    keep_last: int = 3

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.model not in MODEL_PRESETS:
            problems.append(
                f"model={self.model!r} is not a model preset ({', '.join(sorted(MODEL_PRESETS))})"
            )
        if not (self.use_action_data or self.use_world_data):
            problems.append("use_action_data and use_world_data are both false: nothing to train on")
        if self.use_action_data and self.use_world_data and not 0.0 < self.world_fraction < 1.0:
            problems.append(
                f"world_fraction must be in (0, 1) when both data kinds are used, got {self.world_fraction}"
            )
        for name in (
            "history",
            "chunk_len",
            "action_bins",
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "val_batches",
            "ckpt_every",
            "keep_last",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "warmup_steps",
            "val_every",
            "weight_decay",
            "grad_clip",
            "z_loss",
            "seed",
            "split_seed",
            "train_demos_per_task",
            "early_stop_patience",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.early_stop_patience and not self.val_every:
            problems.append("early_stop_patience needs validation (val_every > 0)")
        if self.state_bins < 2:
            problems.append(f"state_bins must be >= 2, got {self.state_bins}")
        if self.use_state and not self.use_action_data:
            problems.append(
                "use_state needs action-model samples (use_action_data): only they read the state"
            )
        if self.batch_size % self.grad_accum:
            problems.append(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            problems.append(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.image_weight < 0:
            problems.append(f"image_weight must be >= 0, got {self.image_weight}")
        if not 0.0 <= self.world_action_dropout < 1.0:
            problems.append(f"world_action_dropout must be in [0, 1), got {self.world_action_dropout}")
        if not 0.0 <= self.world_one_step_share < 1.0:
            problems.append(f"world_one_step_share must be in [0, 1), got {self.world_one_step_share}")
        if self.world_horizon < 1:
            problems.append(f"world_horizon must be >= 1, got {self.world_horizon}")
        if self.action_embedding_init not in ("random", "ordinal"):
            problems.append(
                f"action_embedding_init must be 'random' or 'ordinal', got {self.action_embedding_init!r}"
            )
        if not self.world_changed_weight > 0:
            problems.append(f"world_changed_weight must be > 0, got {self.world_changed_weight}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (
            ("loss_form", LossForm),
            ("schedule", Schedule),
            ("precision", Precision),
            ("attention", AttentionKernel),
            ("world_data", WorldData),
        ):
            if getattr(self, name) not in typing.get_args(allowed):
                problems.append(
                    f"{name} must be one of {typing.get_args(allowed)}, got {getattr(self, name)!r}"
                )
        if "{instruction}" not in self.action_prompt:
            problems.append(f"action_prompt must contain '{{instruction}}', got {self.action_prompt!r}")
        if problems:
            raise ConfigError(f"invalid training config {self.name!r}: " + "; ".join(problems))

    # ------------------------------------------------------------------ derived
    @property
    def micro_batch_size(self) -> int:
        """Samples per micro-batch over all ranks."""
        return self.batch_size // self.grad_accum

    @property
    def effective_world_fraction(self) -> float:
        """Share of world-model samples after the ``use_*_data`` switches."""
        if not self.use_world_data:
            return 0.0
        if not self.use_action_data:
            return 1.0
        return self.world_fraction

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config as stored (``to_dict``). Older checkpoints and runs kept inference defaults
        among these fields (``action_readout``): they are accepted and left out here, and
        :meth:`InferenceDefaults.from_legacy_train` makes them the checkpoint's inference
        defaults when it is loaded (:func:`worldvla.artifacts.checkpoint.read_inference`)."""
        d = {k: v for k, v in d.items() if k not in LEGACY_TRAIN_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config fields {unknown}")
        return cls(**d)


# Fields that may change when a run is resumed: they do not affect the trained weights.
# ``init_from`` only gives the first step's weights; a resumed run takes its checkpoint's.
RESUMABLE_FIELDS = frozenset(
    {
        "name",
        "log_every",
        "val_every",
        "val_batches",
        "ckpt_every",
        "keep_last",
        "compile",
        "attention",
        "init_from",
    }
)


def resumable_fields(cfg: TrainConfig) -> frozenset[str]:
    """The fields a resume of ``cfg`` may change: :data:`RESUMABLE_FIELDS`, less the
    validation settings when early stopping reads the validations."""
    if cfg.early_stop_patience:
        return RESUMABLE_FIELDS - {"val_every", "val_batches"}
    return RESUMABLE_FIELDS


def config_diff(a: TrainConfig, b: TrainConfig, ignore: frozenset[str] = frozenset()) -> dict[str, tuple]:
    """``{field: (a_value, b_value)}`` for every field that differs (except ``ignore``)."""
    return {
        f.name: (getattr(a, f.name), getattr(b, f.name))
        for f in fields(TrainConfig)
        if f.name not in ignore and getattr(a, f.name) != getattr(b, f.name)
    }


# ---------------------------------------------------------------------------- overrides
def _coerce(value: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _coerce(value, args[0], key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"--set {key}={value}: expected one of {typing.get_args(tp)}")
        return value
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={value}: expected true or false")
    if tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"--set {key}={value}: expected a {tp.__name__}") from None
    return value


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings (the CLI's ``--set``) with the field's type."""
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in hints:
            import difflib

            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--set {key}: no such training config field.{hint}")
        changes[key] = _coerce(value.strip(), hints[key], key)
    return replace(cfg, **changes)


def _format(value: Any) -> str:
    """A field's value as ``--set`` writes it (the inverse of :func:`_coerce`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_overrides(base: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The ``key=value`` strings that turn ``base`` into ``cfg`` (every field that differs,
    ``name`` included), in field order: ``apply_overrides(base, as_overrides(base, cfg)) == cfg``
    (but for a text value with leading or trailing spaces, which ``--set`` strips)."""
    return [f"{k}={_format(v)}" for k, (_, v) in config_diff(base, cfg).items()]


# ---------------------------------------------------------------------------- presets
# The paper's ablations (SPEC §1, §8) as field changes of the base recipe, defined once:
# each is a training preset ``mw-quick-<name>`` below, and the ablation variants
# (worldvla.ablation.config) are built from them.
VARIANTS: dict[str, dict[str, Any]] = {
    "action-only": {"use_world_data": False},  # claim 1 baseline
    "world-only": {"use_action_data": False},  # claim 2 baseline
    "no-chunk-mask": {"chunk_mask": False},  # claim 3: chunks with a plain causal mask
    "no-chunk": {"chunk_len": 1},  # one action per query
    "history-2": {"history": 2},  # the reference's M
    "history-4": {"history": 4},
    "split-loss": {"loss_form": "split"},
}


def _debug() -> TrainConfig:
    """Seconds on a laptop CPU: the tests' and the smoke run's configuration."""
    return TrainConfig(
        name="debug",
        model="tiny",
        history=2,
        chunk_len=3,
        steps=4,
        batch_size=4,
        lr=1e-3,
        warmup_steps=1,
        precision="fp32",
        log_every=1,
        val_every=2,
        val_batches=1,
        ckpt_every=2,
        keep_last=2,
    )


def _mw_quick() -> TrainConfig:
    """The embedded Meta-World benchmark at CPU size (8x8 image grids, 20 Hz control).

    The CPU budget decides the deviations from the reference recipe (SPEC §5), each measured
    in docs/training.md: the `mini` model (more epochs in 14 minutes beat a wider model),
    one history frame (M=1; M=2 is the `history-2` ablation), a higher learning rate for
    the small model, bf16 autocast and prompts cut to the instruction (the reference's
    sentences are ~65 byte tokens per sample, as long as the image). Its checkpoints read
    actions out with the mean readout (:func:`preset_inference`).
    """
    return TrainConfig(
        name="mw-quick",
        model="mini",
        history=1,
        chunk_len=5,
        steps=1500,
        batch_size=32,
        lr=1.5e-3,
        warmup_steps=40,
        schedule="cosine",
        precision="bf16",
        action_prompt="{instruction}",
        world_prompt="",
        log_every=10,
        val_every=250,
        val_batches=4,
        ckpt_every=250,
    )


def _presets() -> Registry[TrainConfig]:
    mw_quick = _mw_quick()
    out: Registry[TrainConfig] = Registry("training preset")
    out.register("debug", _debug(), "tests and the smoke run: tiny model, 4 steps in seconds")
    out.register("mw-quick", mw_quick, "the quickstart's recipe: mini model, 1,500 steps on CPU")
    # World-model samples over 1-5 control steps (half of them one-step, which keeps one-step
    # predictions above repeat-last) with the changed codes weighed 4x: the first world model
    # here that reads its actions (docs/world_model.md).
    out.register(
        "mw-quick-multistep",
        replace(
            mw_quick,
            name="mw-quick-multistep",
            world_changed_weight=4.0,
            world_horizon=5,
            world_one_step_share=0.5,
        ),
        "mw-quick with world samples over 1-5 control steps (half one-step), changed codes weighed 4x",
    )
    # The best world model measured on mw-quick (docs/world_model.md, lever L4): the compact
    # model and world samples over 1-10 control steps; ~2x the training compute of mw-quick.
    out.register(
        "mw-quick-multistep-compact",
        replace(
            out.get("mw-quick-multistep"),
            name="mw-quick-multistep-compact",
            model="compact",
            world_horizon=10,
        ),
        "mw-quick-multistep with the compact model and world samples over 1-10 control steps",
    )
    # L4 with 10% of its world-model samples given null actions, so that its world model can
    # be decoded with classifier-free guidance on the actions (w = 2, its checkpoints'
    # inference default): fidelity +0.88 dB and gain over action-blind +0.78 dB against
    # +0.62 / +0.51 unguided, policy 80.0% [65, 90] (docs/world_model.md, lever L8).
    out.register(
        "mw-quick-guided",
        replace(out.get("mw-quick-multistep-compact"), name="mw-quick-guided", world_action_dropout=0.1),
        "mw-quick-multistep-compact with 10% null-action world samples; world model decoded with guidance 2",
    )
    out.register(
        "mw-quick-debug",
        replace(
            mw_quick,
            name="mw-quick-debug",
            model="tiny",
            steps=6,
            batch_size=4,
            warmup_steps=2,
            log_every=1,
            val_every=3,
            val_batches=1,
            ckpt_every=3,
        ),
        "tiny sibling of mw-quick: the same layout and schedule shape in seconds",
    )
    # Meta-World MT50 under LeRobot's protocol (issue 18; docs/metaworld.md "Training mt50"):
    # 80 Hz control, so a chunk of 10 actions spans 0.125 s and world-model samples reach
    # 1-8 actions ahead (one action moves the hand ~1 mm: a one-step pair is nearly the same
    # frame); the 4-d state in the prompt, as LeRobot's policies get it.
    mt50 = replace(
        mw_quick,
        name="mt50",
        model="compact",
        chunk_len=10,
        use_state=True,
        world_horizon=8,
        steps=16_000,
        lr=1e-3,
        warmup_steps=200,
        val_every=1000,
        val_batches=8,
        ckpt_every=250,
        # The fast training path: compiled blocks with the attention form inductor fuses,
        # ~1.2x the tokens/s of eager SDPA in the loop at this shape, the same losses up to
        # bf16 rounding (benchmarks/README.md, bench_vs_transformers.py).
        compile=True,
        attention="math",
    )
    out.register("mt50", mt50, "Meta-World MT50: compact model, K=10, the state, 16,000 steps of 32")
    # The comparisons the MT50 result is read with (docs/metaworld.md): the state off, and
    # claim 1 at 50 tasks — no world-model samples, half the steps, so that the policy sees
    # as many action samples (16,000 x 32 x 0.5) as in mt50.
    out.register(
        "mt50-no-state",
        replace(mt50, name="mt50-no-state", use_state=False),
        "mt50 without the proprioceptive state in the prompt",
    )
    out.register(
        "mt50-action-only",
        replace(mt50, name="mt50-action-only", use_world_data=False, steps=mt50.steps // 2),
        "mt50 without world-model samples, at mt50's action-sample exposure (8,000 steps)",
    )
    out.register(
        "mt50-debug",
        replace(
            mt50,
            name="mt50-debug",
            model="tiny",
            compile=False,  # seconds, not a compilation
            steps=4,
            batch_size=4,
            warmup_steps=1,
            log_every=1,
            val_every=2,
            val_batches=1,
            ckpt_every=2,
        ),
        "tiny sibling of mt50: the same layout in seconds",
    )
    for suffix, change in VARIANTS.items():
        what = ", ".join(f"{k}={v}" for k, v in change.items())
        name = f"mw-quick-{suffix}"
        out.register(name, replace(mw_quick, name=name, **change), f"ablation: mw-quick with {what}")
    return out


TRAIN_PRESETS: Registry[TrainConfig] = _presets()

# Checkpoints of mw-quick and its family read actions out as the expected bin (the mean
# readout) instead of greedily: the mode overshoots where the small model is unsure when to
# stop (74-76% instead of 58-59% success over 120 held-out episodes with the same weights,
# docs/training.md).
_PRESET_INFERENCE: dict[str, InferenceDefaults] = {
    name: InferenceDefaults(action_readout="mean")
    for name in TRAIN_PRESETS.names()
    if name.startswith(("mw-quick", "mt50"))
}
# ... and mw-quick-guided imagines its frames with classifier-free guidance on the actions:
# w = 2 measured best of 1, 2, 3 (w = 3 draws the true-action rollouts worse).
_PRESET_INFERENCE["mw-quick-guided"] = InferenceDefaults(action_readout="mean", world_guidance=2.0)


def train_preset(name: str) -> TrainConfig:
    """A named preset; a typo gets a "did you mean" (ConfigError)."""
    return TRAIN_PRESETS.get(name)


def preset_inference(name: str) -> InferenceDefaults:
    """The inference defaults the checkpoints of preset ``name`` carry (the trainer writes them
    into every checkpoint); :data:`DEFAULT_INFERENCE` for a preset that sets none, such as the
    LIBERO presets."""
    return _PRESET_INFERENCE.get(name, DEFAULT_INFERENCE)
