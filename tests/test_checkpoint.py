"""Training config presets and overrides; checkpoint layout, refusal of other configs, inference loading."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from worldvla.artifacts.inference import InferenceDefaults
from worldvla.data.datasets import InMemoryCache
from worldvla.errors import ConfigError
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import (
    TRAIN_PRESETS,
    TrainConfig,
    apply_overrides,
    config_diff,
    preset_inference,
    train_preset,
)
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
        "inference.json",
        "trainer_state.pt",
    ):
        assert (found[-1] / name).is_file(), name
    config = json.loads((found[-1] / "config.json").read_text())
    assert config["train"] == cfg.to_dict()
    assert json.loads((found[-1] / "inference.json").read_text()) == {"action_readout": "argmax"}
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


# ---------------------------------------------------------------------------- inference defaults


@pytest.fixture(scope="module")
def halfway(tmp_path_factory):
    """A run stopped at step 2 of 4 (to be copied and resumed)."""
    run = tmp_path_factory.mktemp("halfway")
    cache = InMemoryCache.synthetic()
    cfg = replace(train_preset("debug"), keep_last=1)
    train(cfg, cache, run, progress=False, stop_after=2)
    return run, cache, cfg


def _copy(halfway, tmp_path: Path) -> Path:
    return Path(shutil.copytree(halfway[0], tmp_path / "run"))


def test_presets_choose_the_inference_defaults_of_their_checkpoints():
    for name in TRAIN_PRESETS:
        want = "mean" if name.startswith(("mw-quick", "mt50")) else "argmax"
        assert preset_inference(name).action_readout == want, name
    assert preset_inference("libero-spatial-256") == InferenceDefaults()  # a preset that sets none
    assert "action_readout" not in TrainConfig.__dataclass_fields__
    with pytest.raises(ConfigError, match="readout"):
        InferenceDefaults(action_readout="mode")


def test_inference_defaults_are_stored_beside_the_training_config(halfway, tmp_path):
    _, cache, cfg = halfway
    run = _copy(halfway, tmp_path)
    assert ckpt.load_bundle(run).inference == InferenceDefaults()
    # Resuming with other inference defaults is no other configuration: the new checkpoints
    # carry the ones given now, the training config is untouched.
    mean = InferenceDefaults(action_readout="mean")
    train(cfg, cache, run, resume=True, progress=False, inference=mean)
    last = ckpt.latest_checkpoint(run)
    assert last.name == "step_00000004" and ckpt.load_bundle(run).inference == mean
    assert json.loads((last / ckpt.CONFIG_FILE).read_text())["train"] == cfg.to_dict()
    assert ckpt.INFERENCE_FILE in ckpt.read_manifest(last)
    # An edited inference.json does not verify, like any other file of the checkpoint.
    (last / ckpt.INFERENCE_FILE).write_text(json.dumps({"action_readout": "argmax"}))
    with pytest.raises(ckpt.CorruptCheckpointError, match="inference.json"):
        ckpt.load_bundle(last)


def _as_written_before_inference_json(ckpt_dir: Path, readout: str | None, manifest: bool) -> None:
    """Rewrite a checkpoint as older releases wrote it: no inference.json, the readout (if any)
    among the training fields, with or without a manifest."""
    (ckpt_dir / ckpt.INFERENCE_FILE).unlink()
    doc = json.loads((ckpt_dir / ckpt.CONFIG_FILE).read_text())
    if readout is not None:
        doc["train"]["action_readout"] = readout
    (ckpt_dir / ckpt.CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    (ckpt_dir / ckpt.MANIFEST_FILE).unlink()
    if manifest:
        ckpt.write_manifest(ckpt_dir)


@pytest.mark.parametrize(
    "readout, manifest, want",
    [("mean", True, "mean"), ("mean", False, "mean"), ("argmax", True, "argmax"), (None, False, "argmax")],
)
def test_a_checkpoint_with_the_readout_in_its_training_config_loads_with_it(
    halfway, tmp_path, readout, manifest, want
):
    _, cache, cfg = halfway
    run = _copy(halfway, tmp_path)
    _as_written_before_inference_json(ckpt.latest_checkpoint(run), readout, manifest)
    model, bundle = ckpt.load_for_inference(run)
    assert bundle.inference.action_readout == want
    assert bundle.config == cfg  # the legacy key is accepted and left out of the training config
    assert TrainConfig.from_dict({**cfg.to_dict(), "action_readout": "mean"}) == cfg
    # Such a run resumes (the readout never was part of what must match) and goes on with
    # checkpoints that store their inference defaults apart.
    train(cfg, cache, run, resume=True, progress=False)
    last = ckpt.latest_checkpoint(run)
    assert last.name == "step_00000004" and ckpt.load_bundle(run).inference == InferenceDefaults()
    assert "action_readout" not in json.loads((last / ckpt.CONFIG_FILE).read_text())["train"]


def test_a_checkpoint_whose_manifest_lists_a_missing_inference_json_is_corrupt(halfway, tmp_path):
    run = _copy(halfway, tmp_path)
    (ckpt.latest_checkpoint(run) / ckpt.INFERENCE_FILE).unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match="inference.json: missing"):
        ckpt.load_bundle(run)
