"""Action tokenizer: per-dimension normalization -> uniform bins, and back (SPEC §2).

Contract (``n`` = number of bins, default 256; all arithmetic per dimension ``d``):

1. **Normalize** with statistics computed from training data (:class:`ActionStats`):
   ``x = 2 * (a - low[d]) / (high[d] - low[d]) - 1``, then clip to ``[-1, 1]``.
   ``low``/``high`` are the min/max (``mode="minmax"``) or the 1st/99th percentiles
   (``mode="percentile"``; the nearest data values inside those ranks) of the training
   actions. A dimension whose range is (near) zero
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

**Statistics** (:meth:`ActionStats.from_episodes`). The default is ``minmax``: the robot
action spaces this project trains on (LIBERO, Meta-World) are bounded boxes, so min/max
gives every bin to actions that occur, while the 1st/99th percentiles (``percentile``,
openpi's choice) clip the largest 1% of the motions in every dimension; the checkpoints and
the numbers in the docs were made with ``minmax``. Min/max has one weakness: a single bad
value stretches the range, e.g. one ``1e30`` puts every real action into one bin. So the
statistics are checked: a non-finite action is refused (:class:`DataError` naming the
episode and step), and in ``minmax`` mode a value that lies more than
:data:`OUTLIER_FACTOR` robust ranges (``p99 - p1``, at least :data:`_MIN_ROBUST_SPAN`)
outside ``[p1, p99]`` raises an :class:`ActionOutlierWarning` (data sets of at least
:data:`_MIN_CHECKED` actions) that names the dimension, the
episode and the step, how many bins the central 98% of the actions keep, and the fix (clean
the episode, or ``--stats-mode percentile``). Saved statistics keep their meaning: a stats
file is read as written, whatever the default.

Token ids are *not* produced here: bins are in ``[0, n)`` and :meth:`Vocab.action_ids`
maps them to ids. The statistics are an asset saved next to every checkpoint
(``action_stats.json``), never constants in code (STYLE §8).
"""

from __future__ import annotations

import json
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from worldvla.errors import ConfigError, DataError
from worldvla.utils.io import atomic_write_text

StatsMode = Literal["minmax", "percentile"]
Grid = Literal["uniform", "reference"]
_MIN_SPAN = 1e-8
_REFERENCE_EPS = 1e-8  # the reference adds it to every range (its item_processor.norm_action)
# A minmax value this many robust ranges (p99 - p1) beyond [p1, p99] leaves the central 98%
# of the actions at most 1/5 of the bins (51 of 256); the extremes of 100k Laplace samples, a
# heavy-tailed but genuine distribution, lie about 0.9 robust ranges beyond.
OUTLIER_FACTOR = 4.0
_MIN_ROBUST_SPAN = 1e-3  # action units: the robust range of a dimension that barely moves
_MIN_CHECKED = 20  # fewer actions cannot tell an outlier from the data

# How the policy reads an action bin out of the model's distribution over the bins of a
# dimension: "argmax" takes the most likely bin (greedy, the reference), "mean" the bin
# nearest to the expected one — the bins are uniform, so that is the expected action within
# half a bin (worldvla.model.generation decodes both). The one list of the allowed values.
Readout = Literal["argmax", "mean"]
READOUTS: tuple[str, ...] = typing.get_args(Readout)


def check_readout(readout: str) -> str:
    """``readout`` if it is one of :data:`READOUTS`, else ConfigError."""
    if readout not in READOUTS:
        raise ConfigError(f"action readout must be one of {READOUTS}, got {readout!r}")
    return readout


class ActionOutlierWarning(UserWarning):
    """Min/max action statistics stretched by values far outside the bulk of the data."""


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
        """Bounds from an ``(N, D)`` array of training actions (rows named by index in messages)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise DataError(f"action statistics need a non-empty (N, D) array, got shape {a.shape}")
        return cls.from_episodes([(None, a)], mode=mode)

    @classmethod
    def from_episodes(
        cls, episodes: Sequence[tuple[str | None, np.ndarray]], mode: StatsMode = "minmax"
    ) -> ActionStats:
        """Bounds from ``(episode key, (T, D) actions)`` pairs; see the module docstring.

        Refuses non-finite actions and mismatched dimensions (:class:`DataError` naming the
        episode); in ``minmax`` mode warns (:class:`ActionOutlierWarning`) about outliers.
        """
        if mode not in ("minmax", "percentile"):
            raise ValueError(f"unknown statistics mode {mode!r} (use 'minmax' or 'percentile')")
        parts, dim = [], None
        for key, acts in episodes:
            x = np.asarray(acts, dtype=np.float64)
            if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
                want = f"(T, {dim})" if dim is not None else "(T, D)"
                raise DataError(f"{_where(key)}: actions must be {want}, got shape {x.shape}")
            dim = x.shape[1]
            bad = ~np.isfinite(x)
            if bad.any():
                t, d = np.argwhere(bad)[0]
                raise DataError(
                    f"{_where(key, t)}: action dimension {d} is {x[t, d]}, not finite; "
                    "fix or drop it before computing action statistics"
                )
            parts.append(x)
        a = np.concatenate(parts) if parts else np.zeros((0, 0))
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"action statistics need at least one action, got shape {a.shape}")
        # Inner order statistics, never interpolated toward an extreme value: with fewer than
        # ~100 actions a linearly interpolated p99 would move with a single outlier.
        p1 = np.percentile(a, 1, axis=0, method="higher")
        p99 = np.percentile(a, 99, axis=0, method="lower")
        if mode == "percentile":
            lo, hi = p1, p99
        else:
            lo, hi = a.min(axis=0), a.max(axis=0)
            _warn_outliers(a, [k for k, _ in episodes], [len(x) for x in parts], lo, hi, p1, p99)
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


def _where(key: str | None, step: int | None = None) -> str:
    if key is None:
        return "actions" if step is None else f"action row {step}"
    return f"episode {key!r}" if step is None else f"episode {key!r} at step {step}"


def _warn_outliers(
    a: np.ndarray,
    keys: Sequence[str],
    lengths: Sequence[int],
    lo: np.ndarray,
    hi: np.ndarray,
    p1: np.ndarray,
    p99: np.ndarray,
) -> None:
    """Warn, per dimension, about values far outside ``[p1, p99]`` (module docstring)."""
    if len(a) < _MIN_CHECKED:
        return
    span = np.maximum(p99 - p1, _MIN_ROBUST_SPAN)
    far = (a < p1 - OUTLIER_FACTOR * span) | (a > p99 + OUTLIER_FACTOR * span)  # (N, D)
    if not far.any():
        return
    starts = np.cumsum([0, *lengths])
    for d in np.nonzero(far.any(axis=0))[0]:
        rows = np.nonzero(far[:, d])[0]
        worst = rows[np.argmax(np.abs(a[rows, d] - (p1[d] + p99[d]) / 2))]
        ep = int(np.searchsorted(starts, worst, side="right")) - 1
        share = 100 * (p99[d] - p1[d]) / max(hi[d] - lo[d], _MIN_SPAN)
        where = _where(keys[ep], int(worst - starts[ep]))
        warnings.warn(
            f"action dimension {d}: {len(rows)} value(s) lie far outside the central 98% of the data "
            f"[{p1[d]:.4g}, {p99[d]:.4g}], e.g. {a[worst, d]:.4g} ({where}); min/max bounds "
            f"[{lo[d]:.4g}, {hi[d]:.4g}] squeeze that 98% into {share:.2g}% of the bins. "
            "Fix or drop the episode, or use --stats-mode percentile",
            ActionOutlierWarning,
            stacklevel=3,
        )


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
