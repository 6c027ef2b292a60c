"""Action-model / world-model samples over a token cache and the mixed, resumable stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldvla.data.datasets import (
    ACTION,
    WORLD,
    ActionSamples,
    DataLayout,
    InMemoryCache,
    MixedStream,
    WorldSamples,
    collate,
    encode_actions,
    split_episodes,
)
from worldvla.errors import DataError
from worldvla.sequence import build_action_sample, build_world_sample
from worldvla.tokenizers.action import ActionStats, ActionTokenizer
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.vocab import Vocab, VocabConfig

M, K = 2, 3


@pytest.fixture(scope="module")
def setup():
    cache = InMemoryCache.synthetic(n_episodes=4, length=7, grid=(3, 3), action_dim=2, codebook_size=32)
    vocab = Vocab.build(VocabConfig(image_codes=32))
    tok = ByteTokenizer()
    bins = encode_actions(cache.actions, ActionTokenizer(ActionStats.from_actions(cache.actions)))
    layout = DataLayout(action_dim=2, grid=(3, 3), history=M, chunk_len=K)
    args = (cache, [0, 1, 2, 3], layout, vocab, tok, bins)
    return cache, vocab, tok, bins, ActionSamples(*args), WorldSamples(*args)


def test_action_samples_repeat_first_frame_and_drop_short_chunks(setup):
    cache, vocab, tok, bins, action, _ = setup
    assert len(action) == 4 * (7 - K + 1)  # steps with fewer than K future actions are dropped
    per_ep = 7 - K + 1
    # Episode 1, step 0: history is the first frame twice; chunk = actions 0..K-1.
    start = cache.episodes[1].start
    s = action[per_ep]
    want = build_action_sample(
        vocab,
        tok,
        cache.episodes[1].instruction,
        [cache.codes[start], cache.codes[start]],
        bins[start : start + K],
    )
    np.testing.assert_array_equal(s.ids, want.ids)
    np.testing.assert_array_equal(s.weights, want.weights)
    # Last sample of episode 1: frames t-1, t and the chunk ending exactly at the episode end.
    t = start + per_ep - 1
    s = action[2 * per_ep - 1]
    want = build_action_sample(
        vocab, tok, cache.episodes[1].instruction, [cache.codes[t - 1], cache.codes[t]], bins[t : t + K]
    )
    np.testing.assert_array_equal(s.ids, want.ids)
    assert t + K == start + 7


def test_world_samples_pair_consecutive_frames(setup):
    cache, vocab, tok, bins, _, world = setup
    assert len(world) == 4 * 6
    g = cache.episodes[2].start + 5  # last pair of episode 2
    s = world[2 * 6 + 5]
    want = build_world_sample(vocab, tok, cache.codes[g], bins[g], cache.codes[g + 1])
    np.testing.assert_array_equal(s.ids, want.ids)
    np.testing.assert_array_equal(s.weights, want.weights)


def test_world_samples_with_a_horizon_span_every_k_that_fits(setup):
    cache, vocab, tok, bins, _, _ = setup
    layout = DataLayout(action_dim=2, grid=(3, 3), history=M, chunk_len=K, world_horizon=3)
    world = WorldSamples(cache, [0, 1, 2, 3], layout, vocab, tok, bins)
    assert len(world) == 4 * (6 + 5 + 4)  # (t, k) with t + k <= 6 in episodes of 7 frames
    assert sorted(set(world.span.tolist())) == [1, 2, 3]
    for i in range(len(world)):  # every sample: IMG(t), ACT(t..t+k-1) -> IMG(t+k), inside its episode
        g, k = int(world.frame[i]), int(world.span[i])
        ep = cache.episodes[int(world.episode[i])]
        assert ep.start <= g and g + k <= ep.start + ep.length - 1
    i = int(np.flatnonzero(world.span == 3)[0])
    g = int(world.frame[i])
    want = build_world_sample(vocab, tok, cache.codes[g], bins[g : g + 3], cache.codes[g + 3])
    np.testing.assert_array_equal(world[i].ids, want.ids)
    # One action block for the span: BOA, 3·D bins, EOA.
    ids = world[i].ids
    assert (ids == vocab.boa).sum() == 1 and (ids == vocab.eoa).sum() == 1
    assert vocab.is_action_bin(ids).sum() == 3 * 2
    prompt = len(tok.encode(layout.prompts.world_prompt))
    assert layout.world_sample_length(prompt) == len(world[i]) and len(world[0]) < len(world[i])
    # One-step samples repeated to about half of the set: 24 of 15 · 4 become 24 · 2 of 84.
    half = WorldSamples(cache, [0, 1, 2, 3], layout, vocab, tok, bins, one_step_share=0.5)
    assert (half.span == 1).sum() == 2 * 24 and len(half) == 2 * 24 + 4 * (5 + 4)
    np.testing.assert_array_equal(half[0].ids, world[0].ids)
    old = {k: v for k, v in layout.to_dict().items() if k != "world_horizon"}
    assert DataLayout.from_dict(old).world_horizon == 1  # layouts saved before the option


def test_mixed_stream_ratio_epochs_and_determinism(setup):
    *_, action, world = setup
    stream = MixedStream(action, world, world_fraction=0.5, seed=3)
    kinds = [stream.locate(p)[0] for p in range(40)]
    assert kinds == [ACTION, WORLD] * 20  # 1:1, every batch the same mixture
    third = MixedStream(action, world, world_fraction=0.25, seed=3)
    assert sum(third.locate(p)[0] == WORLD for p in range(400)) == 100
    # Each epoch of a kind visits every sample exactly once.
    n = len(action)
    firsts = [stream.locate(p)[1] for p in range(0, 4 * n, 2)]  # action positions: 2 epochs
    assert sorted(firsts[:n]) == list(range(n)) and sorted(firsts[n:]) == list(range(n))
    assert firsts[:n] != firsts[n:]  # a new permutation per epoch
    # A fresh stream (as after resuming) reproduces any position; another seed does not.
    again = MixedStream(action, world, world_fraction=0.5, seed=3)
    assert [again.locate(p) for p in range(123, 140)] == [stream.locate(p) for p in range(123, 140)]
    other = MixedStream(action, world, world_fraction=0.5, seed=4)
    assert [other.locate(p) for p in range(40)] != [stream.locate(p) for p in range(40)]


def test_single_kind_streams(setup):
    *_, action, world = setup
    only_action = MixedStream(action, None, world_fraction=0.0, seed=0)
    assert {only_action.locate(p)[0] for p in range(50)} == {ACTION}
    only_world = MixedStream(None, world, world_fraction=1.0, seed=0)
    assert {only_world.locate(p)[0] for p in range(50)} == {WORLD}
    with pytest.raises(DataError):
        MixedStream(None, world, world_fraction=0.5, seed=0)


def test_collate_pads_with_pad_and_zero_weight(setup):
    _, vocab, *_, action, world = setup
    samples = [action[0], world[0], action[5]]
    batch = collate(samples, [ACTION, WORLD, ACTION], vocab)
    assert batch.ids.shape[1] % 8 == 0 and batch.ids.shape[1] >= max(map(len, samples))
    for b, s in enumerate(samples):
        assert torch.equal(batch.ids[b, : len(s)], torch.from_numpy(s.ids))
        assert (batch.ids[b, len(s) :] == vocab.pad).all()
        assert (batch.weights[b, len(s) :] == 0).all()
    assert batch.is_world.tolist() == [False, True, False]
    assert batch.n_tokens == sum(map(len, samples))


def test_split_is_deterministic_disjoint_and_nonempty():
    train, val = split_episodes(20, 0.1, seed=0)
    assert len(val) == 2 and len(train) == 18
    assert set(train) | set(val) == set(range(20)) and not set(train) & set(val)
    t2, v2 = split_episodes(20, 0.1, seed=0)
    assert np.array_equal(val, v2) and np.array_equal(train, t2)
    assert not np.array_equal(split_episodes(20, 0.1, seed=1)[1], val)
    assert len(split_episodes(3, 0.01, seed=0)[1]) == 1  # a positive fraction holds out at least one
    assert len(split_episodes(1, 0.5, seed=0)[0]) == 1  # never everything
    assert len(split_episodes(10, 0.0, seed=0)[1]) == 0


def test_layout_lengths_match_samples(setup):
    _, _, tok, _, action, world = setup
    layout = action.layout
    prompt = len(tok.encode(layout.prompts.action_prompt.format(instruction=action.instructions[0])))
    assert layout.action_sample_length(prompt) == len(action[0])
    assert layout.world_sample_length(len(tok.encode(layout.prompts.world_prompt))) == len(world[0])
    assert DataLayout.from_dict(layout.to_dict()) == layout


def test_the_training_config_weighs_changed_world_codes_and_leaves_alpha_to_the_loss():
    """``world_changed_weight`` reaches the world-model samples through the data assembly; α
    (``image_weight``) does not: it is the loss's (worldvla.train.loss)."""
    from dataclasses import replace

    from worldvla.train.config import train_preset
    from worldvla.train.data import build_data

    cache = InMemoryCache.synthetic(n_episodes=4, length=6, grid=(2, 2), codebook_size=32)
    cache.codes[:, 0, 0] = 0  # a code that never changes; the others drift every step
    cfg = replace(train_preset("debug"), world_changed_weight=3.0, image_weight=0.5)
    world = build_data(cfg, cache, 4096).train.sets[WORLD]
    s = world[0]
    codes = s.weights[world.vocab.is_image_code(s.ids) & (s.weights > 0)]  # the target frame's, in grid order
    assert codes.tolist() == [1.0, 3.0, 3.0, 3.0]
    assert set(s.weights[s.weights > 0].tolist()) == {1.0, 3.0}
