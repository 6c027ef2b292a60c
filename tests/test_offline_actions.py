"""Offline action error and its image probe, on a random checkpoint and a small episode store."""

import numpy as np
import pytest

from worldvla.data.episodes import Episode, write_episodes
from worldvla.eval.offline_actions import evaluate_offline_actions
from worldvla.serving.random_checkpoint import write_random_checkpoint

TASKS = ("press the button", "open the window")


def _store(path, shared_frames: bool) -> list[str]:
    """Two episodes per instruction; with ``shared_frames`` both show the same frames."""
    rng = np.random.default_rng(0)
    episodes = []
    for text in TASKS:
        base = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
        for j in range(2):
            frames = base if shared_frames else rng.integers(0, 256, (9 + j, 32, 32, 3), dtype=np.uint8)
            actions = rng.uniform(-1, 1, (len(frames), 4)).astype(np.float32)
            episodes.append(Episode(f"{text}/{j}", actions, {"corner": frames}, text, text))
    write_episodes(path, episodes)
    return [f"demo_{i}" for i in range(len(episodes))]


def _checkpoint(tmp_path, history: int, val_episodes: list[str]):
    """A random K=3, D=4 policy over 32×32 frames holding out ``val_episodes``."""
    return write_random_checkpoint(
        tmp_path / "run",
        action_dim=4,
        image_size=32,
        chunk_len=3,
        history=history,
        camera="corner",
        val_episodes=tuple(val_episodes),
    )


@pytest.mark.parametrize("shared", [True, False])
def test_errors_per_position_and_task_and_the_swap_probe(tmp_path, shared):
    keys = _store(tmp_path / "eps.hdf5", shared)
    ckpt = _checkpoint(tmp_path, history=1, val_episodes=keys)
    doc = evaluate_offline_actions(ckpt, tmp_path / "eps.hdf5", tmp_path / "out", stride=1)
    assert (tmp_path / "out" / "results.json").exists()
    # 9 - 3 + 1 = 7 chunks per 9-step episode (8 for the 10-step one when frames differ).
    assert doc["samples"] == (28 if shared else 30) and doc["episodes"] == 4
    assert len(doc["l1_per_position"]) == 3 and 0 < doc["l1"] < 2
    assert np.isclose(np.mean(doc["l1_per_position"]), doc["l1"])
    assert set(doc["per_task"]) == set(TASKS)
    weights = [r["samples"] for r in doc["per_task"].values()]
    assert np.isclose(np.average([r["l1"] for r in doc["per_task"].values()], weights=weights), doc["l1"])
    # Every task has two held-out episodes, so every chunk is probed with the other's frames.
    assert doc["swapped_samples"] == doc["samples"]
    assert np.isclose(doc["l1_real_on_swapped"], doc["l1"])
    if shared:
        # Same frames at the same step: the probe must reproduce the real predictions exactly.
        assert np.isclose(doc["l1_swapped"], doc["l1"])
    else:
        assert not np.isclose(doc["l1_swapped"], doc["l1"])


def test_probe_skips_tasks_with_a_single_held_out_episode(tmp_path):
    keys = _store(tmp_path / "eps.hdf5", shared_frames=False)
    ckpt = _checkpoint(tmp_path, history=2, val_episodes=keys[:3])
    doc = evaluate_offline_actions(ckpt, tmp_path / "eps.hdf5", stride=2)
    one = doc["per_task"][TASKS[1]]
    assert one["l1_swapped"] is None and doc["swapped_samples"] == doc["per_task"][TASKS[0]]["samples"]
    assert evaluate_offline_actions(ckpt, tmp_path / "eps.hdf5", swap_probe=False).get("l1_swapped") is None
