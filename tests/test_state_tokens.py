"""Proprioceptive-state tokens: vocabulary, tokenizer, state block and sample layout."""

import numpy as np
import pytest

from worldvla.errors import DataError
from worldvla.sequence import (
    action_prompt_ids,
    build_action_sample,
    frame_length,
    state_bins_from_ids,
    state_ids,
    state_length,
)
from worldvla.tokenizers.state import StateTokenizer, state_stats_from_episodes
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import STATE_FIELDS, Vocab, VocabConfig

T = ByteTokenizer()


# ---------------------------------------------------------------------------- vocabulary
def test_vocabularies_without_state_tokens_are_unchanged():
    """Golden fingerprints of layouts that existing checkpoints and caches record: the state
    tokens must not move an id, add a key to vocab.json or change a fingerprint."""
    assert Vocab.build().fingerprint() == "43674946606bc93f"
    assert Vocab.chameleon_reference().fingerprint() == "11b33e821b7da8e8"
    assert Vocab.build(VocabConfig(text_size=300, image_codes=64)).fingerprint() == "36a7a7653c926716"
    d = Vocab.build().to_dict()
    assert not set(STATE_FIELDS) & set(d)
    assert Vocab.from_dict(d) == Vocab.build()  # a vocab.json written before state tokens loads


def test_state_tokens_are_appended_after_every_other_id():
    plain = Vocab.build(VocabConfig(image_codes=64, action_bins=32))
    v = Vocab.build(VocabConfig(image_codes=64, action_bins=32, state_bins=16))
    same = {k: x for k, x in plain.to_dict().items() if k != "size"}
    assert {k: x for k, x in v.to_dict().items() if k in same} == same
    top = plain.action_start + plain.action_bins
    assert (v.bos_state, v.eos_state, v.state_start) == (top, top + 1, top + 2)
    assert v.size >= v.state_start + 16 and v.size % 64 == 0
    assert v.fingerprint() != plain.fingerprint()
    assert Vocab.from_dict(v.to_dict()) == v
    bins = np.arange(16)
    assert np.array_equal(v.state_bins_of(v.state_ids(bins)), bins)
    ids = np.array([v.bos_state, v.state_ids(0), v.action_ids(0), v.eos_state])
    assert v.is_state_bin(ids).tolist() == [False, True, False, False]
    assert not v.is_action_bin(v.state_ids(bins)).any()


def test_state_fields_come_together_or_not_at_all():
    d = Vocab.build(VocabConfig(state_bins=8)).to_dict()
    del d["eos_state"]
    with pytest.raises(ValueError, match="missing"):
        Vocab.from_dict(d)
    with pytest.raises(ValueError, match="no state tokens"):
        Vocab.build().state_ids(0)
    with pytest.raises(ValueError, match="state_bins"):
        VocabConfig(state_bins=1)
    d = Vocab.build(VocabConfig(state_bins=8)).to_dict()
    d["bos_state"] = d["action_start"]
    with pytest.raises(ValueError, match="inside the action range"):
        Vocab.from_dict(d)


# ---------------------------------------------------------------------------- tokenizer
def test_state_tokenizer_round_trip_within_half_a_bin():
    rng = np.random.default_rng(0)
    states = rng.uniform([-0.5, 0.4, 0.0, 0.0], [0.5, 0.9, 0.3, 1.0], (200, 4)).astype(np.float32)
    stats = state_stats_from_episodes([("demo_0", states[:100]), ("demo_1", states[100:])])
    assert stats.count == 200 and stats.dim == 4
    tok = StateTokenizer(stats, n_bins=64)
    bins = tok.encode(states)
    assert bins.min() == 0 and bins.max() == 63
    half = (np.asarray(stats.high) - np.asarray(stats.low)) / (2 * 64)
    assert (np.abs(tok.decode(bins) - states) <= half + 1e-6).all()
    assert tok.encode(np.array([9.0, 9.0, 9.0, 9.0])).tolist() == [63] * 4  # clipped


def test_state_statistics_and_tokenizer_refuse_bad_states():
    bad = np.zeros((5, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match=r"episode 'demo_7' at step 2: state dimension 1"):
        state_stats_from_episodes([("demo_7", bad)])
    with pytest.raises(DataError, match="must be"):
        state_stats_from_episodes([("a", np.zeros((3, 2))), ("b", np.zeros((3, 3)))])
    tok = StateTokenizer(state_stats_from_episodes([(None, np.zeros((3, 2)))]), n_bins=8)
    with pytest.raises(DataError, match="last dimension 2"):
        tok.encode(np.zeros(3))
    with pytest.raises(DataError, match="NaN or inf"):
        tok.encode(np.array([0.0, np.inf]))


# ---------------------------------------------------------------------------- sequences
def test_state_block_round_trip():
    v = Vocab.build(VocabConfig(image_codes=32, state_bins=16))
    bins = np.array([0, 7, 15])
    ids = state_ids(v, bins)
    assert ids[0] == v.bos_state and ids[-1] == v.eos_state and len(ids) == state_length(3) == 5
    assert np.array_equal(state_bins_from_ids(v, ids), bins)
    assert state_length(0) == 0
    with pytest.raises(ValueError, match="no state tokens"):
        state_ids(Vocab.build(VocabConfig(image_codes=32)), bins)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        state_ids(v, np.array([16]))
    with pytest.raises(ValueError, match="framed"):
        state_bins_from_ids(v, ids[:-1])


def test_action_sample_with_state_puts_the_block_between_the_images_and_sep():
    v = Vocab.build(VocabConfig(image_codes=32, action_bins=16, state_bins=16))
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 32, (2, 3)) for _ in range(2)]
    chunk = rng.integers(0, 16, (3, 4))
    state = np.array([1, 2, 3, 4])
    plain = build_action_sample(v, T, "lift", frames, chunk)
    s = build_action_sample(v, T, "lift", frames, chunk, state_bins=state)
    n_state = state_length(4)
    assert len(s) == len(plain) + n_state
    prompt = action_prompt_ids(v, T, "lift", frames)
    # Prompt up to the last frame, then the state block, then SEP and the identical target.
    assert np.array_equal(s.ids[: len(prompt) - 1], prompt[:-1])
    block = s.ids[len(prompt) - 1 : len(prompt) - 1 + n_state]
    assert np.array_equal(state_bins_from_ids(v, block), state)
    assert s.ids[len(prompt) - 1 + n_state] == v.sep
    assert np.array_equal(s.ids[len(prompt) + n_state :], plain.ids[len(prompt) :])
    assert np.array_equal(s.weights[len(prompt) + n_state :], plain.weights[len(prompt) :])
    assert s.weights[: len(prompt) + n_state].sum() == 0
    assert frame_length(2, 3) * 2 < len(prompt)
