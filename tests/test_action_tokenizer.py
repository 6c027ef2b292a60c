import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from worldvla.errors import DataError
from worldvla.tokenizers.action import ActionStats, ActionTokenizer


def _tok(low, high, n_bins=256):
    return ActionTokenizer(ActionStats(low=tuple(low), high=tuple(high)), n_bins=n_bins)


@settings(max_examples=200, deadline=None)
@given(
    low=arrays(np.float64, 4, elements=st.floats(-10, 0)),
    width=arrays(np.float64, 4, elements=st.floats(1e-3, 10)),
    u=arrays(np.float64, (5, 4), elements=st.floats(0, 1)),
    n_bins=st.sampled_from([2, 16, 255, 256]),
)
def test_round_trip_error_at_most_half_a_bin(low, width, u, n_bins):
    high = low + width
    tok = _tok(low, high, n_bins)
    actions = low + u * width  # in range, including both bounds
    bins = tok.encode(actions)
    assert bins.dtype == np.int64 and bins.min() >= 0 and bins.max() < n_bins
    decoded = tok.decode(bins)  # float32: allow its rounding on top of the half-bin bound
    f32 = 4 * np.finfo(np.float32).eps * (np.abs(low) + np.abs(high))
    err_units = np.abs(decoded - actions)
    assert (err_units <= width / (2 * n_bins) + f32 + 1e-12).all()
    err_norm = np.abs(tok.normalize(decoded) - tok.normalize(actions))
    assert (err_norm <= 1.0 / n_bins + 2 * f32 / width + 1e-9).all()


def test_bin_edges_and_centres():
    tok = _tok([-1.0], [1.0], n_bins=4)  # identity normalization; bins of width 0.5
    x = np.array([[-1.0], [-0.5], [-1e-9], [0.0], [0.999], [1.0]])
    assert tok.encode(x)[:, 0].tolist() == [0, 1, 1, 2, 3, 3]  # left edge inclusive, +1 in last bin
    assert tok.decode(np.arange(4)[:, None])[:, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]


def test_out_of_range_values_are_clipped():
    tok = _tok([0.0, 0.0], [1.0, 1.0])
    bins = tok.encode(np.array([[-5.0, 7.0]]))
    assert bins.tolist() == [[0, 255]]


def test_constant_dimension_round_trips_exactly():
    stats = ActionStats.from_actions(np.array([[0.1, 2.0], [0.5, 2.0], [0.3, 2.0]]))
    tok = ActionTokenizer(stats)
    out = tok.decode(tok.encode(np.array([[0.3, 2.0]])))
    assert out[0, 1] == pytest.approx(2.0)


def test_stats_modes_and_persistence(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1000, 3))
    mm = ActionStats.from_actions(a, "minmax")
    pc = ActionStats.from_actions(a, "percentile")
    assert np.allclose(mm.low, a.min(0))
    assert np.allclose(
        pc.high, np.percentile(a, 99, axis=0, method="lower")
    )  # a data value, never interpolated
    assert all(p > m for p, m in zip(pc.low, mm.low))
    pc.save(tmp_path / "stats.json")
    assert ActionStats.load(tmp_path / "stats.json") == pc


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_rejected(bad):
    tok = _tok([0, 0], [1, 1])
    with pytest.raises(DataError, match="NaN or inf"):
        tok.encode(np.array([[0.5, bad]]))
    with pytest.raises(DataError, match="action row 0: action dimension 1 is .*not finite"):
        ActionStats.from_actions(np.array([[0.5, bad]]))


def test_wrong_action_dimension_rejected():
    tok = _tok([0, 0, 0], [1, 1, 1])
    with pytest.raises(DataError, match="last dimension 3"):
        tok.encode(np.zeros((2, 7)))
    with pytest.raises(DataError, match="last dimension 3"):
        tok.decode(np.zeros((2, 4), dtype=np.int64))


def test_missing_or_malformed_stats_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ActionStats.load(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text('{"low": [0, 1]}')
    with pytest.raises(DataError, match=str(p.name)):
        ActionStats.load(p)
