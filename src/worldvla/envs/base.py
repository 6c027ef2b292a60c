"""The environment interface every simulator adapter implements (Meta-World, LIBERO, …).

Small on purpose: evaluation, demonstration collection and the policy server only need
to reset to a (task, variation), step an action and read camera frames and a success flag.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Observation:
    images: dict[str, np.ndarray]  # camera -> uint8 (H, W, 3), upright
    instruction: str
    # Proprioceptive state, float32 (S,) (Meta-World: hand xyz + gripper opening); None
    # where the adapter does not provide one.
    state: np.ndarray | None = None


class Env(ABC):
    action_dim: int  # D of the action vector the env accepts
    control_hz: float  # policy steps per simulated second
    max_steps: int  # episode step limit
    cameras: tuple[str, ...]  # cameras rendered into every observation
    camera: str  # the primary camera (the one policies see by default)

    @abstractmethod
    def reset(self, task: str, variation: int) -> Observation:
        """Start an episode of ``task`` in its seeded ``variation`` (object/goal placement)."""

    @abstractmethod
    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        """Apply one ``(action_dim,)`` action; return the new observation and the success flag."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release simulator and renderer resources."""
