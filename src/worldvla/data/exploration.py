"""Exploratory world data: transitions whose actions vary independently of the scene.

In scripted-expert demonstrations the action is a function of the frame, so a world model
can predict the next frame from the frame alone and learn to ignore its action input (a
video predictor, not an *action* world model; docs/world_model.md). Exploratory segments
break that dependence. Each one starts from a state the expert reaches:

1. reset the scene of a training variation and let the expert act for ``t0`` control steps
   (``t0`` uniform in ``[0, prefix_max]``, not recorded), so segments start from the states
   demonstrations visit — the arm above the drawer, the window half open, …;
2. then act for ``steps`` control steps with a piecewise-constant action process: every
   hold of 1..``max_hold`` steps draws one mode —

   - ``zero`` (probability ``p_zero``): the all-zero action; the arm should stay still;
   - ``random`` (``p_random``): uniform in ``[-1, 1]^D``, the whole action box;
   - ``expert`` (the rest): the expert's action for the current state plus
     N(0, ``expert_noise``²), re-asked at every step of the hold (a perturbed expert).

Frames and the *executed* actions (after clipping to [-1, 1]) are recorded, with
``actions[t]`` executed after ``frames[t]`` as in demonstrations. The episodes go into the
same HDF5 store, flagged ``kind="explore"`` so that only demonstrations feed the policy's
samples (:mod:`worldvla.data.datasets`). Everything is drawn from
``numpy.random.default_rng([seed, task_index, index, 1])``: the data is a function of the
seed whatever the number of worker processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from worldvla.errors import ConfigError

DEMO, EXPLORE = "demo", "explore"  # the episode kinds of a store (attrs["kind"])
KINDS = (DEMO, EXPLORE)


@dataclass(frozen=True)
class ExplorationConfig:
    """How many exploratory segments to collect and how their actions are drawn."""

    per_task: int = 0  # segments per task (0: none)
    steps: int = 20  # recorded control steps per segment
    prefix_max: int = 40  # the expert acts for t0 ~ U{0..prefix_max} steps first
    max_hold: int = 4  # each drawn action is held for 1..max_hold steps
    p_zero: float = 0.2
    p_random: float = 0.5
    expert_noise: float = 0.3

    def __post_init__(self) -> None:
        if self.per_task < 0 or self.steps < 2 or self.prefix_max < 0 or self.max_hold < 1:
            raise ConfigError(
                "exploration needs per_task >= 0, steps >= 2, prefix_max >= 0 and max_hold >= 1, got "
                f"{self.per_task}, {self.steps}, {self.prefix_max}, {self.max_hold}"
            )
        if not (self.p_zero >= 0 and self.p_random >= 0 and self.p_zero + self.p_random <= 1):
            raise ConfigError(
                f"exploration probabilities must be >= 0 with p_zero + p_random <= 1, got "
                f"{self.p_zero} and {self.p_random}"
            )
        if self.expert_noise < 0:
            raise ConfigError(f"exploration expert_noise must be >= 0, got {self.expert_noise}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ActionProcess:
    """The piecewise-constant exploratory action process of one segment (module docstring)."""

    def __init__(self, cfg: ExplorationConfig, rng: np.random.Generator, action_dim: int) -> None:
        self.cfg = cfg
        self.rng = rng
        self.dim = action_dim
        self.left = 0  # steps left in the current hold
        self.mode = "zero"
        self.value = np.zeros(action_dim, np.float32)

    def __call__(self, expert_action: np.ndarray) -> tuple[np.ndarray, str]:
        """The action to execute now (clipped to [-1, 1]) and the mode that drew it."""
        cfg, rng = self.cfg, self.rng
        if self.left == 0:
            self.left = int(rng.integers(1, cfg.max_hold + 1))
            u = rng.random()
            self.mode = "zero" if u < cfg.p_zero else "random" if u < cfg.p_zero + cfg.p_random else "expert"
            self.value = (
                rng.uniform(-1.0, 1.0, self.dim).astype(np.float32)
                if self.mode == "random"
                else np.zeros(self.dim, np.float32)
            )
        self.left -= 1
        if self.mode == "expert":
            a = np.asarray(expert_action, np.float32) + rng.normal(0.0, cfg.expert_noise, self.dim)
            return np.clip(a, -1.0, 1.0).astype(np.float32), self.mode
        return self.value.copy(), self.mode


def segment_rng(seed: int, task_index: int, index: int) -> np.random.Generator:
    """The generator of exploratory segment ``index`` of task ``task_index`` (never a demo's)."""
    return np.random.default_rng([seed, task_index, index, 1])
