import numpy as np
import pytest

from worldvla.eval.metrics.image import frame_metrics
from worldvla.eval.policy_eval import (
    EpisodeResult,
    RandomAgent,
    ReplayAgent,
    fresh_gif_dir,
    run_agent,
    spread_over_tasks,
    summarize,
)
from worldvla.eval.stats import mean_ci, wilson_interval
from worldvla.eval.world_eval import evaluate_rollouts, side_by_side


def test_wilson_interval_properties():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and 0.65 < lo < 0.8
    lo, hi = wilson_interval(30, 60)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 60), rel=0.05)


def test_mean_ci_uses_student_t():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)
    assert mean_ci([5.0]) == (5.0, 0.0)


def test_frame_metrics_identity_and_noise():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    noisy = np.clip(real.astype(int) + rng.integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    same = frame_metrics(real, real)
    diff = frame_metrics(noisy, real)
    assert np.all(same["psnr"] > 80) and np.allclose(same["ssim"], 100, atol=1e-3)
    assert np.all(diff["psnr"] < 40) and np.all(diff["ssim"] < 100)
    # The metrics library's conventions: identical frames are capped, SSIM's border cropped.
    from worldvla.eval.metrics.image import PSNR_CAP_DB, ssim

    assert np.all(same["psnr"] == PSNR_CAP_DB)
    np.testing.assert_allclose(diff["ssim"], 100 * ssim(real[:, None], noisy[:, None]).per_frame[:, 0])


class ShiftWorld:
    """Stand-in world model: each step brightens the frame by the action's first dim."""

    def rollout(self, first, actions):
        frames, cur = [], first.astype(int)
        for t in range(actions.shape[1]):
            cur = np.clip(cur + actions[:, t, :1, None, None].astype(int), 0, 255)
            frames.append(cur.astype(np.uint8))
        return np.stack(frames, 1)

    def encode(self, frames):
        return frames

    def decode(self, codes):
        return codes


def test_evaluate_rollouts_perfect_model_beats_repeat_last():
    rng = np.random.default_rng(1)
    episodes = []
    for _ in range(3):
        acts = np.full((12, 2), 5.0, np.float32)
        f0 = rng.integers(0, 100, (16, 16, 3))
        frames = np.stack([np.clip(f0 + 5 * t, 0, 255) for t in range(13)]).astype(np.uint8)
        episodes.append((frames, acts))
    rows, rollouts = evaluate_rollouts(ShiftWorld(), episodes, lengths=(1, 10, 50))
    by = {(r["method"], r["requested_length"]): r for r in rows}
    assert by[("worldvla", 10)]["psnr"] > 80 > by[("repeat-last", 10)]["psnr"]
    assert by[("worldvla", 50)]["length"] == 12  # cut to the episodes' end
    assert rollouts[10].pred.shape == (3, 10, 16, 16, 3)
    assert side_by_side(rollouts[1].real[0], rollouts[1].pred[0], scale=2).shape == (1, 32, 68, 3)


class Obs:
    def __init__(self, x):
        self.images = {"cam": np.full((4, 4, 3), x, np.uint8)}
        self.instruction = "reach"


class CounterEnv:
    """Succeeds once the sum of executed actions exceeds the variation number."""

    camera = "cam"

    def reset(self, task, variation):
        self.goal, self.total = variation, 0.0
        return Obs(0)

    def step(self, action):
        self.total += float(action[0])
        return Obs(int(self.total) % 255), self.total >= self.goal

    def close(self):
        pass


def test_fresh_gif_dir_drops_the_last_runs_gifs(tmp_path):
    d = tmp_path / "gifs"
    d.mkdir()
    (d / "old.gif").write_bytes(b"GIF89a")
    (d / "notes.txt").write_text("kept")
    assert fresh_gif_dir(d) == d
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert fresh_gif_dir(tmp_path / "new" / "gifs").is_dir()


def test_spread_over_tasks_covers_every_task_first():
    keys = [f"demo_{i}" for i in range(9)]
    tasks = ["a"] * 5 + ["b"] * 3 + ["c"]
    assert spread_over_tasks(keys, tasks, 4) == ["demo_0", "demo_5", "demo_8", "demo_1"]
    # Asking for more than there are returns every key once.
    got = spread_over_tasks(keys, tasks, 20)
    assert sorted(got) == sorted(keys) and len(got) == len(keys)
    assert spread_over_tasks(keys, tasks, 0) == []


def test_run_agent_lockstep_and_summary():
    jobs = [("reach", v) for v in (1, 2, 3, 50)]
    replay = ReplayAgent({"reach": [np.ones((100, 1), np.float32)]})
    frames = {}
    res = run_agent(
        replay,
        CounterEnv,
        jobs,
        num_envs=2,
        max_steps=10,
        record=lambda a, t, v, f: frames.setdefault(v, f),
        record_jobs={0, 3},
        progress=False,
    )
    assert sorted((r.variation, r.success, r.steps) for r in res) == [
        (1, True, 1),
        (2, True, 2),
        (3, True, 3),
        (50, False, 10),
    ]
    assert sorted(frames) == [1, 50]  # the jobs asked for, not the first two
    s = summarize(res)["replay"]
    assert s.success == 0.75 and s.episodes == 4 and s.ci95[0] < 0.75 < s.ci95[1]
    rnd = run_agent(RandomAgent(np.zeros(1), np.ones(1) * 0.1), CounterEnv, jobs, 3, 5, progress=False)
    assert len(rnd) == 4 and isinstance(rnd[0], EpisodeResult)


def test_eval_policy_variations_option_parses_ranges_and_refuses_training_ones(tmp_path):
    from worldvla.commands.eval_policy import main, parse_variations
    from worldvla.errors import ConfigError

    assert parse_variations("1000-1002") == (1000, 1001, 1002)
    assert parse_variations("40, 41,1000-1001,41") == (40, 41, 1000, 1001)
    for bad in ("7-3", "a-b", ""):
        with pytest.raises(ConfigError, match="--variations"):
            parse_variations(bad)
    # Training placements are refused before anything is loaded.
    with pytest.raises(ConfigError, match="both train and test"):
        main([str(tmp_path / "no-run"), "--suite", "mw-quick", "--variations", "38-41"])
