"""Meta-World MT50 under LeRobot's evaluation protocol: constants, env, data, comparison table."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from worldvla.envs.instructions import LEROBOT_METAWORLD_DESCRIPTIONS, METAWORLD_INSTRUCTIONS
from worldvla.envs.mt50 import (
    CAMERA_POS,
    DIFFICULTY_GROUPS,
    MT50_TASKS,
    difficulty,
    eval_seeds,
)
from worldvla.envs.suites import suite_preset
from worldvla.errors import ConfigError
from worldvla.eval.mt50_report import PUBLISHED, experts_vs_policy, grouped, protocol_differences
from worldvla.eval.stats import weighted_wilson_interval, wilson_interval


def test_protocol_constants_match_lerobots_config():
    assert {g: len(t) for g, t in DIFFICULTY_GROUPS.items()} == {
        "easy": 28,
        "medium": 11,
        "hard": 6,
        "very_hard": 5,
    }
    assert len(set(MT50_TASKS)) == 50 and set(MT50_TASKS) == set(METAWORLD_INSTRUCTIONS)
    assert set(LEROBOT_METAWORLD_DESCRIPTIONS) == set(MT50_TASKS)
    assert eval_seeds() == tuple(range(1000, 1010))
    assert difficulty("push-v3") == "hard" and difficulty("stick-pull-v3") == "very_hard"
    with pytest.raises(ConfigError, match="difficulty"):
        difficulty("push-v2")
    # Published group means are the mean of the four groups, as printed.
    for p in PUBLISHED:
        assert abs(sum(p.groups) / 4 - p.mean) < 0.06, p.policy


def test_mt50_suites_hold_the_protocol_and_refuse_what_breaks_it():
    mt50 = suite_preset("mt50")
    assert mt50.tasks == MT50_TASKS and mt50.protocol == "lerobot"
    assert mt50.test_variations == eval_seeds() and mt50.max_steps == 500 and mt50.action_repeat == 1
    assert not set(mt50.train_variations) & set(range(0, 10_000))  # far from any likely eval seed
    assert mt50.episodes_per_task >= 50
    debug = suite_preset("mt50-debug")
    assert len(debug.tasks) == 2 and len({difficulty(t) for t in debug.tasks}) == 2
    for bad in (dict(camera="corner"), dict(action_repeat=2), dict(max_steps=501), dict(camera_zoom=1.5)):
        with pytest.raises(ConfigError, match="lerobot protocol"):
            replace(mt50, **bad)
    with pytest.raises(ConfigError, match="Did you mean 'lerobot'"):
        replace(mt50, protocol="lerobt")
    # The protocol is part of how frames look: a checkpoint trained on the project's own
    # protocol (or one written before the field existed) is refused on mt50.
    from worldvla.eval.policy_eval import check_rendering

    old = SimpleNamespace(camera="corner2", image_size=64, view={"camera_aim": None, "camera_zoom": 1.0})
    with pytest.raises(ConfigError, match="view"):
        check_rendering(old, mt50, "ckpt")
    check_rendering(SimpleNamespace(camera="corner2", image_size=64, view=mt50.view()), mt50, "ckpt")


def _lerobot_reference(task: str, seed: int):
    """LeRobot's MetaworldEnv set-up and reset(seed), written out from its source."""
    import metaworld

    mt1 = metaworld.MT1(task, seed=42)
    env = mt1.train_classes[task](render_mode="rgb_array", camera_name="corner2", width=64, height=64)
    env.set_task(mt1.train_tasks[0])
    env.model.cam_pos[2] = [0.75, 0.075, 0.7]
    env.reset()
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.seed(seed)
    obs, _ = env.reset(seed=seed)
    return env, obs


