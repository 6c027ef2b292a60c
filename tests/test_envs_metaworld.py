"""Meta-World adapter in the real simulator (MuJoCo, headless), instructions and suites."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from worldvla.envs.base import Env
from worldvla.envs.instructions import METAWORLD_INSTRUCTIONS
from worldvla.envs.metaworld import MetaWorldEnv
from worldvla.envs.suites import SUITES, make_env, suite_preset
from worldvla.errors import ConfigError


@pytest.fixture(scope="module")
def env():
    e = suite_preset("debug").make_env()
    yield e
    e.close()


@pytest.mark.sim
def test_reset_step_frames_and_success(env):
    obs = env.reset("handle-press-v3", 0)
    img = obs.images[env.camera]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert obs.instruction == METAWORLD_INSTRUCTIONS["handle-press-v3"]
    # Upright: the top rows show the plain, bright background wall; the bottom rows the dark
    # table legs on the checkered floor (flipped, both inequalities reverse).
    top, bottom = img[:8].astype(float), img[-8:].astype(float)
    assert top.mean() > bottom.mean() + 10 and top.std() < bottom.std() - 10
    success = False
    for _ in range(env.max_steps):
        obs, success = env.step(env.expert_action())
        assert isinstance(success, bool)
        if success:
            break
    assert success, "the scripted expert should solve handle-press"


@pytest.mark.sim
def test_variations_are_reproducible_and_distinct(env):
    a = env.reset("drawer-close-v3", 3).images[env.camera]
    b = env.reset("drawer-close-v3", 3).images[env.camera]
    c = env.reset("drawer-close-v3", 44).images[env.camera]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.sim
def test_variations_beyond_50_are_further_seeded_placements(env):
    """Variation 50 + i is placement i of MT1 drawn with the next seed: a new scene, the same
    every time, and not placement i of the benchmark's own list."""
    goal = lambda: env._env("drawer-close-v3")._target_pos.copy()  # noqa: E731
    env.reset("drawer-close-v3", 3)
    g3 = goal()
    env.reset("drawer-close-v3", 53)
    g53 = goal()
    env.reset("drawer-close-v3", 53)
    assert np.array_equal(goal(), g53) and not np.allclose(g3, g53)
    with pytest.raises(ConfigError, match="variation must be >= 0"):
        env.reset("drawer-close-v3", -1)


@pytest.mark.sim
def test_bad_actions_and_tasks_are_refused(env):
    env.reset("handle-press-v3", 0)
    with pytest.raises(ConfigError, match="4 dims"):
        env.step(np.zeros(7))
    with pytest.raises(ConfigError, match="NaN"):
        env.step(np.array([0, 0, np.nan, 0]))
    with pytest.raises(ConfigError, match="did you mean|Did you mean"):
        env.reset("handle-pres-v3", 0)


def test_suites_split_variations_and_cover_instructions():
    for s in map(suite_preset, SUITES):
        assert not set(s.train_variations) & set(s.test_variations)
        assert all(t in METAWORLD_INSTRUCTIONS for t in s.tasks)
    with pytest.raises(ConfigError, match="Did you mean 'mw-quick'"):
        suite_preset("mw-quik")
    debug = suite_preset("debug")
    with pytest.raises(ConfigError, match="Did you mean 'reach-v3'"):
        dataclasses.replace(debug, tasks=("reach-v2",))
    with pytest.raises(ConfigError, match="Did you mean 'topview'"):
        dataclasses.replace(debug, camera="top_view")
    with pytest.raises(ConfigError, match=r"variations \[1\] are both train and test"):
        dataclasses.replace(debug, test_variations=(1, 45))


def test_ablation_suite_is_the_first_task_set_with_the_experts_asked_per_control_step():
    quick, v1 = suite_preset("mw-quick"), suite_preset("mw-quick-v1")
    control = suite_preset("mw-quick-control")
    assert (quick.expert_rate, v1.expert_rate, control.expert_rate) == ("physics", "physics", "control")
    assert dataclasses.replace(control, name="mw-quick-v1", expert_rate="physics") == v1
    # mw-quick-v1 differs from mw-quick in handle-pull standing where drawer-open is, and in
    # its demonstrations: 100 per task on the benchmark's 40 training placements, where
    # mw-quick has 400 on 200 (the 40 and 160 further seeded ones, none of them held out).
    swapped = tuple("drawer-open-v3" if t == "handle-pull-v3" else t for t in v1.tasks)
    assert (
        dataclasses.replace(
            v1,
            name="mw-quick",
            tasks=swapped,
            train_variations=quick.train_variations,
            episodes_per_task=quick.episodes_per_task,
        )
        == quick
    )
    assert (v1.train_variations, v1.episodes_per_task) == (tuple(range(40)), 100)
    assert len(quick.train_variations) == 200 and quick.test_variations == tuple(range(40, 50))
    # Its experiment preset runs the quickstart's recipe on it, as it was before exploratory
    # world data (its committed results were made on demonstrations only).
    from worldvla.experiments import experiment_preset

    exp_v1 = experiment_preset("mw-quick-v1")
    assert exp_v1.explore_per_task == 0
    assert dataclasses.replace(
        exp_v1, name="mw-quick", suite=quick, tokenizer_steps=1200, explore_per_task=300
    ) == experiment_preset("mw-quick")
    with pytest.raises(ConfigError, match="expert_rate"):
        dataclasses.replace(quick, expert_rate="native")


