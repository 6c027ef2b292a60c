"""Null-action world samples and classifier-free guidance on the actions (docs/world_model.md)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from worldvla.artifacts.inference import InferenceDefaults
from worldvla.data.datasets import WORLD, InMemoryCache
from worldvla.data.streams import build_streams
from worldvla.errors import ConfigError
from worldvla.model.generation import generate_frame
from worldvla.sequence import world_prompt_ids
from worldvla.tokenizers.text import ByteTokenizer
from worldvla.train.checkpoint import load_for_inference
from worldvla.train.config import TRAIN_PRESETS, preset_inference, train_preset
from worldvla.train.data import stream_config
from worldvla.train.loop import train
from worldvla.vocab import Vocab, VocabConfig
from worldvla.world_model import WorldModel

# The runs below have no image tokenizer; these tests stay in code space.
NO_PIXELS = object()


def test_the_null_action_id_is_appended_and_changes_nothing_else():
    plain = Vocab.build(VocabConfig())
    null = Vocab.build(VocabConfig(null_action=True))
    assert not plain.has_null_action and "null_action" not in plain.to_dict()
    assert null.has_null_action and null.null_action == plain.action_start + plain.action_bins
    for field in ("bos", "eos", "boa", "eoa", "image_start", "action_start", "text_start"):
        assert getattr(null, field, None) == getattr(plain, field, None)
    assert Vocab.from_dict(null.to_dict()) == null and null.fingerprint() != plain.fingerprint()
    # after the state tokens when there are some: their ids stay put too
    state = Vocab.build(VocabConfig(state_bins=8))
    both = Vocab.build(VocabConfig(state_bins=8, null_action=True))
    assert both.state_start == state.state_start and both.null_action == state.state_start + 8
    with pytest.raises(ValueError, match="inside the image range"):
        replace(null, null_action=null.image_start)


def test_a_null_action_prompt_keeps_the_layout_and_hides_the_bins():
    vocab = Vocab.build(VocabConfig(null_action=True))
    text, frame = ByteTokenizer(), np.arange(16).reshape(4, 4)
    bins = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    given = world_prompt_ids(vocab, text, frame, bins)
    hidden = world_prompt_ids(vocab, text, frame, bins, null_actions=True)
    assert len(given) == len(hidden)
    differ = np.flatnonzero(given != hidden)
    assert len(differ) == bins.size and (hidden[differ] == vocab.null_action).all()
    assert vocab.is_action_bin(given[differ]).all()
    with pytest.raises(ValueError, match="no null-action id"):
        world_prompt_ids(Vocab.build(VocabConfig()), text, frame, bins, null_actions=True)


def _streams(dropout):
    cfg = replace(train_preset("debug"), world_action_dropout=dropout, world_fraction=0.5)
    return build_streams(InMemoryCache.synthetic(), stream_config(cfg))


def test_the_training_stream_hides_the_actions_of_about_its_share_of_world_samples():
    streams = _streams(0.25)
    assert streams.vocab.has_null_action
    null, world = 0, 0
    for pos in range(800):
        sample, kind = streams.train.sample(pos)
        if kind == WORLD:
            world += 1
            null += bool((sample.ids == streams.vocab.null_action).any())
    assert world == 400 and 0.18 < null / world < 0.32
    again = _streams(0.25)  # deterministic per seed and position
    assert all(
        np.array_equal(streams.train.sample(p)[0].ids, again.train.sample(p)[0].ids) for p in range(64)
    )
    # the validation stream always gives the actions; a run without dropout has no null id
    assert not any((streams.val.sample(p)[0].ids == streams.vocab.null_action).any() for p in range(64))
    assert not _streams(0.0).vocab.has_null_action
    with pytest.raises(ConfigError, match="world_action_dropout"):
        replace(train_preset("debug"), world_action_dropout=1.0)


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("guided")
    cfg = replace(train_preset("debug"), keep_last=1, world_action_dropout=0.3, world_horizon=2)
    train(cfg, InMemoryCache.synthetic(), run, progress=False)
    return run


def test_guidance_one_and_zero_are_the_conditioned_and_unconditioned_decodings(guided_run):
    model, bundle = load_for_inference(guided_run)
    bundle.image_tokenizer = NO_PIXELS
    vocab, text = bundle.vocab, bundle.text_tokenizer
    assert vocab.has_null_action
    rng = np.random.default_rng(0)
    codes = rng.integers(0, vocab.image_codes, (3, 4, 4))
    bins = rng.integers(0, vocab.action_bins, (3, 2, bundle.layout.action_dim))
    cond = [
        torch.from_numpy(world_prompt_ids(vocab, text, c, b, bundle.layout.prompts))
        for c, b in zip(codes, bins)
    ]
    uncond = [
        torch.from_numpy(world_prompt_ids(vocab, text, c, b, bundle.layout.prompts, null_actions=True))
        for c, b in zip(codes, bins)
    ]
    alone_c = generate_frame(model, vocab, cond, grid=(4, 4))
    alone_u = generate_frame(model, vocab, uncond, grid=(4, 4))
    assert torch.equal(
        generate_frame(model, vocab, cond, grid=(4, 4), unconditioned=uncond, guidance=1.0), alone_c
    )
    assert torch.equal(
        generate_frame(model, vocab, cond, grid=(4, 4), unconditioned=uncond, guidance=0.0), alone_u
    )
    # the world model decodes the pair itself: guidance 1 is its unguided decoding
    acts = rng.uniform(-1, 1, (3, 2, bundle.layout.action_dim)).astype(np.float32)
    plain = WorldModel(model, bundle).next_codes(codes, acts)
    assert np.array_equal(WorldModel(model, bundle, guidance=1.0).next_codes(codes, acts), plain)
    strong = WorldModel(model, bundle, guidance=4.0).next_codes(codes, acts)
    assert strong.shape == plain.shape == (3, 4, 4)
    assert (strong >= 0).all() and (strong < vocab.image_codes).all()


def test_guidance_needs_a_checkpoint_trained_with_null_actions(tmp_path, guided_run):
    run = tmp_path / "plain"
    train(replace(train_preset("debug"), keep_last=1), InMemoryCache.synthetic(), run, progress=False)
    model, bundle = load_for_inference(run)
    bundle.image_tokenizer = NO_PIXELS
    WorldModel(model, bundle, guidance=1.0)
    with pytest.raises(ConfigError, match="world_action_dropout"):
        WorldModel(model, bundle, guidance=2.0)
    model, bundle = load_for_inference(guided_run)
    bundle.image_tokenizer = NO_PIXELS
    with pytest.raises(ConfigError, match="guidance"):
        WorldModel(model, bundle, guidance=float("nan"))


def test_a_checkpoint_carries_its_guidance_as_an_inference_default(tmp_path):
    run = tmp_path / "default"
    cfg = replace(train_preset("debug"), keep_last=1, world_action_dropout=0.3)
    guided = InferenceDefaults(world_guidance=2.0)
    train(cfg, InMemoryCache.synthetic(), run, progress=False, inference=guided)
    model, bundle = load_for_inference(run)
    bundle.image_tokenizer = NO_PIXELS
    assert bundle.inference.world_guidance == 2.0
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    stored = json.loads((ckpt / "inference.json").read_text())
    assert stored == {"action_readout": "argmax", "world_guidance": 2.0}  # w = 1 is left out
    assert WorldModel(model, bundle).guidance == 2.0  # None: the checkpoint's
    assert WorldModel(model, bundle, guidance=1.0).guidance == 1.0  # the caller's wins
    rng = np.random.default_rng(1)
    codes = rng.integers(0, bundle.vocab.image_codes, (2, 4, 4))
    acts = rng.uniform(-1, 1, (2, 1, bundle.layout.action_dim)).astype(np.float32)
    assert np.array_equal(
        WorldModel(model, bundle).next_codes(codes, acts),
        WorldModel(model, bundle, guidance=2.0).next_codes(codes, acts),
    )
    # a default the model cannot honour is refused before any step is trained
    with pytest.raises(ConfigError, match="world_action_dropout"):
        train(
            replace(cfg, world_action_dropout=0.0),
            InMemoryCache.synthetic(),
            tmp_path / "refused",
            progress=False,
            inference=InferenceDefaults(world_guidance=2.0),
        )
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_guidance_defaults_are_checked_and_older_files_read_as_plain():
    assert InferenceDefaults.from_dict({"action_readout": "mean"}).world_guidance == 1.0
    for bad in (-1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ConfigError, match="world_guidance"):
            InferenceDefaults(world_guidance=bad)


def test_every_preset_that_guides_its_world_model_trains_null_actions():
    guided = [n for n in TRAIN_PRESETS.names() if preset_inference(n).world_guidance != 1.0]
    assert "mw-quick-guided" in guided and preset_inference("mw-quick-guided").world_guidance == 2.0
    for name in guided:
        assert train_preset(name).world_action_dropout > 0, name
    unguided = replace(train_preset("mw-quick-guided"), world_action_dropout=0.0)
    assert replace(unguided, name="mw-quick-multistep-compact") == train_preset("mw-quick-multistep-compact")