@pytest.mark.sim
@pytest.mark.parametrize("task", ["reach-v3", "pick-place-v3"])
def test_lerobot_env_reproduces_lerobots_scenes_and_frames(task):
    env = suite_preset("mt50").make_env()
    try:
        obs = env.reset(task, 1001)
        raw = env._envs[task]
        ref, ref_obs = _lerobot_reference(task, 1001)
        ref.close()
        # The same placement (object and goal) and the same robot state as LeRobot's env.
        np.testing.assert_array_equal(raw._last_rand_vec, ref._last_rand_vec)
        np.testing.assert_allclose(env._state, ref_obs, atol=1e-9)
        np.testing.assert_allclose(obs.state, ref_obs[:4], atol=1e-6)
        np.testing.assert_array_equal(raw.model.cam_pos[raw.model.camera("corner2").id], CAMERA_POS)
        assert obs.instruction == LEROBOT_METAWORLD_DESCRIPTIONS[task]
        # The frame is the renderer's output turned 180 degrees (LeRobot: np.flip(image, (0, 1))).
        np.testing.assert_array_equal(obs.images["corner2"], env._render(raw, "corner2"))
        unflipped = raw.mujoco_renderer.render("rgb_array")
        np.testing.assert_array_equal(obs.images["corner2"], unflipped[::-1, ::-1])
        # reset(seed) fixes the scene whatever ran before; other seeds place things elsewhere.
        first = raw._last_rand_vec.copy()
        env.reset(task, 1002)
        assert not np.allclose(raw._last_rand_vec, first)
        env.step(np.zeros(4))
        env.reset(task, 1001)
        np.testing.assert_array_equal(raw._last_rand_vec, first)
        # One env.step (5 physics steps) per action.
        for t in range(3):
            env.step(np.array([0.1, 0.0, 0.0, -1.0]))
            assert raw.curr_path_length == t + 1
    finally:
        env.close()


@pytest.mark.sim
def test_expert_solves_reach_within_the_step_limit_state_only():
    env = suite_preset("mt50").make_env(cameras=())
    try:
        obs = env.reset("reach-v3", 100_000)
        assert obs.images == {} and obs.state.shape == (4,)
        for t in range(env.max_steps):  # noqa: B007 - t is read after the loop
            obs, success, _ = env.expert_step(rate="control")
            if success:
                break
        assert success and t < 200
    finally:
        env.close()


def test_grouped_success_group_means_and_intervals():
    eps = []
    for task, k in (("reach-v3", 10), ("drawer-open-v3", 6), ("push-v3", 3), ("shelf-place-v3", 0)):
        eps += [{"agent": "a", "task": task, "success": i < k} for i in range(10)]
    r = grouped(eps)["a"]
    assert r["tasks"]["drawer-open-v3"]["success"] == 0.6
    assert r["groups"]["easy"]["success"] == 0.8 and r["groups"]["easy"]["episodes"] == 20
    assert set(r["groups"]) == {"easy", "hard", "very_hard"}
    m = r["mean"]
    assert m["groups"] == 3 and m["success"] == pytest.approx((0.8 + 0.3 + 0.0) / 3)
    assert m["ci_low"] < m["success"] < m["ci_high"]
    # Equal group sizes: the pooled Wilson interval.
    p, lo, hi = weighted_wilson_interval([3, 5], [10, 10])
    assert p == 0.4 and (lo, hi) == pytest.approx(wilson_interval(8, 20))
    # Unequal sizes: the small group's rate weighs as much as the large one's.
    p, lo, hi = weighted_wilson_interval([280, 0], [280, 50])
    assert p == 0.5 and lo < 0.5 < hi


def test_experts_vs_policy_correlates_the_two_rates_per_task():
    tasks = {t: {"success": r} for t, r in (("a", 1.0), ("b", 0.8), ("c", 0.0), ("d", 0.1))}
    experts = {"a": {"kept": 70, "tries": 70}, "b": {"kept": 66, "tries": 70}}
    experts |= {"c": {"kept": 20, "tries": 70}, "d": {"kept": 50, "tries": 70}}
    r = experts_vs_policy(tasks, experts)
    assert r["tasks"] == 4 and r["spearman"] == pytest.approx(1.0)  # same order
    assert set(r["weak_experts"]) == {"c", "d"} and r["policy_on_weak"] == pytest.approx(0.05)
    assert r["policy_on_strong"] == pytest.approx(0.9) and r["policy_failing"] == {"c": 20 / 70}
    flipped = experts_vs_policy({t: {"success": 1 - v["success"]} for t, v in tasks.items()}, experts)
    assert flipped["spearman"] == pytest.approx(-1.0)
    assert experts_vs_policy(tasks, {}) is None
    # one distinct rate: no correlation to compute, the rest still reported
    same = experts_vs_policy(tasks, {t: {"kept": 7, "tries": 7} for t in tasks})
    assert same["spearman"] is None and same["policy_on_weak"] is None


def test_protocol_differences_flag_a_cut_short_partial_run():
    full = {
        "suite": {**suite_preset("mt50").to_dict()},
        "episodes_per_task": 10,
        "metaworld_version": "3.1.1",
    }
    text = " ".join(protocol_differences(full))
    assert "CUT SHORT" not in text and "only" not in text and "64x64" in text and "3.0.0" in text
    short = {
        **full,
        "suite": {**full["suite"], "max_steps": 4, "tasks": ["reach-v3"]},
        "episodes_per_task": 2,
    }
    text = " ".join(protocol_differences(short))
    assert "CUT SHORT" in text and "only 1 of the 50 tasks" in text and "2 episodes per task" in text


