"""What an ablation trains: variants of one training preset, seeds, and a step budget per run.

A :class:`Variant` is a named change of the base training config (``{"chunk_len": 1}``)
plus which evaluations it needs, composed of the field changes that
:data:`worldvla.train.config.VARIANTS` defines once for the ``mw-quick-*`` training presets.
:class:`AblationConfig` lists the variants of the paper's three claims (SPEC §1, §8) and
sizes every run by optimizer steps, not minutes, so a re-run on another machine trains the
same models.

Variants whose resolved training configs are identical (for example the chunk sweep's
K=5 with the mask and the full model) are trained once and reported under every name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from worldvla.artifacts.inference import InferenceDefaults
from worldvla.errors import ConfigError
from worldvla.tokenizers.action import READOUTS, Readout
from worldvla.train.config import VARIANTS as TRAIN_VARIANTS
from worldvla.train.config import TrainConfig, train_preset
from worldvla.utils.registry import Registry


@dataclass(frozen=True)
class Variant:
    name: str
    changes: tuple[tuple[str, Any], ...] = ()  # (field, value) applied to the base config
    world_eval: bool = False  # roll out the world model (claim 2)
    step_scale: int = 1  # optimizer steps = step_scale x the ablation's steps per run
    # Another variant whose run (same seed) gives the initial weights: its best world-model
    # checkpoint, or its last one without early stopping (pre-training, then fine-tuning).
    init_from: str | None = None


VARIANTS: Registry[Variant] = Registry("ablation variant")


def _v(
    name: str,
    description: str,
    *uses: str,
    world_eval: bool = False,
    step_scale: int = 1,
    init_from: str | None = None,
    **changes: Any,
) -> None:
    """Register a variant: the training changes named ``uses`` (worldvla.train.config.VARIANTS,
    where each is defined once) plus ``changes`` (the chunk-length sweep's values)."""
    merged = {k: v for use in uses for k, v in TRAIN_VARIANTS[use].items()} | changes
    variant = Variant(name, tuple(sorted(merged.items())), world_eval, step_scale, init_from)
    VARIANTS.register(name, variant, description)


# The paper's tables, in their order (SPEC §8). The base is the quickstart's recipe: world
# data on, K=5, the chunk mask on, M=1.
# Claim 1: world-model data improves the policy.
_v("action-only-k1", "action model, one action per query", "action-only", "no-chunk")
_v("joint-k1", "+ world data, one action per query", "no-chunk")
# Claim 3: action chunks need the attention mask.
_v("action-only-k5-causal", "action model, K=5, plain causal mask", "action-only", "no-chunk-mask")
_v("action-only-k5-mask", "action model, K=5, chunk mask", "action-only")
_v("full", "world data + K=5 + chunk mask", world_eval=True)
# History length for the chunk + mask model.
_v("history-2", "full model, M=2 history frames", "history-2")
_v("history-4", "full model, M=4 history frames", "history-4")
# Chunk-length sweep, with and without the mask (K=1 and K=5 with the mask are above).
_v("k1-causal", "full model, K=1, causal", "no-chunk", "no-chunk-mask")
_v("k5-causal", "full model, K=5, causal", "no-chunk-mask")
_v("k10-mask", "full model, K=10, chunk mask", chunk_len=10)
_v("k10-causal", "full model, K=10, causal", "no-chunk-mask", chunk_len=10)
_v("k20-mask", "full model, K=20, chunk mask", chunk_len=20)
_v("k20-causal", "full model, K=20, causal", "no-chunk-mask", chunk_len=20)
# Claim 2: action data improves the world model on long rollouts.
_v("world-only", "world model only (no action data)", "world-only", world_eval=True)
# Exposure-matched joint runs: with world_fraction 0.5 a joint model sees half as many
# samples of each kind per step as a single-role model; at 2x the steps it sees as many.
_v("joint-k1-matched", "+ world data, K=1, 2x steps (as many action samples)", "no-chunk", step_scale=2)
_v(
    "full-matched",
    "full model, 2x steps (as many world samples as world-only)",
    world_eval=True,
    step_scale=2,
)
# The smallest set that decides the three claims: 1 (action-only-k1 vs joint-k1),
# 3 (k5-causal vs full), 2 (world-only vs full).
CLAIM_VARIANTS = ("action-only-k1", "joint-k1", "k5-causal", "full", "world-only")
MATCHED_VARIANTS = ("joint-k1-matched", "full-matched")
# The paper's variants (SPEC §8); the exposure-matched ones double a run's cost.
PAPER_VARIANTS = tuple(n for n in VARIANTS if n not in MATCHED_VARIANTS)

# ---- The claims study (docs/ablations.md, "Where the claims could appear"): one factor at a
# time moved from the study's base point, each level compared at equal exposure with early
# stopping. Claim 1: `<level>/action-only` vs `<level>/joint`; claim 2: `<level>/world-only`
# vs `<level>/joint`. The joint run trains 2x the steps (and validates half as often), so
# it sees as many samples of each kind as the single-role run it is compared with.
# In the order the runs are made (seed 0 of every level first): the costly capacity levels
# last, so that a partial study has the cheap levels on every seed.
STUDY_LEVELS: dict[str, tuple[str, str, dict[str, Any]]] = {  # level -> (factor, label, changes)
    "base": ("base", "mini, all demonstrations, world data from them", {}),
    "demos-10": ("demonstrations", "10 demonstrations per task", {"train_demos_per_task": 10}),
    "demos-50": ("demonstrations", "50 demonstrations per task", {"train_demos_per_task": 50}),
    "explore": ("world data", "+ exploratory segments in the world data", {"world_data": "all"}),
    "compact": ("capacity", "compact model (~4M)", {"model": "compact"}),
    "small": ("capacity", "small model (~12M)", {"model": "small"}),
}


def _study_level(level: str) -> None:
    _, label, changes = STUDY_LEVELS[level]
    _v(f"{level}/action-only", f"claims study, {label}: action model", "action-only", **changes)
    _v(f"{level}/world-only", f"claims study, {label}: world model", "world-only", world_eval=True, **changes)
    _v(
        f"{level}/joint",
        f"claims study, {label}: joint, 2x steps (as many samples of each kind)",
        world_eval=True,
        step_scale=2,
        **changes,
    )


for _level in ("base", "demos-10", "demos-50", "explore"):
    _study_level(_level)
# Claim 1 through pre-training (the paper's Table 6): the base world model, fine-tuned on
# action data alone; compared with base/action-only.
_v(
    "pretrain/action-ft",
    "claims study: base/world-only's best world model, fine-tuned on action data",
    "action-only",
    init_from="base/world-only",
)
for _level in ("compact", "small"):
    _study_level(_level)
STUDY_VARIANTS = tuple(n for n in VARIANTS if "/" in n)


def level(variant: str) -> str:
    """The level of a claims-study variant (``"demos-10/joint"`` -> ``"demos-10"``); a
    variant without one is its own level."""
    return variant.split("/")[0]


@dataclass(frozen=True)
class AblationConfig:
    name: str
    experiment: str  # worldvla.experiments experiment: suite, tokenizer and data stages (shared)
    train: str  # base training preset of every variant
    steps: int  # optimizer steps per run (the budget; warmup and cosine follow it)
    warmup_steps: int
    seeds: tuple[int, ...]
    variants: tuple[str, ...]
    eval_episodes_per_task: int = 10  # held-out variations, cycling
    eval_envs: int = 8
    eval_world_episodes: int = 16
    rollout_lengths: tuple[int, ...] = (10, 50)
    gifs: int = 0  # GIFs per evaluation (0: tables only)
    offline_stride: int = 2  # every 2nd step of the held-out episodes (worldvla.eval.offline_actions)
    # The policy's action readout in every run (the inference default of its checkpoints):
    # greedy, as the reference and as the committed results were evaluated, whatever the base
    # preset says. It shapes no weights, so it is not part of a run's key.
    action_readout: Readout = "argmax"
    # Changes of the base preset shared by every run of the ablation (before the variant's).
    base_changes: tuple[tuple[str, Any], ...] = ()
    # Score world models against the simulator with other actions too (worldvla.eval.counterfactual).
    counterfactual: bool = False
    report: Literal["paper", "study"] = "paper"  # the paper's tables, or the claims study's
    # The order of the runs (worldvla.ablation.plan): "seeds" runs every variant of seed 0
    # first (a partial ablation compares every variant); "levels" runs every seed of a level
    # (the variants "<level>/...") before the next level (a partial study has whole levels).
    order: Literal["seeds", "levels"] = "seeds"
    # Levels run on fewer seeds than ``seeds`` to fit the budget: (level, seeds) pairs.
    level_seeds: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            problems.append(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.steps < 1 or not 0 <= self.warmup_steps < self.steps:
            problems.append(
                f"need steps >= 1 and 0 <= warmup_steps < steps, got {self.steps}, {self.warmup_steps}"
            )
        if self.eval_episodes_per_task < 1 or self.eval_world_episodes < 1 or not self.rollout_lengths:
            problems.append("evaluation sizes must be >= 1")
        levels = {level(v) for v in self.variants}
        for lvl, seeds in self.level_seeds:
            ok = lvl in levels and seeds and len(set(seeds)) == len(seeds) and set(seeds) <= set(self.seeds)
            if not ok:
                problems.append(
                    f"level_seeds: {lvl!r} must be a level of the variants, with seeds of {self.seeds}"
                )
        if self.order not in ("seeds", "levels"):
            problems.append(f"order must be 'seeds' or 'levels', got {self.order!r}")
        if self.action_readout not in READOUTS:
            problems.append(f"action_readout must be one of {READOUTS}, got {self.action_readout!r}")
        if problems:
            raise ConfigError(f"ablation {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def inference(self) -> InferenceDefaults:
        """The inference defaults every run's checkpoints carry."""
        return InferenceDefaults(action_readout=self.action_readout)

    def select(self, only: list[str] | None = None, seeds: list[int] | None = None) -> AblationConfig:
        """The same ablation restricted to some variants and/or with other seeds (then on
        every level: ``level_seeds`` no longer applies)."""
        variants = tuple(only) if only else self.variants
        levels = {level(v) for v in variants}
        return replace(
            self,
            variants=variants,
            seeds=tuple(seeds) if seeds else self.seeds,
            level_seeds=() if seeds else tuple((lv, s) for lv, s in self.level_seeds if lv in levels),
        )

    def seeds_of(self, variant: str) -> tuple[int, ...]:
        """The seeds variant ``variant`` runs on."""
        return dict(self.level_seeds).get(level(variant), self.seeds)


def resolve(cfg: AblationConfig, name: str, seed: int) -> TrainConfig:
    """The training config of one run: base preset + the variant's changes + budget + seed.

    With K=1 there is no earlier action in a chunk to hide, so the chunk mask is set on
    (the two masks are then identical): K=1 with and without the mask is one run.
    """
    v = VARIANTS.get(name)
    base = replace(train_preset(cfg.train), **dict(cfg.base_changes))
    out = replace(
        base,
        name=f"{cfg.name}/{name}",
        steps=cfg.steps * v.step_scale,
        warmup_steps=cfg.warmup_steps,
        seed=seed,
        **dict(v.changes),
    )
    if out.chunk_len == 1:
        out = replace(out, chunk_mask=True)
    if not out.use_world_data:  # then it reads no world data: one run whatever the mix says
        out = replace(out, world_data=TrainConfig.world_data)
    if out.early_stop_patience and v.step_scale != 1:
        # Validate after as many samples of each kind as the single-role runs do, so that
        # patience means the same exposure.
        out = replace(out, val_every=out.val_every * v.step_scale, ckpt_every=out.ckpt_every * v.step_scale)
    return out


# Training fields added after the first ablation runs, with their defaults.
ADDED_LATER: dict[str, Any] = {
    "world_data": "all",
    "world_changed_weight": 1.0,
    "world_horizon": 1,
    "world_one_step_share": 0.0,
    "world_action_dropout": 0.0,
    "action_embedding_init": "random",
    "attention": "sdpa",
    "train_demos_per_task": 0,
    "early_stop_patience": 0,
    "init_from": None,
}


def run_key(train_cfg: TrainConfig, init_key: str | None = None) -> str:
    """A short hash of everything that shapes the trained weights (not the run's name); a run
    that starts from another run's weights is keyed by that run's key, not by its path."""
    d = train_cfg.to_dict()
    d.pop("name")
    d["init_from"] = None
    for name, default in ADDED_LATER.items():  # at their defaults a run keeps the key it had
        if d.get(name) == default:
            d.pop(name)
    if init_key is not None:
        d["init_from_run"] = init_key
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def _presets() -> Registry[AblationConfig]:
    full = AblationConfig(
        # <= 2 hours on 2 CPU cores after the data stages (docs/ablations.md): 13 distinct
        # models x 3 seeds at ~2.5 minutes each (200 steps of batch 32, 20 evaluation
        # episodes; K=1 runs query the model every step and take longer to evaluate).
        name="mw-ablation",
        experiment="mw-quick-control",  # the data of the committed results (envs/suites.py)
        train="mw-quick",
        steps=200,
        warmup_steps=15,
        seeds=(0, 1, 2),
        variants=PAPER_VARIANTS,
        eval_episodes_per_task=5,
    )
    out: Registry[AblationConfig] = Registry("ablation preset")
    out.register("mw-ablation", full, "the paper's variants, 3 seeds, 200 steps per run (<= 2 hours)")
    out.register(
        "mw-ablation-quick",
        replace(full, name="mw-ablation-quick", seeds=(0,), variants=CLAIM_VARIANTS),
        "one seed of the runs that decide the three claims (~20 minutes with the data)",
    )
    # At 200 steps no variant beats predicting the mean action (docs/ablations.md).
    out.register(
        "mw-ablation-claims",
        replace(
            full,
            name="mw-ablation-claims",
            steps=600,
            warmup_steps=30,
            variants=CLAIM_VARIANTS + MATCHED_VARIANTS,
        ),
        "the claims' runs and the exposure-matched ones, 3 seeds, 600 steps (~2.5 hours)",
    )
    # The claims study (issue 21; docs/ablations.md "Where the claims could appear"): the
    # quickstart's episodes (mw-quick: physics-rate experts, drawer-open, exploratory
    # segments) and the recipe whose world model reads its actions (mw-quick-multistep:
    # local codes, world samples over 1-5 control steps, docs/world_model.md; a one-step
    # world model ignores its actions, so claim 2's counterfactual scores could not move),
    # the mean readout, world data from the demonstrations at the base point, early stopping
    # on each compared kind. A single-role run sees at most as many samples of its kind as
    # the quickstart's joint model (1,500 steps x 32 x 0.5 = 750 x 32); sized in
    # docs/ablations.md from measured step times.
    study = AblationConfig(
        name="claims-study",
        experiment="mw-quick-multistep",
        train="mw-quick-multistep",
        steps=750,
        warmup_steps=40,
        seeds=(0, 1, 2),
        variants=STUDY_VARIANTS,
        eval_episodes_per_task=5,
        eval_envs=8,
        eval_world_episodes=8,
        rollout_lengths=(10, 50),
        action_readout="mean",
        base_changes=(
            ("world_data", "demos"),
            ("early_stop_patience", 4),
            ("val_every", 50),
            ("val_batches", 8),
            ("ckpt_every", 50),
        ),
        counterfactual=True,
        report="study",
        order="levels",  # whole levels first, the capacity levels (the costliest) last
        # The budget (<= 8 hours on 2 cores with --jobs 2, docs/ablations.md "Budget of the
        # study") holds one seed of the small model, whose steps cost ~4x mini's; its seeds
        # 1 and 2 are one command more (--only small/... --seeds 1,2, ~3 hours).
        level_seeds=(("small", (0,)),),
    )
    out.register("claims-study", study, "the claims study: capacity, scarce data, pre-training, world data")
    out.register(
        "claims-study-debug",
        replace(
            study,
            name="claims-study-debug",
            experiment="debug",
            train="mw-quick-debug",
            steps=4,
            warmup_steps=1,
            seeds=(0, 1),
            variants=tuple(n for n in STUDY_VARIANTS if n.startswith(("base/", "explore/", "pretrain/"))),
            level_seeds=(("explore", (0,)),),
            eval_episodes_per_task=1,
            eval_envs=1,
            eval_world_episodes=1,
            base_changes=(
                ("world_data", "demos"),
                ("early_stop_patience", 1),
                ("val_every", 2),
                ("ckpt_every", 2),
            ),
        ),
        "tests: the claims study's levels that fit the debug data, seconds per run",
    )
    out.register(
        "ablation-debug",
        AblationConfig(
            name="ablation-debug",
            experiment="debug",
            train="mw-quick-debug",
            steps=3,
            warmup_steps=1,
            seeds=(0, 1),
            variants=("action-only-k1", "joint-k1", "k1-causal", "full", "world-only"),
            eval_episodes_per_task=1,
            eval_envs=1,
            eval_world_episodes=1,
            rollout_lengths=(2,),
        ),
        "tests: every stage for real on the debug experiment, seconds per run",
    )
    return out


ABLATIONS: Registry[AblationConfig] = _presets()


def ablation_preset(name: str) -> AblationConfig:
    """The ablation preset called ``name``; a typo gets a "did you mean" (ConfigError)."""
    return ABLATIONS.get(name)
