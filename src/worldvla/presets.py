"""Experiment presets: one name for a whole pipeline (suite, tokenizer, training, evaluation).

``worldvla quickstart --preset NAME`` runs collect → train tokenizer → tokenize → train →
evaluate policy → evaluate world model → report with the settings below. Each preset has
a tiny sibling (``debug``) that the test command runs end to end in a few minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from worldvla.errors import ConfigError
from worldvla.utils.registry import lookup


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    suite: str  # worldvla.envs.suites preset
    tokenizer: str  # worldvla.tokenizers.vq preset
    train: str  # worldvla.train.config preset
    episodes_per_task: int | None = None  # None: the suite's
    action_noise: float = 0.0  # DART-style noise while collecting
    tokenizer_minutes: float = 6.0
    tokenizer_steps: int | None = None  # overrides the time budget when set
    train_minutes: float | None = None  # wall-clock cap on training (the schedule follows train.steps)
    train_overrides: tuple[str, ...] = ()  # "key=value" applied to the training preset
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

    def to_dict(self) -> dict:
        return asdict(self)

    def exploration_config(self):  # noqa: ANN201 - ExplorationConfig, imported lazily
        from worldvla.data.exploration import ExplorationConfig

        if not self.explore_per_task:
            return None
        return ExplorationConfig(per_task=self.explore_per_task, steps=self.explore_steps)


_MW_QUICK = ExperimentConfig(
    name="mw-quick",
    suite="mw-quick",
    tokenizer="mw64",
    train="mw-quick",
    action_noise=0.1,
    tokenizer_steps=1200,
    # 300 exploratory segments of 20 steps per task (~35% of the world-model transitions):
    # without them the world model replays the demonstrations' motion whatever its actions
    # (docs/world_model.md).
    explore_per_task=300,
)
# mw-quick as its committed results on the earlier task sets were made (their run
# directories stay reusable): demonstrations only, time-budgeted stages.
_MW_QUICK_BEFORE_EXPLORATION = replace(
    _MW_QUICK, tokenizer_steps=None, tokenizer_minutes=5.0, train_minutes=14.0, explore_per_task=0
)

EXPERIMENTS: dict[str, ExperimentConfig] = {
    # The main job: fits in about 30 minutes on 2 CPU cores (README).
    "mw-quick": _MW_QUICK,
    # The same on mw-quick's first task set (handle-pull instead of drawer-open).
    "mw-quick-v1": replace(_MW_QUICK_BEFORE_EXPLORATION, name="mw-quick-v1", suite="mw-quick-v1"),
    # The same on the mw-quick-control suite (experts asked once per control step): the
    # data stages of the ablation presets, whose committed results were made on it.
    "mw-quick-control": replace(
        _MW_QUICK_BEFORE_EXPLORATION, name="mw-quick-control", suite="mw-quick-control"
    ),
    # Tiny sibling: every stage for real, on one task with a tiny model, in ~2 minutes.
    "debug": ExperimentConfig(
        name="debug",
        suite="debug",
        tokenizer="mw64",
        train="mw-quick-debug",
        tokenizer_minutes=0.2,
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
}


def experiment_preset(name: str) -> ExperimentConfig:
    return lookup(EXPERIMENTS, name, "experiment preset")