@pytest.fixture(scope="module")
def debug_demos(tmp_path_factory):
    from worldvla.data.collect import collect

    path = tmp_path_factory.mktemp("mt50") / "demos.hdf5"
    report = collect(suite_preset("mt50-debug"), path, workers=1, progress=False)
    return path, report


@pytest.mark.sim
def test_collect_mt50_debug_records_the_state_beside_the_frames(debug_demos):
    from worldvla.data.episodes import EpisodeReader

    path, report = debug_demos
    suite = suite_preset("mt50-debug")
    assert report.kept == {t: 2 for t in suite.tasks}
    with EpisodeReader(path) as r:
        assert r.state_dim == 4 and r.cameras == ["corner2"] and r.image_shape == (64, 64, 3)
        for ep in r:
            assert ep.state.shape == (len(ep), 4) and ep.attrs["variation"] in suite.train_variations
            assert ep.instruction == LEROBOT_METAWORLD_DESCRIPTIONS[ep.task]
            # The state is the hand's position: it moves as the expert acts, the gripper stays in [0, 1].
            assert np.abs(np.diff(ep.state[:, :3], axis=0)).sum() > 0.05
            assert (ep.state[:, 3] >= 0).all() and (ep.state[:, 3] <= 1).all()
        assert json.loads(r.file_attrs["suite"])["protocol"] == "lerobot"


@pytest.mark.sim
@pytest.mark.slow
def test_eval_policy_lerobot_protocol_end_to_end(debug_demos, tmp_path):
    from worldvla.commands.eval_policy import main
    from worldvla.serving.random_checkpoint import write_random_checkpoint

    demos, _ = debug_demos
    ckpt = write_random_checkpoint(
        tmp_path / "run", action_dim=4, image_size=64, chunk_len=2, history=1, camera="corner2"
    )
    out = tmp_path / "eval"
    argv = [str(ckpt), "--protocol", "lerobot-mt50", "--suite", "mt50-debug", "--episodes-per-task", "2"]
    argv += ["--max-steps", "3", "--envs", "1", "--episodes", str(demos), "--out", str(out), "--gifs", "1"]
    assert main(argv) == 0
    table = json.loads((out / "mt50.json").read_text())
    tasks = suite_preset("mt50-debug").tasks
    assert set(table["agents"]) == {"worldvla", "random", "replay"}
    for r in table["agents"].values():
        assert set(r["tasks"]) == set(tasks) and all(t["episodes"] == 2 for t in r["tasks"].values())
        assert set(r["groups"]) == {difficulty(t) for t in tasks} and r["mean"]["groups"] == 2
    episodes = json.loads((out / "results.json").read_text())["episodes"]
    assert {(e["task"], e["variation"]) for e in episodes} == {(t, s) for t in tasks for s in (1000, 1001)}
    assert max(e["steps"] for e in episodes) <= 3
    md = (out / "mt50.md").read_text()
    assert "CUT SHORT" in md and "only 2 of the 50 tasks" in md
    assert "| SmolVLA (0.45B) (published) | 82.5 | 41.8 | 45 | 60 | 57.3 |" in md
    assert "**worldvla** (this run)" in md and "**random** (this run)" in md
    # The experts' success on the training seeds, from the episode file's collection counts.
    from worldvla.data.episodes import EpisodeReader

    with EpisodeReader(demos) as reader:
        kept = json.loads(reader.file_attrs["kept"])
    assert table["experts"] == {t: {"kept": kept[t], "tries": 2} for t in tasks}
    assert f"| {tasks[0]} | " in md and f" | {kept[tasks[0]]} / 2 |" in md
    assert table["experts_vs_policy"]["tasks"] == len(tasks)
    assert "## Do the experts' failures explain the failing tasks?" in md
    # Only the policy's episodes were rendered for GIFs: the baselines ran blind.
    assert all(g.name.startswith("worldvla_") for g in (out / "gifs").glob("*.gif"))
    # The protocol needs a LeRobot-protocol suite.
    with pytest.raises(ConfigError, match="not a LeRobot-protocol suite"):
        main([str(ckpt), "--protocol", "lerobot-mt50", "--suite", "debug"])
    with pytest.raises(ConfigError, match="--episodes DEMOS.hdf5"):
        main([str(ckpt), "--protocol", "lerobot-mt50"])
