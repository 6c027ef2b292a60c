"""LIBERO presets follow the reference recipe (SPEC §5); each builds on the meta device."""

import math

import pytest
import torch

from worldvla.errors import ConfigError
from worldvla.libero_presets import LIBERO_PRESETS, libero_preset
from worldvla.model.config import model_preset
from worldvla.sequence import action_length, frame_length
from worldvla.vocab import Vocab

REFERENCE = [n for n in LIBERO_PRESETS if not n.endswith("-debug")]


def test_the_eight_reference_presets_exist_each_with_a_debug_sibling():
    expected = {f"libero-{s}-{r}" for s in ("spatial", "object", "goal", "10") for r in (256, 512)}
    assert set(REFERENCE) == expected
    assert set(LIBERO_PRESETS) == expected | {f"{n}-debug" for n in expected}


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_recipe(name):
    p = libero_preset(name)
    t = p.train_config(num_samples=10_001, num_gpus=4)
    assert t.model == "chameleon-7b" and p.vocab() == Vocab.chameleon_reference()
    assert (t.lr, t.schedule, t.beta1, t.beta2, t.weight_decay, t.grad_clip) == (
        5e-6,
        "constant",
        0.9,
        0.95,
        0.1,
        4.0,
    )
    assert (t.dropout, t.precision, t.fsdp, t.activation_checkpointing) == (0.05, "bf16", True, True)
    assert (t.history, t.chunk_len, t.chunk_mask) == (2, 10 if "-10-" in name else 5, True)
    assert (t.loss_form, t.image_weight, t.z_loss, t.world_fraction) == ("reference", 0.04, 1e-5, 0.5)
    assert t.use_action_data and t.use_world_data
    # 8 per GPU, 40 epochs, warmup 1% of the steps.
    assert (
        t.batch_size == 32
        and t.steps == 40 * math.ceil(10_001 / 32)
        and t.warmup_steps == math.ceil(0.01 * t.steps)
    )
    assert p.train_config(10_001, num_gpus=2).batch_size == 16
    assert p.resolution == int(name.rsplit("-", 1)[1]) and p.grid == p.resolution // 16
    assert p.max_episode_steps == {"spatial": 220, "object": 280, "goal": 300, "10": 520}[name.split("-")[1]]


@pytest.mark.parametrize("name", sorted(LIBERO_PRESETS))
def test_each_preset_builds_on_the_meta_device_and_its_samples_fit(name):
    from worldvla.model.transformer import Transformer

    p = libero_preset(name)
    cfg = p.model_config()
    t = p.train_config(1000)
    assert cfg.max_seq_len == p.max_seq_len and cfg.vocab_size == p.vocab().size
    assert cfg.dropout == t.dropout
    if not name.endswith("-debug"):
        ref = model_preset("chameleon-7b")
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ffn_hidden, cfg.max_seq_len) == (
            4096,
            32,
            32,
            11008,
            4096,
        )
        assert cfg.qk_norm == ref.qk_norm
    with torch.device("meta"):
        model = Transformer(cfg)
    n_params = sum(x.numel() for x in model.parameters())
    assert all(x.device.type == "meta" for x in model.parameters())
    if not name.endswith("-debug"):
        assert 6.5e9 < n_params < 7.5e9, n_params
    # The longest samples (M frames + K actions; frame + action -> frame) fit the context
    # with room for a 64-token instruction (SPEC §2 layouts).
    frame, action = frame_length(p.grid, p.grid), action_length(7)
    action_sample = 1 + 64 + t.history * frame + 1 + t.chunk_len * action + 1
    world_sample = 1 + 64 + frame + action + 1 + frame + 1
    assert max(action_sample, world_sample) <= cfg.max_seq_len


def test_unknown_preset_suggests_a_close_name():
    with pytest.raises(ConfigError, match="Did you mean 'libero-goal-256'"):
        libero_preset("libero-goal-265")
    with pytest.raises(ConfigError, match="at least one"):
        libero_preset("libero-goal-256").train_config(0)