def test_make_env_builds_the_suites_adapter_without_starting_the_simulator():
    # Construction is lazy (MuJoCo scenes and GL contexts appear on the first reset).
    for suite in ("mw-quick", suite_preset("mw-10")):
        env = make_env(suite)
        s = suite_preset(suite) if isinstance(suite, str) else suite
        assert isinstance(env, Env) and env.camera == s.camera and env.max_steps == s.max_steps
        assert env.action_dim == 4 and env.control_hz == 80.0 / s.action_repeat
        env.close()
    with pytest.raises(ConfigError, match="Did you mean 'debug'"):
        make_env("debgu")


@pytest.mark.sim
def test_switching_tasks_keeps_each_scene_correct(env):
    """Each task has its own GL context; rendering one after another task's context was made
    must not draw with the wrong context (regression: frames came out dark and garbled)."""
    from worldvla.envs.metaworld import MetaWorldEnv

    a = env.reset("handle-press-v3", 1).images[env.camera]
    env.reset("reach-v3", 1)
    b = env.reset("handle-press-v3", 1).images[env.camera]
    np.testing.assert_array_equal(a, b)
    # Two adapters used in turn (how evaluation batches envs) each render their own scene.
    other = MetaWorldEnv(camera=env.camera, resolution=env.resolution)
    try:
        c = other.reset("reach-v3", 1).images[env.camera]
        np.testing.assert_array_equal(env.reset("handle-press-v3", 1).images[env.camera], a)
        np.testing.assert_array_equal(other.reset("reach-v3", 1).images[env.camera], c)
        assert not np.array_equal(a, c)
    finally:
        other.close()


@pytest.mark.sim
def test_only_the_last_scenes_stay_built_and_an_evicted_one_is_rebuilt_the_same():
    """Memory stays bounded over many tasks (an MT50 evaluation's every env visits all 50)."""
    env = MetaWorldEnv(camera="corner", resolution=32, max_scenes=2)
    try:
        a = env.reset("handle-press-v3", 1).images["corner"]
        env.reset("reach-v3", 1)
        env.reset("button-press-v3", 1)  # evicts handle-press, the least recently used
        assert list(env._envs) == ["reach-v3", "button-press-v3"]
        env.reset("reach-v3", 2)  # a hit: reach becomes the most recent
        assert list(env._envs) == ["button-press-v3", "reach-v3"]
        b = env.reset("handle-press-v3", 1).images["corner"]  # rebuilt, same frame
        np.testing.assert_array_equal(a, b)
        assert list(env._envs) == ["reach-v3", "handle-press-v3"]
        env.step(np.zeros(4))
    finally:
        env.close()
    with pytest.raises(ConfigError, match="max_scenes"):
        MetaWorldEnv(max_scenes=0)


@pytest.mark.sim
def test_several_cameras_and_state_only_mode():
    from worldvla.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(camera="corner", resolution=32, cameras=("corner", "topview"))
    try:
        obs = env.reset("reach-v3", 0)
        assert {c: i.shape for c, i in obs.images.items()} == {"corner": (32, 32, 3), "topview": (32, 32, 3)}
        assert not np.array_equal(obs.images["corner"], obs.images["topview"])
    finally:
        env.close()
    blind = MetaWorldEnv(cameras=())
    try:
        assert blind.reset("reach-v3", 0).images == {}
        obs, success = blind.step(blind.expert_action())
        assert obs.images == {} and isinstance(success, bool)
    finally:
        blind.close()


@pytest.mark.sim
def test_instructions_cover_every_installed_task():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert set(METAWORLD_INSTRUCTIONS) == set(ALL_V3_ENVIRONMENTS) and len(METAWORLD_INSTRUCTIONS) == 50
    assert len(set(METAWORLD_INSTRUCTIONS.values())) == 50  # no two tasks share a prompt


