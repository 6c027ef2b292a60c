"""Training config presets and overrides; checkpoint layout, refusal of other configs, inference loading."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import pytest
import torch

from worldvla.data.datasets import InMemoryCache
from worldvla.errors import ConfigError
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TRAIN_PRESETS, TrainConfig, apply_overrides, config_diff, train_preset
from worldvla.train.loop import train
from worldvla.train.optim import lr_at, param_groups

# ---------------------------------------------------------------------------- config


def test_every_preset_builds_and_is_valid():
    for name in TRAIN_PRESETS:
        cfg = train_preset(name)
        assert cfg.name == name
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "name, fields",
    [
        ("mw-quick-action-only", {"use_world_data"}),
        ("mw-quick-world-only", {"use_action_data"}),
        ("mw-quick-no-chunk-mask", {"chunk_mask"}),
        ("mw-quick-no-chunk", {"chunk_len"}),
        ("mw-quick-history-2", {"history"}),
        ("mw-quick-history-4", {"history"}),
        ("mw-quick-split-loss", {"loss_form"}),
    ],
)
def test_ablations_differ_from_the_default_only_in_the_intended_fields(name, fields):
    diff = config_diff(train_preset("mw-quick"), train_preset(name), ignore=frozenset({"name"}))
    assert set(diff) == fields


def test_tiny_siblings_keep_the_layout():
    big, small = train_preset("mw-quick"), train_preset("mw-quick-debug")
    for f in (
        "history",
        "chunk_len",
        "chunk_mask",
        "loss_form",
        "image_weight",
        "world_fraction",
        "schedule",
    ):
        assert getattr(big, f) == getattr(small, f)
    assert small.model == "tiny"


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ConfigError, match="mw-quick"):
        train_preset("mw-quik")


def test_overrides_are_typed_and_validated():
    cfg = apply_overrides(
        train_preset("debug"), ["steps=7", "chunk_mask=false", "lr=2e-4", "loss_form=split", "dropout=none"]
    )
    assert (cfg.steps, cfg.chunk_mask, cfg.lr, cfg.loss_form, cfg.dropout) == (7, False, 2e-4, "split", None)
    with pytest.raises(ConfigError, match="chunk_len"):
        apply_overrides(cfg, ["chunk_lenn=3"])
    with pytest.raises(ConfigError, match="expected one of"):
        apply_overrides(cfg, ["loss_form=mean"])
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(cfg, ["batch_size=6", "grad_accum=4"])
    with pytest.raises(ConfigError, match="nothing to train"):
        replace(cfg, use_action_data=False, use_world_data=False)
    with pytest.raises(ConfigError, match="instruction"):
        apply_overrides(cfg, ["action_prompt=do it"])


def test_schedule_warmup_then_cosine_or_constant():
    cfg = replace(train_preset("debug"), lr=1.0, warmup_steps=4, steps=104, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(54, cfg) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_at(104, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    const = replace(cfg, schedule="constant")
    assert lr_at(50, const) == 1.0 and lr_at(1000, const) == 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[1].weight)}
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cache = InMemoryCache.synthetic()
    cfg = replace(train_preset("debug"), keep_last=1)
    result = train(cfg, cache, run, progress=False)
    return run, cache, cfg, result


def test_checkpoint_layout_and_latest_pointer(trained):
    run, _, cfg, result = trained
    found = ckpt.list_checkpoints(run)
    assert [p.name for p in found] == ["step_00000004"]  # keep_last=1 pruned step 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert result.checkpoint == found[-1]
    for name in (
        "model.safetensors",
        "config.json",
        "vocab.json",
        "action_stats.json",
        "image_tokenizer.json",
        "trainer_state.pt",
    ):
        assert (found[-1] / name).is_file(), name
    config = json.loads((found[-1] / "config.json").read_text())
    assert config["train"] == cfg.to_dict()
    assert config["layout"]["history"] == cfg.history and config["layout"]["chunk_len"] == cfg.chunk_len
    state = ckpt.load_trainer_state(found[-1])
    assert state["step"] == 4 and state["data_pos"] == 4 * cfg.batch_size
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])


def test_load_for_inference_rebuilds_the_trained_model(trained):
    run, _, cfg, _ = trained
    model, bundle = ckpt.load_for_inference(run)
    saved = ckpt.load_model_state(ckpt.latest_checkpoint(run))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not model.training
    assert bundle.config == cfg and bundle.step == 4
    assert bundle.layout.history == cfg.history and bundle.layout.chunk_mask == cfg.chunk_mask
    assert bundle.vocab.image_codes == 64 and bundle.action_stats.dim == 4
    assert bundle.text_tokenizer.encode("a") == [97]


def test_resume_with_a_different_config_is_refused_naming_the_fields(trained, tmp_path):
    run, cache, cfg, _ = trained
    other = replace(cfg, chunk_len=2, lr=5e-4, steps=6)
    with pytest.raises(ConfigError) as e:
        train(other, cache, run, resume=True, progress=False)
    msg = str(e.value)
    assert "chunk_len" in msg and "lr" in msg and "steps" in msg and "history" not in msg


def test_existing_run_without_resume_is_refused(trained):
    run, cache, cfg, _ = trained
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, cache, run, progress=False)


def test_partial_checkpoint_directories_are_ignored(trained, tmp_path):
    run, *_ = trained
    partial = run / "checkpoints" / ".step_00000006.abc.tmp"
    partial.mkdir()
    assert ckpt.latest_checkpoint(run).name == "step_00000004"
    ckpt.remove_partial(run)
    assert not partial.exists()


def test_resolve_checkpoint_errors_clearly(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)


def test_config_dataclass_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        train_preset("debug").steps = 3  # type: ignore[misc]


def test_action_bins_shape_the_vocabulary_and_a_mismatched_cache_is_refused(tmp_path):
    from worldvla.data.streams import cache_vocab
    from worldvla.tokenizers.text import load_text_tokenizer
    from worldvla.vocab import Vocab, VocabConfig

    cfg = replace(train_preset("debug"), action_bins=16, steps=2, ckpt_every=2, val_every=2)
    train(cfg, InMemoryCache.synthetic(), tmp_path / "run", progress=False)
    model, bundle = ckpt.load_for_inference(tmp_path / "run")
    assert bundle.vocab.action_bins == 16 and bundle.config.action_bins == 16
    default = cache_vocab(InMemoryCache.synthetic(), load_text_tokenizer("bytes"))
    assert default.action_bins == 256 and bundle.vocab.size < default.size
    assert model.cfg.vocab_size == bundle.vocab.size
    text = load_text_tokenizer("bytes")
    cache = InMemoryCache.synthetic()
    cache.vocab = Vocab.build(VocabConfig(text_size=text.size, image_codes=64, action_bins=256))
    with pytest.raises(ConfigError, match="256 action bins.*asks for 16"):
        cache_vocab(cache, text, 16)
