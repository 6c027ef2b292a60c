"""Experiment presets: one name for a whole pipeline (suite, tokenizer, training, evaluation).

``worldvla quickstart --preset NAME`` runs collect → train tokenizer → tokenize → train →
evaluate policy → evaluate world model → report with the settings below. Each preset has
a tiny sibling (``debug``) that the test command runs end to end in a few minutes.

An experiment is composed of typed objects, as openpi's ``TrainConfig`` nests its model and
data configs: it holds its task suite (:class:`~worldvla.envs.suites.SuiteConfig`), its
image tokenizer (:class:`~worldvla.tokenizers.vq_config.VQConfig`) and its training config
(:class:`~worldvla.train.config.TrainConfig`), each taken from its own registry, and the
pipeline runs exactly these objects. A run directory records the parts by name
(:meth:`ExperimentConfig.to_dict`), as it always has.

Budgets are work, never wall-clock time: the image tokenizer trains ``tokenizer_steps``
optimizer steps and the model its training config's ``steps``, so the same preset gives
the same model on a fast or a slow machine. A wall-clock cap is a run option
(``worldvla quickstart --max-minutes-per-stage``), not part of the experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from worldvla.data.exploration import ExplorationConfig
from worldvla.envs.suites import SuiteConfig, suite_preset
from worldvla.errors import ConfigError
from worldvla.tokenizers.vq_config import PRESETS as TOKENIZER_PRESETS
from worldvla.tokenizers.vq_config import VQConfig, vq_preset
from worldvla.train.config import TRAIN_PRESETS, TrainConfig, as_overrides, train_preset
from worldvla.utils.registry import Registry

# The parts an experiment holds as objects and records by name.
PARTS = ("suite", "tokenizer", "train")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    suite: SuiteConfig  # the task suite: what is collected and evaluated
    # The image tokenizer to train: a registered preset (worldvla.tokenizers.vq_config), since
    # run records name it.
    tokenizer: VQConfig
    train: TrainConfig  # the training config of the model
    episodes_per_task: int | None = None  # None: the suite's
    action_noise: float = 0.0  # DART-style noise while collecting
    # Optimizer steps of the image tokenizer; its learning-rate schedule follows them. 2,000
    # steps take about the 5 minutes the quickstart's tokenizer once had on a quiet 2-core
    # machine (docs/image_tokenizer.md, "Budget").
    tokenizer_steps: int = 2_000
    eval_episodes_per_task: int = 10  # on held-out variations, cycling over them
    eval_envs: int = 8  # environments stepped in lockstep (batched policy calls)
    eval_world_episodes: int = 16  # held-out (validation) episodes rolled out by the world model
    rollout_lengths: tuple[int, ...] = (1, 10, 50)
    gifs: int = 4  # episodes recorded as GIFs per agent / rollouts per length
    seed: int = 0
    workers: int = 2
    # Exploratory segments per task for the world model (worldvla.data.exploration; 0: none)
    # and their recorded length in control steps.
    explore_per_task: int = 0
    explore_steps: int = 20

    def __post_init__(self) -> None:
        if self.eval_episodes_per_task < 1 or self.eval_envs < 1 or self.eval_world_episodes < 1:
            raise ConfigError(f"experiment {self.name!r}: evaluation sizes must be >= 1")
        if self.tokenizer_steps < 1:
            raise ConfigError(f"experiment {self.name!r}: tokenizer_steps must be >= 1")
        tok = self.tokenizer
        if tok.name not in TOKENIZER_PRESETS or vq_preset(tok.name) != tok:
            raise ConfigError(
                f"experiment {self.name!r}: its tokenizer {tok.name!r} is not the registered tokenizer "
                "preset of that name, and run records name it; register it "
                "(worldvla.tokenizers.vq_config) and use the preset"
            )

    @property
    def train_overrides(self) -> tuple[str, ...]:
        """How :attr:`train` differs from the training preset of its name, as ``--set`` strings
        (from :class:`TrainConfig`'s defaults for a name that is no preset); none for a preset
        that holds a registered training config."""
        train = self.train
        base = train_preset(train.name) if train.name in TRAIN_PRESETS else TrainConfig(name=train.name)
        return tuple(as_overrides(base, train))

    def to_dict(self) -> dict[str, Any]:
        """The experiment as a run directory records it (``stages.json``), in the format of
        every run made so far, key for key: the suite, the tokenizer and the training config
        by name, and :attr:`train_overrides` after ``tokenizer_steps``. A run of another
        experiment is recognised by this record; the suite's definition is recorded beside
        it (:class:`worldvla.pipeline.RunState`), the tokenizer's with its weights, the
        training config with every checkpoint."""
        d: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            d[f.name] = value.name if f.name in PARTS else value
            if f.name == "tokenizer_steps":
                d["train_overrides"] = self.train_overrides
        return d

    def exploration_config(self) -> ExplorationConfig | None:
        if not self.explore_per_task:
            return None
        return ExplorationConfig(per_task=self.explore_per_task, steps=self.explore_steps)


_MW_QUICK = ExperimentConfig(
    name="mw-quick",
    suite=suite_preset("mw-quick"),
    tokenizer=vq_preset("mw64"),
    train=train_preset("mw-quick"),
    action_noise=0.1,
    # 1,200 tokenizer steps: 28.6 dB held-out PSNR on this data (docs/world_model.md), about
    # 4 minutes on a quiet 2-core machine.
    tokenizer_steps=1200,
    # 300 exploratory segments of 20 steps per task (~40% of the world-model transitions):
    # without them the world model replays the demonstrations' motion whatever its actions
    # (docs/world_model.md).
    explore_per_task=300,
)
# mw-quick as its committed results on the earlier task sets were made (their run
# directories stay reusable): demonstrations only.
_MW_QUICK_BEFORE_EXPLORATION = replace(_MW_QUICK, tokenizer_steps=2_000, explore_per_task=0)

EXPERIMENTS: Registry[ExperimentConfig] = Registry("experiment preset")
EXPERIMENTS.register("mw-quick", _MW_QUICK, "the quickstart's previous default: 4 Meta-World tasks, mini")
# The world model that reads its actions (docs/world_model.md): codes that stay put where the
# image does not change (mw64-local) and world samples over 1-5 control steps, half of them
# one-step. Not the default: in its run at f0c6d8b the policy reached 75.0% [60, 86]
# (mw-quick: 85.0% [71, 93]) and the counterfactual targets are not met.
EXPERIMENTS.register(
    "mw-quick-multistep",
    replace(
        _MW_QUICK,
        name="mw-quick-multistep",
        tokenizer=vq_preset("mw64-local"),
        train=train_preset("mw-quick-multistep"),
    ),
    "mw-quick with local codes and world samples over 1-5 control steps (the world model reads its actions)",
)


# Its best-measured world model (docs/world_model.md, lever L4: the smallest gap to true
# actions, at the tokenizer's own; policy 72.5% [57, 84]); training takes ~2x mw-quick's.
def _retrained(base: str, name: str) -> ExperimentConfig:
    """Experiment ``base`` (same suite, data and tokenizer) with the training preset ``name``."""
    return replace(EXPERIMENTS.get(base), name=name, train=train_preset(name))


EXPERIMENTS.register(
    "mw-quick-multistep-compact",
    _retrained("mw-quick-multistep", "mw-quick-multistep-compact"),
    "mw-quick-multistep with the compact model and world samples over 1-10 control steps",
)
# The same with classifier-free guidance on the actions (lever L8): null-action world samples
# in training, world-model frames decoded with w = 2 (the checkpoints' default).
EXPERIMENTS.register(
    "mw-quick-guided",
    _retrained("mw-quick-multistep-compact", "mw-quick-guided"),
    "mw-quick-multistep-compact with null-action world samples; world model decoded with guidance 2",
)
EXPERIMENTS.register(
    "mw-quick-v1",
    replace(_MW_QUICK_BEFORE_EXPLORATION, name="mw-quick-v1", suite=suite_preset("mw-quick-v1")),
    "mw-quick on its first task set (handle-pull instead of drawer-open), demonstrations only",
)
# The mw-quick-control suite has its experts asked once per control step: the data stages
# of the ablation presets, whose committed results were made on it.
EXPERIMENTS.register(
    "mw-quick-control",
    replace(_MW_QUICK_BEFORE_EXPLORATION, name="mw-quick-control", suite=suite_preset("mw-quick-control")),
    "mw-quick-v1 on the mw-quick-control suite: the data of the ablations",
)
# Meta-World MT50 under LeRobot's evaluation protocol (issue 18, docs/metaworld.md): the
# experts' successful demonstrations of 70 tries per task, the policy evaluated on the
# protocol's 10 seeds per task with the comparison table, the world model on 16 held-out
# demonstrations.
_MT50 = ExperimentConfig(
    name="mt50",
    suite=suite_preset("mt50"),
    tokenizer=vq_preset("mw64"),
    train=train_preset("mt50"),
    tokenizer_steps=2_000,
    eval_episodes_per_task=10,
    eval_envs=10,
)
EXPERIMENTS.register("mt50", _MT50, "Meta-World MT50 under LeRobot's protocol: the comparison with SmolVLA")
EXPERIMENTS.register(
    "mt50-debug",
    replace(
        _MT50,
        name="mt50-debug",
        suite=suite_preset("mt50-debug"),
        train=train_preset("mt50-debug"),
        tokenizer_steps=10,
        eval_episodes_per_task=1,
        eval_envs=2,
        eval_world_episodes=1,
        rollout_lengths=(1, 4),
        gifs=1,
        workers=1,
    ),
    "tiny sibling of mt50: every stage for real on two MT50 tasks, the comparison table included",
)
# Every stage for real, on one task with a tiny model.
EXPERIMENTS.register(
    "debug",
    ExperimentConfig(
        name="debug",
        suite=suite_preset("debug"),
        tokenizer=vq_preset("mw64"),
        train=train_preset("mw-quick-debug"),
        tokenizer_steps=20,
        eval_episodes_per_task=2,
        eval_envs=2,
        eval_world_episodes=2,
        rollout_lengths=(1, 10),
        gifs=1,
        workers=1,
        explore_per_task=2,
        explore_steps=6,
    ),
    "tiny sibling: every stage for real on one task with a tiny model, ~2 minutes",
)


def experiment_preset(name: str) -> ExperimentConfig:
    """The experiment preset called ``name``; a typo gets a "did you mean" (ConfigError)."""
    return EXPERIMENTS.get(name)


# Fields of experiments stored by versions that budgeted stages in minutes.
LEGACY_TIME_FIELDS = ("tokenizer_minutes", "train_minutes")


def upgrade_stored_experiment(stored: dict[str, Any], wanted: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """An experiment stored by an older version, in today's fields; and its legacy time budgets.

    Before budgets were steps, an experiment carried ``tokenizer_minutes`` (the tokenizer's
    time budget, unless ``tokenizer_steps`` was set, which then ruled) and ``train_minutes``
    (a cap on training, whose schedule always followed the training preset's ``steps``).
    Neither is part of an experiment any more. ``train_minutes`` is dropped: whether it cut
    training short is recorded with the train stage. A time-budgeted tokenizer
    (``tokenizer_steps`` None) is taken as today's ``tokenizer_steps`` of ``wanted``: a
    finished tokenizer stage is reused as it is (how it was budgeted is returned, for the
    run's record), an unfinished one trains with today's step budget. Everything else must
    still match, so a changed recipe is refused as before.
    """
    stored = dict(stored)
    legacy = {k: stored.pop(k) for k in LEGACY_TIME_FIELDS if k in stored}
    if stored.get("tokenizer_steps") is None:
        if legacy.get("tokenizer_minutes") is not None:
            stored["tokenizer_steps"] = wanted.get("tokenizer_steps")
    else:
        legacy.pop("tokenizer_minutes", None)  # the step count ruled; the budget never applied
    return stored, {k: v for k, v in legacy.items() if v is not None}
