import numpy as np
import pytest

from worldvla.sequence import (
    PromptConfig,
    action_bins_from_ids,
    action_ids,
    build_action_sample,
    build_world_sample,
    frame_codes,
    frame_ids,
    frame_length,
)
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import Vocab, VocabConfig

V = Vocab.build(VocabConfig(image_codes=64))
T = ByteTokenizer()


def test_frame_layout_matches_spec():
    codes = np.arange(12).reshape(3, 4)
    ids = frame_ids(V, codes)
    assert len(ids) == frame_length(3, 4) == 4 + 3 * 5
    assert ids[0] == V.boi and ids[1] == V.grid_id(3) and ids[2] == V.grid_id(4) and ids[-1] == V.eoi
    rows = ids[3:-1].reshape(3, 5)
    assert (rows[:, -1] == V.row_sep).all()
    assert np.array_equal(V.image_codes_of(rows[:, :-1]), codes)
    assert np.array_equal(frame_codes(V, ids, 3, 4), codes)
    assert frame_length(16, 16) == 276  # SPEC §2: 256x256 frame with 16x16 codes


def test_frame_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="image codes"):
        frame_ids(V, np.full((2, 2), V.image_codes))


def test_action_chunk_round_trip():
    bins = np.random.default_rng(0).integers(0, 256, size=(5, 7))
    ids = action_ids(V, bins)
    assert len(ids) == 5 * 9 and ids[0] == V.boa and ids[8] == V.eoa
    assert np.array_equal(action_bins_from_ids(V, ids, 7), bins)


def test_action_sample_layout_and_weights():
    frames = [np.zeros((2, 2), int), np.ones((2, 2), int)]
    chunk = np.full((3, 4), 7)
    s = build_action_sample(V, T, "open the drawer", frames, chunk)
    prompt = PromptConfig().action_prompt.format(instruction="open the drawer")
    n_ctx = 1 + len(prompt.encode()) + 2 * frame_length(2, 2) + 1
    assert s.ids[0] == V.bos and s.ids[n_ctx - 1] == V.sep
    assert (s.weights[:n_ctx] == 0).all()
    target = s.ids[n_ctx:]
    assert np.array_equal(target[:-1], action_ids(V, chunk)) and target[-1] == V.sep
    assert (s.weights[n_ctx:] == 1).all()  # no image code among action targets


def test_world_sample_weighs_every_target_one():
    """α is the loss's (worldvla.train.loss): a sample weighs its image codes like any target."""
    s = build_world_sample(V, T, np.zeros((2, 2), int), np.full(4, 3), np.zeros((2, 2), int))
    target_start = len(s) - frame_length(2, 2) - 1
    assert s.ids[target_start - 1] == V.sep and s.ids[target_start] == V.boi and s.ids[-1] == V.sep
    assert (s.weights[:target_start] == 0).all()
    tw = s.weights[target_start:]
    is_code = V.is_image_code(s.ids[target_start:])
    assert is_code.sum() == 4
    assert (tw == 1).all()


def test_world_sample_weighs_changed_codes_more():
    frame = np.array([[1, 2], [3, 4]])
    nxt = np.array([[1, 9], [3, 8]])  # codes (0, 1) and (1, 1) change
    s = build_world_sample(V, T, frame, np.full(4, 3), nxt, changed_weight=5.0)
    target_start = len(s) - frame_length(2, 2) - 1
    is_code = V.is_image_code(s.ids[target_start:])
    codes_w = s.weights[target_start:][is_code]  # in grid order
    assert np.array_equal(codes_w, [1, 5, 1, 5])
    assert (s.weights[target_start:][~is_code] == 1).all()  # structure tokens keep weight 1
    plain = build_world_sample(V, T, frame, np.full(4, 3), nxt)
    assert np.array_equal(plain.ids, s.ids)
    assert (plain.weights[target_start:] == 1).all()


def test_prompt_config_needs_instruction_slot():
    with pytest.raises(ValueError):
        PromptConfig(action_prompt="do something")
