"""Action tokenizer: per-dimension normalization -> uniform bins, and back (SPEC §2).

Contract (``n`` = number of bins, default 256; all arithmetic per dimension ``d``):

1. **Normalize** with statistics computed from training data (:class:`ActionStats`):
   ``x = 2 * (a - low[d]) / (high[d] - low[d]) - 1``, then clip to ``[-1, 1]``.
   ``low``/``high`` are the min/max (``mode="minmax"``) or the 1st/99th percentiles
   (``mode="percentile"``) of the training actions. A dimension whose range is (near) zero
   (e.g. a gripper that never moves) normalizes to ``-1`` and decodes back to ``low``
   exactly.
2. **Bin**: the interval ``[-1, 1]`` is cut into ``n`` equal bins of width ``w = 2 / n``.
   Bin ``b`` covers ``[-1 + b*w, -1 + (b+1)*w)``; the last bin also includes ``+1``.
   ``b = min(floor((x + 1) / w), n - 1)``.
3. **Decode** returns the bin centre ``c_b = -1 + (b + 0.5) * w`` and de-normalizes it:
   ``a = (c_b + 1) / 2 * (high - low) + low``.

The reference grid (``ActionStats.grid = "reference"``, what the released WorldVLA
checkpoints were trained with) differs in two details, reproduced exactly for them:
normalization divides by ``high - low + 1e-8``, and the bins are ``np.digitize`` against
``np.linspace(-1, 1, n)``, i.e. ``n - 1`` intervals of width ``2 / (n - 1)``: bin ``b``
covers ``[-1 + b*w, -1 + (b+1)*w)`` and the last bin ``n - 1`` holds only ``+1``. Decoding
returns the centre of interval ``min(b, n - 2)``.

So for an in-range value the round-trip error is at most half a bin: ``|x - c_b| <= w / 2 =
1 / n`` in normalized units (1/256 with 256 bins; SPEC §2 quotes 1/255 for the reference's
slightly different grid), i.e. ``(high - low) / (2 n)`` in action units. Out-of-range
values are clipped first, so they decode to the centre of the first/last bin.

Token ids are *not* produced here: bins are in ``[0, n)`` and :meth:`Vocab.action_ids`
maps them to ids. The statistics are an asset saved next to every checkpoint
(``action_stats.json``), never constants in code (STYLE §8).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from worldvla.errors import DataError
from worldvla.utils.io import atomic_write_text

StatsMode = Literal["minmax", "percentile"]
Grid = Literal["uniform", "reference"]
_MIN_SPAN = 1e-8
_REFERENCE_EPS = 1e-8  # the reference adds it to every range (its item_processor.norm_action)


@dataclass(frozen=True)
class ActionStats:
    """Per-dimension normalization bounds of the training actions."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    mode: StatsMode = "minmax"
    count: int = 0  # number of action vectors the bounds were computed from
    grid: Grid = "uniform"  # bin grid (module docstring); "reference" for converted checkpoints

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(
                f"ActionStats: low/high must be non-empty and of equal length, got "
                f"{len(self.low)} and {len(self.high)}"
            )
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("ActionStats: bounds must be finite")
        if (hi < lo).any():
            raise ValueError(f"ActionStats: high < low in dimensions {np.nonzero(hi < lo)[0].tolist()}")
        if self.mode not in ("minmax", "percentile"):
            raise ValueError(f"ActionStats: unknown mode {self.mode!r} (use 'minmax' or 'percentile')")
        if self.grid not in ("uniform", "reference"):
            raise ValueError(f"ActionStats: unknown grid {self.grid!r} (use 'uniform' or 'reference')")

    @property
    def dim(self) -> int:
        return len(self.low)

    @classmethod
    def from_actions(cls, actions: np.ndarray, mode: StatsMode = "minmax") -> ActionStats:
        """Bounds from an ``(N, D)`` array of training actions."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise DataError(f"action statistics need a non-empty (N, D) array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise DataError("action statistics: the actions contain NaN or inf")
        if mode == "minmax":
            lo, hi = a.min(axis=0), a.max(axis=0)
        elif mode == "percentile":
            lo, hi = np.percentile(a, 1, axis=0), np.percentile(a, 99, axis=0)
        else:
            raise ValueError(f"unknown statistics mode {mode!r} (use 'minmax' or 'percentile')")
        return cls(low=tuple(map(float, lo)), high=tuple(map(float, hi)), mode=mode, count=int(a.shape[0]))

    def to_dict(self) -> dict:
        d = {"low": list(self.low), "high": list(self.high), "mode": self.mode, "count": self.count}
        if self.grid != "uniform":  # files of the default grid stay as they were
            d["grid"] = self.grid
        return d

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ActionStats:
        path = Path(path)
        if not path.exists():
            raise DataError(
                f"{path}: action normalization statistics not found (they are written by "
                "'worldvla tokenize' and saved with every checkpoint)"
            )
        try:
            d = json.loads(path.read_text())
            return cls(
                low=tuple(d["low"]),
                high=tuple(d["high"]),
                mode=d.get("mode", "minmax"),
                count=int(d.get("count", 0)),
                grid=d.get("grid", "uniform"),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: invalid action statistics: {e}") from e


class ActionTokenizer:
    """Continuous actions <-> bins in ``[0, n_bins)``. See the module docstring for the contract."""

    def __init__(self, stats: ActionStats, n_bins: int = 256) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.stats = stats
        self.n_bins = n_bins
        self._low = np.asarray(stats.low, dtype=np.float64)
        span = np.asarray(stats.high, dtype=np.float64) - self._low
        self._reference = stats.grid == "reference"
        if self._reference:  # the reference's formula, constant dimensions included
            self._span, self._constant = span + _REFERENCE_EPS, np.zeros_like(span, dtype=bool)
            self._edges = np.linspace(-1.0, 1.0, n_bins)
            self._centres = (self._edges[:-1] + self._edges[1:]) / 2.0
            return
        # A constant dimension has no range to normalize by; use 1 so it decodes to `low`.
        self._span = np.where(span < _MIN_SPAN, 1.0, span)
        self._constant = span < _MIN_SPAN

    @property
    def action_dim(self) -> int:
        return self.stats.dim

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalized units (``2 / n_bins``; reference grid ``2 / (n_bins - 1)``)."""
        return 2.0 / (self.n_bins - 1) if self._reference else 2.0 / self.n_bins

    def _check(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] != self.action_dim:
            raise DataError(f"expected actions with last dimension {self.action_dim}, got shape {a.shape}")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise DataError(f"actions contain NaN or inf (first at index {bad})")
        return a

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Actions -> ``[-1, 1]`` (clipped)."""
        a = self._check(actions)
        x = 2.0 * (a - self._low) / self._span - 1.0
        x = np.where(self._constant, -1.0, x)
        return np.clip(x, -1.0, 1.0)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        a = (x + 1.0) / 2.0 * self._span + self._low
        return np.where(self._constant, self._low, a).astype(np.float32)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """``(..., D)`` float actions -> ``(..., D)`` int64 bins in ``[0, n_bins)``."""
        x = self.normalize(actions)
        if self._reference:
            return (np.digitize(x, self._edges) - 1).astype(np.int64)  # x in [-1, 1]: [0, n)
        b = np.floor((x + 1.0) / self.bin_width).astype(np.int64)
        return np.clip(b, 0, self.n_bins - 1)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """``(..., D)`` bins -> ``(..., D)`` float32 actions at the bin centres."""
        b = np.asarray(bins)
        if b.ndim == 0 or b.shape[-1] != self.action_dim:
            raise DataError(f"expected bins with last dimension {self.action_dim}, got shape {b.shape}")
        if b.size and (b.min() < 0 or b.max() >= self.n_bins):
            raise DataError(f"bins must lie in [0, {self.n_bins}), got [{b.min()}, {b.max()}]")
        if self._reference:
            return self.denormalize(self._centres[np.minimum(b, self.n_bins - 2)])
        centres = -1.0 + (b.astype(np.float64) + 0.5) * self.bin_width
        return self.denormalize(centres)
