"""Exploratory world data: the action process, collection into the episode store, and the
split of episode kinds between the policy's and the world model's samples."""

import dataclasses

import numpy as np
import pytest

from worldvla.data.datasets import EpisodeRecord, InMemoryCache
from worldvla.data.exploration import ActionProcess, ExplorationConfig, segment_rng
from worldvla.errors import ConfigError
from worldvla.train.config import TrainConfig
from worldvla.train.data import build_data


def test_action_process_is_seeded_clipped_and_holds_its_draws():
    cfg = ExplorationConfig(per_task=1, steps=200, max_hold=3, p_zero=0.3, p_random=0.4)
    runs = []
    for _ in range(2):
        proc = ActionProcess(cfg, segment_rng(0, 1, 2), 4)
        runs.append([proc(np.full(4, 0.5, np.float32)) for _ in range(cfg.steps)])
    for (a, ma), (b, mb) in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
        assert ma == mb
    actions = np.stack([a for a, _ in runs[0]])
    modes = [m for _, m in runs[0]]
    assert np.abs(actions).max() <= 1.0 and set(modes) == {"zero", "random", "expert"}
    assert np.all(actions[[m == "zero" for m in modes]] == 0)
    # A random draw is held: consecutive random steps repeat the same action (holds of 1..3).
    rnd = [i for i in range(1, len(modes)) if modes[i] == modes[i - 1] == "random"]
    assert any(np.array_equal(actions[i], actions[i - 1]) for i in rnd)
    # The perturbed expert is centred on the expert's action.
    assert abs(actions[[m == "expert" for m in modes]].mean() - 0.5) < 0.15
    other = ActionProcess(cfg, segment_rng(0, 1, 3), 4)
    assert not np.array_equal(np.stack([other(np.zeros(4))[0] for _ in range(20)]), actions[:20])


@pytest.mark.parametrize(
    "bad", [{"steps": 1}, {"max_hold": 0}, {"p_zero": 0.8, "p_random": 0.5}, {"expert_noise": -1.0}]
)
def test_exploration_config_is_validated(bad):
    with pytest.raises(ConfigError):
        ExplorationConfig(**bad)


def _mixed_cache() -> InMemoryCache:
    """Four demonstrations and two exploratory segments; executed actions differ from labels."""
    base = InMemoryCache.synthetic(n_episodes=6, length=10, seed=3)
    episodes = [
        dataclasses.replace(e, kind="explore" if i >= 4 else "demo") for i, e in enumerate(base.episodes)
    ]
    executed = base.actions.copy()
    executed[:, 0] = -executed[:, 0]
    return dataclasses.replace(base, episodes=episodes, world_actions=executed)


def test_only_demonstrations_feed_the_policy_and_the_world_model_reads_executed_actions():
    cache = _mixed_cache()
    cfg = TrainConfig(history=1, chunk_len=2, val_fraction=0.0, steps=1)
    data = build_data(cfg, cache, 4096)
    action, world = data.train.sets[0], data.train.sets[1]
    demo_frames = set(range(40))  # episodes 0-3 hold frames 0-39
    assert set(action.frame.tolist()) <= demo_frames
    assert set(world.frame.tolist()) - demo_frames  # exploratory transitions are world samples
    assert not np.array_equal(world.bins, action.bins)  # executed actions, not labels
    demos_only = build_data(dataclasses.replace(cfg, world_data="demos"), cache, 4096)
    assert set(demos_only.train.sets[1].frame.tolist()) <= demo_frames
    explore_only = build_data(dataclasses.replace(cfg, world_data="explore"), cache, 4096)
    assert not set(explore_only.train.sets[1].frame.tolist()) & demo_frames
    assert set(explore_only.train.sets[0].frame.tolist()) <= demo_frames  # the policy: demos still
    no_segments = dataclasses.replace(
        cache, episodes=[dataclasses.replace(e, kind="demo") for e in cache.episodes]
    )
    with pytest.raises(ConfigError, match="world_data='explore'.*no such episodes"):
        build_data(dataclasses.replace(cfg, world_data="explore"), no_segments, 4096)


def test_held_out_episodes_are_split_per_kind_and_evaluations_get_demonstrations():
    cache = _mixed_cache()
    cfg = TrainConfig(history=1, chunk_len=2, val_fraction=0.25, steps=1)
    data = build_data(cfg, cache, 4096)
    assert data.val_episodes and all(k.startswith("demo_") for k in data.val_episodes)
    demo_keys = [e.key for e in cache.episodes if e.kind == "demo"]
    assert set(data.val_episodes) <= set(demo_keys)
    # Old records without a kind are demonstrations.
    assert EpisodeRecord(key="k", start=0, length=2, instruction="x").kind == "demo"


@pytest.mark.sim
def test_collect_writes_flagged_segments_with_executed_actions(tmp_path):
    from worldvla.data.collect import collect
    from worldvla.data.episodes import EpisodeReader
    from worldvla.data.token_cache import build_token_cache
    from worldvla.envs.suites import suite_preset
    from worldvla.tokenizers.vq import VQTokenizer, vq_preset

    suite = suite_preset("debug")
    explore = ExplorationConfig(per_task=2, steps=5, prefix_max=3)
    path = tmp_path / "ep.hdf5"
    report = collect(suite, path, seed=2, action_noise=0.2, workers=1, progress=False, exploration=explore)
    assert report.explore_segments == 2 and report.explore_steps == 10
    with EpisodeReader(path) as r:
        kinds = [r.attrs(k)["kind"] for k in r.keys]
        assert kinds == ["demo", "demo", "explore", "explore"]
        for k in r.keys[:2]:
            ep = r[k]  # labels differ from what was executed (noise), both recorded
            assert ep.executed_actions is not None and not np.allclose(ep.executed_actions, ep.actions)
        for k in r.keys[2:]:
            ep = r[k]
            assert len(ep) == 5 and ep.executed_actions is None and np.abs(ep.actions).max() <= 1.0
            assert ep.attrs["variation"] in suite.train_variations and len(ep.attrs["modes"]) == 5
    tokenizer = VQTokenizer(vq_preset("tiny", image_size=suite.resolution))
    cache = build_token_cache(path, tokenizer, tmp_path / "cache", camera=suite.camera, progress=False)
    assert [e.kind for e in cache.episodes] == kinds
    assert cache.world_actions is not None and cache.world_actions.shape == cache.actions.shape
    # Bounds come from demonstrations only.
    demo_rows = np.concatenate([np.full(e.length, e.kind == "demo") for e in cache.episodes])
    np.testing.assert_allclose(cache.action_stats.high, cache.actions[demo_rows].max(0), rtol=1e-6)
