"""Meta-World adapter and demonstration collection in the real simulator (MuJoCo, headless)."""

import subprocess
import sys

import numpy as np
import pytest

from worldvla.data.collect import collect
from worldvla.data.episodes import EpisodeReader
from worldvla.envs.instructions import METAWORLD_INSTRUCTIONS
from worldvla.envs.suites import SUITES, suite_preset
from worldvla.errors import ConfigError

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def env():
    e = suite_preset("debug").make_env()
    yield e
    e.close()


def test_reset_step_frames_and_success(env):
    obs = env.reset("handle-press-v3", 0)
    img = obs.images[env.camera]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert obs.instruction == METAWORLD_INSTRUCTIONS["handle-press-v3"]
    # Upright: the top rows show the (bright) background, the bottom rows the (dark) table legs.
    assert img[:8].mean() > img[-8:].mean()
    success = False
    for _ in range(env.max_steps):
        obs, success = env.step(env.expert_action())
        assert isinstance(success, bool)
        if success:
            break
    assert success, "the scripted expert should solve handle-press"


def test_variations_are_reproducible_and_distinct(env):
    a = env.reset("drawer-close-v3", 3).images[env.camera]
    b = env.reset("drawer-close-v3", 3).images[env.camera]
    c = env.reset("drawer-close-v3", 44).images[env.camera]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_bad_actions_and_tasks_are_refused(env):
    env.reset("handle-press-v3", 0)
    with pytest.raises(ConfigError, match="4 dims"):
        env.step(np.zeros(7))
    with pytest.raises(ConfigError, match="NaN"):
        env.step(np.array([0, 0, np.nan, 0]))
    with pytest.raises(ConfigError, match="did you mean|Did you mean"):
        env.reset("handle-pres-v3", 0)


def test_suites_split_variations_and_cover_instructions():
    for s in SUITES.values():
        assert not set(s.train_variations) & set(s.test_variations)
        assert all(t in METAWORLD_INSTRUCTIONS for t in s.tasks)
    with pytest.raises(ConfigError, match="Did you mean 'mw-quick'"):
        suite_preset("mw-quik")


def test_collect_debug_suite_is_deterministic(tmp_path):
    suite = suite_preset("debug")
    r1 = collect(suite, tmp_path / "a.hdf5", seed=1, action_noise=0.1, workers=1, progress=False)
    collect(suite, tmp_path / "b.hdf5", seed=1, action_noise=0.1, workers=1, progress=False)
    assert r1.kept == {"handle-press-v3": 2} and r1.dropped == {"handle-press-v3": 0}
    with EpisodeReader(tmp_path / "a.hdf5") as a, EpisodeReader(tmp_path / "b.hdf5") as b:
        assert len(a) == 2 and a.cameras == [suite.camera] and a.action_dim == 4
        for ea, eb in zip(a, b):
            assert ea.attrs["success"] and ea.attrs["variation"] in suite.train_variations
            np.testing.assert_array_equal(ea.actions, eb.actions)
            np.testing.assert_array_equal(ea.frames[suite.camera], eb.frames[suite.camera])


def test_collect_cli_writes_the_file(tmp_path):
    out = tmp_path / "d.hdf5"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "worldvla.cli",
            "collect",
            "--preset",
            "debug",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "kept 2" in r.stdout and out.exists()


def test_collect_cli_rejects_unknown_suite():
    r = subprocess.run(
        [sys.executable, "-m", "worldvla.cli", "collect", "--preset", "mw-quik"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Did you mean 'mw-quick'" in r.stderr and "Traceback" not in r.stderr
