"""Experiment presets are composed of typed objects (suite, tokenizer, training config), and a
run directory records them by name, exactly as it did when experiments named their parts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from worldvla.envs.suites import SuiteConfig, suite_preset
from worldvla.errors import ConfigError
from worldvla.experiments import EXPERIMENTS, ExperimentConfig, experiment_preset
from worldvla.tokenizers.vq_config import VQConfig, vq_preset
from worldvla.train.config import TrainConfig, apply_overrides, as_overrides, train_preset

# stages.json's "experiment" of the debug preset, as every version since step budgets wrote it
# (key order included): the parts by name, the training preset's overrides after tokenizer_steps.
DEBUG_RECORD = {
    "name": "debug",
    "suite": "debug",
    "tokenizer": "mw64",
    "train": "mw-quick-debug",
    "episodes_per_task": None,
    "action_noise": 0.0,
    "tokenizer_steps": 20,
    "train_overrides": [],
    "eval_episodes_per_task": 2,
    "eval_envs": 2,
    "eval_world_episodes": 2,
    "rollout_lengths": [1, 10],
    "gifs": 1,
    "seed": 0,
    "workers": 1,
    "explore_per_task": 2,
    "explore_steps": 6,
}
# (suite, tokenizer, training preset) each preset recorded before its parts were objects.
RECORDED_PARTS = {
    "mw-quick": ("mw-quick", "mw64", "mw-quick"),
    "mw-quick-multistep": ("mw-quick", "mw64-local", "mw-quick-multistep"),
    "mw-quick-multistep-compact": ("mw-quick", "mw64-local", "mw-quick-multistep-compact"),
    "mw-quick-guided": ("mw-quick", "mw64-local", "mw-quick-guided"),
    "mw-quick-v1": ("mw-quick-v1", "mw64", "mw-quick"),
    "mw-quick-control": ("mw-quick-control", "mw64", "mw-quick"),
    "debug": ("debug", "mw64", "mw-quick-debug"),
    "mt50": ("mt50", "mw64", "mt50"),
    "mt50-debug": ("mt50-debug", "mw64", "mt50-debug"),
}


def _stored(exp: ExperimentConfig) -> dict:
    return json.loads(json.dumps(exp.to_dict()))  # as stages.json holds it


def test_the_debug_record_is_the_stored_format_key_for_key():
    stored = _stored(experiment_preset("debug"))
    assert stored == DEBUG_RECORD and list(stored) == list(DEBUG_RECORD)


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_a_preset_holds_registered_objects_and_records_their_names(name):
    exp = experiment_preset(name)
    assert isinstance(exp.suite, SuiteConfig) and isinstance(exp.tokenizer, VQConfig)
    assert isinstance(exp.train, TrainConfig)
    assert exp.suite == suite_preset(exp.suite.name) and exp.tokenizer == vq_preset(exp.tokenizer.name)
    stored = _stored(exp)
    assert list(stored) == list(DEBUG_RECORD)  # the same keys, in the same order
    assert (stored["suite"], stored["tokenizer"], stored["train"]) == RECORDED_PARTS[name]
    # The training config the pipeline ran when experiments named it: the preset of that name
    # with the recorded overrides applied (there are none left in a preset).
    assert stored["train_overrides"] == []
    assert exp.train == apply_overrides(train_preset(stored["train"]), stored["train_overrides"])


def test_presets_compose_objects():
    quick = experiment_preset("mw-quick")
    multistep = replace(
        quick,
        name="mw-quick-multistep",
        tokenizer=vq_preset("mw64-local"),
        train=train_preset("mw-quick-multistep"),
    )
    assert experiment_preset("mw-quick-multistep") == multistep
    assert multistep.train.world_horizon == 5 and multistep.tokenizer.norm == "channel"


def test_a_changed_training_config_is_recorded_as_overrides_and_refuses_the_old_run(tmp_path):
    from worldvla.pipeline import RunState

    exp = experiment_preset("debug")
    changed = replace(exp, train=apply_overrides(exp.train, ["lr=0.002", "chunk_mask=false"]))
    overrides = changed.to_dict()["train_overrides"]
    assert overrides == ("chunk_mask=false", "lr=0.002")  # in field order
    assert apply_overrides(train_preset("mw-quick-debug"), list(overrides)) == changed.train
    RunState(tmp_path, exp).save()
    with pytest.raises(ConfigError, match="another configuration"):
        RunState(tmp_path, changed)
    # A training config under a name that is no preset: its changes from the defaults.
    mine = replace(exp, train=TrainConfig(name="mine", steps=3))
    assert mine.to_dict()["train"] == "mine" and mine.to_dict()["train_overrides"] == ("steps=3",)


def test_as_overrides_is_the_inverse_of_apply_overrides():
    base = train_preset("mw-quick")
    cfg = replace(
        base,
        name="x",
        dropout=0.1,
        use_state=True,
        action_prompt="task = {instruction}",
        loss_form="split",
        image_weight=1e-5,
    )
    strings = as_overrides(base, cfg)
    assert strings == [
        "name=x",
        "dropout=0.1",
        "use_state=true",
        "action_prompt=task = {instruction}",
        "loss_form=split",
        "image_weight=1e-05",
    ]
    assert apply_overrides(base, strings) == cfg
    assert apply_overrides(cfg, as_overrides(cfg, base)) == base  # None written as "none"
    assert as_overrides(base, base) == []


def test_the_tokenizer_must_be_the_registered_preset_of_its_name():
    exp = experiment_preset("debug")
    with pytest.raises(ConfigError, match="not the registered tokenizer preset"):
        replace(exp, tokenizer=vq_preset("mw64", norm="channel"))
    with pytest.raises(ConfigError, match="not the registered tokenizer preset"):
        replace(exp, tokenizer=VQConfig())  # "custom"
    assert replace(exp, tokenizer=vq_preset("mw64-local")).to_dict()["tokenizer"] == "mw64-local"