@pytest.mark.sim
def test_unusable_gl_backend_is_a_readable_error():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldvla.cli",
            "collect",
            "--preset",
            "debug",
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MUJOCO_GL": "bogus"},
    )
    assert r.returncode == 2 and "MUJOCO_GL='bogus'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.sim
def test_expert_step_label_moves_the_hand_as_far_as_the_expert():
    """At action_repeat > 1 the expert acts at the physics rate; repeating the stored label
    (the mean of its actions) for one control step moves the mocap target as far as it went."""
    env = MetaWorldEnv(camera="corner", resolution=32, action_repeat=4, max_steps=30)
    try:
        env.reset("handle-press-v3", 0)
        sim = env._envs["handle-press-v3"]
        replanned, checked = False, 0
        for _ in range(8):
            start = sim.data.mocap_pos.copy()
            first = env.expert_action()
            obs, success, label = env.expert_step()
            assert label.shape == (4,) and label.dtype == np.float32 and np.abs(label).max() <= 1.0
            assert obs.images["corner"].shape == (32, 32, 3) and isinstance(success, bool)
            end = sim.data.mocap_pos[0]
            free = ~(np.isclose(end, sim.mocap_low) | np.isclose(end, sim.mocap_high))  # not at a bound
            expected = 4 * label[:3] * sim.action_scale
            np.testing.assert_allclose((end - start[0])[free], expected[free], atol=1e-6)
            checked += int(free.sum())
            replanned = replanned or not np.allclose(label, first, atol=1e-3)
        assert checked >= 12
        assert replanned, "the expert should change its action inside some control step"
        # Control rate: asked once, held; the label is the executed action.
        first = env.expert_action()
        _, _, label = env.expert_step(rate="control")
        np.testing.assert_array_equal(label, first)
        with pytest.raises(ConfigError, match="expert rate"):
            env.expert_step(rate="native")
    finally:
        env.close()


@pytest.mark.sim
def test_camera_aim_and_zoom():
    """An aimed camera looks at its point; a zoomed one shows the middle of the plain view."""
    aim = np.array([0.04, 0.65, 0.22])
    plain = MetaWorldEnv(camera="corner", resolution=32)
    zoomed = MetaWorldEnv(camera="corner", resolution=32, camera_zoom=2.0)
    aimed = MetaWorldEnv(camera="corner", resolution=32, camera_aim=tuple(aim), camera_zoom=1.5)
    try:
        a = plain.reset("reach-v3", 0).images["corner"].astype(float)
        z = zoomed.reset("reach-v3", 0).images["corner"].astype(float)
        middle = np.kron(a[8:24, 8:24], np.ones((2, 2, 1)))  # the plain view's middle, 2x
        assert np.abs(z - middle).mean() < 0.5 * np.abs(z - a).mean()
        aimed.reset("reach-v3", 0)
        sim = aimed._envs["reach-v3"]
        cid = sim.model.camera("corner").id
        look = -sim.data.cam_xmat[cid].reshape(3, 3)[:, 2]
        to_aim = (aim - sim.data.cam_xpos[cid]) / np.linalg.norm(aim - sim.data.cam_xpos[cid])
        np.testing.assert_allclose(look, to_aim, atol=1e-6)
        fovy = np.rad2deg(2 * np.arctan(np.tan(np.deg2rad(22.5)) / 1.5))
        np.testing.assert_allclose(sim.model.cam_fovy[cid], fovy)
        # The smallest rotation keeps the roll: the image's right axis barely moves.
        before = plain._envs["reach-v3"].data.cam_xmat[cid].reshape(3, 3)[:, 0]
        assert sim.data.cam_xmat[cid].reshape(3, 3)[:, 0] @ before > 0.95
    finally:
        for e in (plain, zoomed, aimed):
            e.close()
    with pytest.raises(ConfigError, match="camera_zoom"):
        MetaWorldEnv(camera_zoom=0.0)
    with pytest.raises(ConfigError, match="camera_aim"):
        MetaWorldEnv(camera_aim=(0.0, float("nan"), 0.2))
    hand = MetaWorldEnv(camera="gripperPOV", resolution=16, camera_zoom=2.0)
    try:
        with pytest.raises(ConfigError, match="not fixed in the world"):
            hand.reset("reach-v3", 0)
    finally:
        hand.close()
    with pytest.raises(ConfigError, match="camera_zoom"):
        dataclasses.replace(suite_preset("debug"), camera_zoom=-1.0)
