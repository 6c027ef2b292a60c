"""Proprioceptive-state tokenizer: each state dimension normalized and binned like an action.

The optional state input of the policy (RynnVLA-002 feeds it; LeRobot's Meta-World
environment provides it as ``agent_pos``: hand xyz + gripper opening) is discretized with
exactly the contract of :mod:`worldvla.tokenizers.action` — per-dimension bounds, clip to
``[-1, 1]``, ``n`` uniform bins, decode to the bin centre, round-trip error at most half a
bin — so the bounds travel in the same class and file format (:class:`ActionStats`, saved
as ``state_stats.json`` next to ``action_stats.json``: STYLE §8, never constants).

Bounds are the min/max of the *demonstrations'* states (the policy only sees states in
action-model samples, which come from demonstrations). A state outside them at inference
is clipped into the first/last bin, like an out-of-range action. Non-finite states are
refused with a :class:`DataError` naming the episode and step.

Token ids are not produced here: bins are in ``[0, n)`` and :meth:`Vocab.state_ids` maps
them to ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worldvla.errors import DataError
from worldvla.tokenizers.action import ActionStats, ActionTokenizer


def state_stats_from_episodes(episodes: Sequence[tuple[str | None, np.ndarray]]) -> ActionStats:
    """Min/max bounds from ``(episode key, (T, S) states)`` pairs (see the module docstring)."""
    parts, dim = [], None
    for key, states in episodes:
        x = np.asarray(states, dtype=np.float64)
        where = "states" if key is None else f"episode {key!r}"
        if x.ndim != 2 or x.shape[1] == 0 or (dim is not None and x.shape[1] != dim):
            want = f"(T, {dim})" if dim is not None else "(T, S)"
            raise DataError(f"{where}: states must be {want}, got shape {x.shape}")
        dim = x.shape[1]
        bad = ~np.isfinite(x)
        if bad.any():
            t, d = np.argwhere(bad)[0]
            raise DataError(f"{where} at step {t}: state dimension {d} is {x[t, d]}, not finite")
        parts.append(x)
    a = np.concatenate(parts) if parts else np.zeros((0, 0))
    if a.shape[0] == 0:
        raise DataError("state statistics need at least one state")
    return ActionStats(
        low=tuple(map(float, a.min(axis=0))),
        high=tuple(map(float, a.max(axis=0))),
        mode="minmax",
        count=int(a.shape[0]),
    )


class StateTokenizer(ActionTokenizer):
    """Continuous states <-> bins in ``[0, n_bins)`` (the action tokenizer's contract)."""

    @property
    def state_dim(self) -> int:
        return self.stats.dim

    def _check(self, states: np.ndarray) -> np.ndarray:
        try:
            a = np.asarray(states, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"a state must be numeric: {e}") from None
        if a.ndim == 0 or a.shape[-1] != self.state_dim:
            raise DataError(f"expected states with last dimension {self.state_dim}, got shape {a.shape}")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise DataError(f"states contain NaN or inf (first at index {bad})")
        return a
