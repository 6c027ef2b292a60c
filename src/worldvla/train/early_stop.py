"""Early stopping on the held-out loss of each sample kind a run trains.

A joint run is two models in one: its policy (action-model samples) and its world model
(world-model samples) may be best at different steps. :class:`EarlyStop` follows the
held-out loss of each kind the run trains — ``action_loss``, ``world_loss`` — on the fixed
validation set (the same samples at every validation), remembers the best value and its
step per kind, and says when every kind has gone ``patience`` validations in a row without
improving. The trainer writes the weights of each new best to ``run/best/<kind>``, so the
policy is evaluated at its best action loss and the world model at its best world loss.

Its state is part of every checkpoint's trainer state, so a resumed run stops where an
uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The sample kinds and the validation metric each is judged by (worldvla.train.loss.STAT_NAMES).
METRICS = {"action": "action_loss", "world": "world_loss"}
BEST_DIR = "best"  # run/best/<kind>: the best checkpoint of each kind


@dataclass
class EarlyStop:
    kinds: tuple[str, ...]  # keys of METRICS the run trains
    patience: int  # validations without improvement before a kind counts as converged
    best: dict[str, float] = field(default_factory=dict)
    best_step: dict[str, int] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)  # validations since the best

    def update(self, step: int, val: dict[str, float]) -> list[str]:
        """Record the validation of ``step``; returns the kinds that reached a new best."""
        improved = []
        for kind in self.kinds:
            value = val.get(METRICS[kind], math.nan)
            if not math.isfinite(value):
                continue
            if value < self.best.get(kind, math.inf):
                self.best[kind], self.best_step[kind], self.stale[kind] = value, step, 0
                improved.append(kind)
            else:
                self.stale[kind] = self.stale.get(kind, 0) + 1
        return improved

    @property
    def done(self) -> bool:
        """Every kind has gone ``patience`` validations without a new best."""
        return self.patience > 0 and all(self.stale.get(k, 0) >= self.patience for k in self.kinds)

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{kind: {"metric", "best", "step"}}`` for the kinds validated so far."""
        return {
            k: {"metric": METRICS[k], "best": self.best[k], "step": self.best_step[k]}
            for k in self.kinds
            if k in self.best
        }

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "best_step": dict(self.best_step), "stale": dict(self.stale)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.best = {k: float(v) for k, v in state.get("best", {}).items()}
        self.best_step = {k: int(v) for k, v in state.get("best_step", {}).items()}
        self.stale = {k: int(v) for k, v in state.get("stale", {}).items()}
