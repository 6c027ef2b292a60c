"""Early stopping with best checkpoints per sample kind, scarce-data training, fine-tuning."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from worldvla.data.datasets import InMemoryCache
from worldvla.data.streams import first_demos_per_task
from worldvla.errors import ConfigError
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import TrainConfig, train_preset
from worldvla.train.data import build_data
from worldvla.train.early_stop import EarlyStop
from worldvla.train.loop import Trainer, train


def test_early_stop_waits_for_every_kind():
    es = EarlyStop(("action", "world"), patience=2)
    assert es.update(10, {"action_loss": 3.0, "world_loss": 5.0}) == ["action", "world"]
    assert es.update(20, {"action_loss": 2.0, "world_loss": 5.5}) == ["action"]
    assert es.update(30, {"action_loss": 2.5, "world_loss": 4.0}) == ["world"]
    assert es.update(40, {"action_loss": 2.1, "world_loss": 4.1}) == []
    assert not es.done  # world has one stale validation
    assert es.update(50, {"action_loss": 2.2, "world_loss": 4.2}) == []
    assert es.done
    assert es.summary() == {
        "action": {"metric": "action_loss", "best": 2.0, "step": 20},
        "world": {"metric": "world_loss", "best": 4.0, "step": 30},
    }
    again = EarlyStop(("action", "world"), patience=2)
    again.load_state_dict(json.loads(json.dumps(es.state_dict())))
    assert again.done and again.summary() == es.summary()
    assert not EarlyStop(("action",), patience=0).done  # off


def _scripted_validation(monkeypatch, action, world):
    """Make Trainer.validate return the given losses in turn (the loop's logic, not the model's)."""
    calls = iter(zip(action, world, strict=True))

    def validate(self):
        a, w = next(calls)
        return {"action_loss": a, "world_loss": w, "loss": a + w}

    monkeypatch.setattr(Trainer, "validate", validate)


def _cfg(**kw) -> TrainConfig:
    base = {"steps": 20, "val_every": 2, "ckpt_every": 4, "early_stop_patience": 2}
    return replace(train_preset("debug"), **(base | kw))


def test_training_stops_when_no_held_out_loss_improves(tmp_path, monkeypatch):
    cache = InMemoryCache.synthetic()
    # Validations at steps 2, 4, ...: action best at 4, world best at 6; both stale twice at 10.
    _scripted_validation(monkeypatch, [3, 2, 2.5, 2.6, 2.7, 9, 9], [5, 4.5, 4, 4.2, 4.3, 9, 9])
    result = train(_cfg(), cache, tmp_path / "run", progress=False)
    assert result.stopped_early and result.step == 10
    assert result.best == {
        "action": {"metric": "action_loss", "best": 2.0, "step": 4},
        "world": {"metric": "world_loss", "best": 4.0, "step": 6},
    }
    for kind, step in (("action", 4), ("world", 6)):
        best = tmp_path / "run" / "best" / kind
        assert ckpt.read_config(best)["step"] == step
        model, bundle = ckpt.load_for_inference(best)  # a complete, loadable checkpoint
        assert bundle.config.early_stop_patience == 2
    # The best weights are those of their step, not the last ones.
    last = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "run"))
    action = ckpt.load_model_state(tmp_path / "run" / "best" / "action")
    assert any(not torch.equal(last[k], action[k]) for k in last)
    # Running it again trains nothing more: the stop is part of the checkpoint.
    again = train(_cfg(), cache, tmp_path / "run", resume=True, progress=False)
    assert again.step == 10 and again.losses == [] and again.best == result.best


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    cache = InMemoryCache.synthetic()
    script = ([3, 2, 2.5, 2.6, 9], [5, 4, 4.5, 4.6, 9])
    _scripted_validation(monkeypatch, *script)
    full = train(_cfg(), cache, tmp_path / "full", progress=False)
    _scripted_validation(monkeypatch, *script)
    train(_cfg(), cache, tmp_path / "split", progress=False, stop_after=4)
    split = train(_cfg(), cache, tmp_path / "split", resume=True, progress=False)
    assert full.step == split.step == 8 and split.best == full.best


def test_cap_without_convergence_is_not_an_early_stop(tmp_path, monkeypatch, capsys):
    cache = InMemoryCache.synthetic()
    _scripted_validation(monkeypatch, [5, 4, 3], [5, 4, 3])
    result = train(_cfg(steps=6), cache, tmp_path / "run", progress=False)
    assert not result.stopped_early and result.step == 6
    assert result.best["action"]["step"] == 6
    assert "reached the step cap (6) before every held-out loss stopped improving" in capsys.readouterr().out


def test_early_stopping_needs_validation():
    with pytest.raises(ConfigError, match="val_every"):
        replace(train_preset("debug"), early_stop_patience=2, val_every=0)
    with pytest.raises(ConfigError, match="early_stop_patience must be >= 0"):
        replace(train_preset("debug"), early_stop_patience=-1)


def test_resume_refuses_other_validation_settings_under_early_stopping(tmp_path):
    cache = InMemoryCache.synthetic()
    train(_cfg(steps=4), cache, tmp_path / "run", progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="val_batches"):
        train(_cfg(steps=4, val_batches=2), cache, tmp_path / "run", resume=True, progress=False)


# ---------------------------------------------------------------------------- scarce data
def _action_episodes(cfg, cache) -> set[int]:
    from worldvla.data.datasets import ActionSamples

    data = build_data(cfg, cache, 10_000)
    (samples,) = [s for s in data.train.sets.values() if isinstance(s, ActionSamples)]
    starts = {int(s) for s in samples.episode_start}
    return {i for i, e in enumerate(cache.episodes) if e.start in starts}


def test_train_demos_per_task_keeps_the_first_demonstrations_of_each_task():
    cache = InMemoryCache.synthetic(n_episodes=18)
    full = replace(train_preset("debug"), val_fraction=0.2)
    all_eps = _action_episodes(full, cache)
    two = _action_episodes(replace(full, train_demos_per_task=2), cache)
    assert len(two) == 2 * len({cache.episodes[e].task for e in all_eps})
    for t in {cache.episodes[e].task for e in all_eps}:
        first = sorted(e for e in all_eps if cache.episodes[e].task == t)[:2]
        assert {e for e in two if cache.episodes[e].task == t} == set(first)
    # The held-out episodes do not move.
    a = build_data(full, cache, 10_000).val_episodes
    b = build_data(replace(full, train_demos_per_task=2), cache, 10_000).val_episodes
    assert a == b


def test_train_demos_per_task_beyond_the_data_names_the_task():
    cache = InMemoryCache.synthetic(n_episodes=6)
    with pytest.raises(ConfigError, match=r"task-\d: \d"):
        build_data(replace(train_preset("debug"), train_demos_per_task=50), cache, 10_000)


def test_first_demos_per_task_leaves_exploratory_segments():
    eps = [{"task": "a"}, {"task": "a"}, {"task": "a"}, {"task": "b"}, {"task": "a"}]
    is_demo = np.array([True, True, False, True, True])
    kept = first_demos_per_task(eps, np.arange(5), is_demo, 1)
    assert kept.tolist() == [0, 2, 3]


# ---------------------------------------------------------------------------- fine-tuning
def test_init_from_starts_from_another_runs_weights(tmp_path):
    cache = InMemoryCache.synthetic()
    world = replace(train_preset("debug"), use_action_data=False)
    train(world, cache, tmp_path / "pre", progress=False)
    tuned = replace(train_preset("debug"), use_world_data=False, init_from=str(tmp_path / "pre"))
    train(tuned, cache, tmp_path / "ft", progress=False, stop_after=0)
    start = ckpt.load_model_state(ckpt.list_checkpoints(tmp_path / "ft")[0])
    pre = ckpt.load_model_state(ckpt.latest_checkpoint(tmp_path / "pre"))
    assert all(torch.equal(start[k], pre[k]) for k in pre)
    assert ckpt.read_config(ckpt.latest_checkpoint(tmp_path / "ft"))["train"]["init_from"] == str(
        tmp_path / "pre"
    )
    # A resume takes the run's own checkpoint, wherever init_from points now.
    train(replace(tuned, init_from="elsewhere"), cache, tmp_path / "ft", resume=True, progress=False)


def test_init_from_another_model_is_refused(tmp_path):
    cache = InMemoryCache.synthetic()
    train(train_preset("debug"), cache, tmp_path / "pre", progress=False)
    other = replace(train_preset("debug"), model="mini", init_from=str(tmp_path / "pre"))
    with pytest.raises(ConfigError, match=r"does not fit this run \(model\.d_model"):
        train(other, cache, tmp_path / "ft", progress=False)
    assert not (tmp_path / "ft" / "checkpoints").exists()
