"""Scripted-expert collection on the ``debug`` suite, end to end in the real simulator."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from worldvla.data.collect import collect
from worldvla.data.episodes import EpisodeReader
from worldvla.envs.suites import suite_preset
from worldvla.errors import ConfigError, DataError

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The debug suite collected twice with the same seed and noise, and once without noise."""
    d = tmp_path_factory.mktemp("collect")
    suite = suite_preset("debug")
    reports = {
        "a": collect(suite, d / "a.hdf5", seed=1, action_noise=0.3, workers=1, progress=False),
        "b": collect(suite, d / "b.hdf5", seed=1, action_noise=0.3, workers=2, progress=False),
        "clean": collect(suite, d / "clean.hdf5", seed=1, action_noise=0.0, workers=1, progress=False),
    }
    return suite, d, reports


def test_keeps_successes_on_training_variations_only(noisy):
    suite, d, reports = noisy
    assert reports["a"].kept == {"handle-press-v3": 2} and reports["a"].dropped == {"handle-press-v3": 0}
    with EpisodeReader(d / "a.hdf5") as r:
        assert len(r) == 2 and r.cameras == [suite.camera] and r.action_dim == 4
        assert r.image_shape == (suite.resolution, suite.resolution, 3)
        for ep in r:
            assert ep.attrs["success"] is True and ep.attrs["variation"] in suite.train_variations
            assert ep.task == "handle-press-v3" and ep.instruction == "press the handle down"
            assert np.abs(ep.actions).max() <= 1.0 and len(ep.actions) <= suite.max_steps


def test_same_seed_same_file_for_any_worker_count(noisy):
    _, d, _ = noisy
    with EpisodeReader(d / "a.hdf5") as a, EpisodeReader(d / "b.hdf5") as b:
        for ea, eb in zip(a, b, strict=True):
            np.testing.assert_array_equal(ea.actions, eb.actions)
            np.testing.assert_array_equal(ea.frames["corner"], eb.frames["corner"])


def test_stored_action_is_the_clean_expert_label(noisy):
    """DART: the noise changes the visited states, but the stored label at the (shared) first
    state is the expert's exact action, not the noisy executed one."""
    _, d, _ = noisy
    with EpisodeReader(d / "a.hdf5") as noisy_r, EpisodeReader(d / "clean.hdf5") as clean_r:
        for en, ec in zip(noisy_r, clean_r, strict=True):
            np.testing.assert_array_equal(en.frames["corner"][0], ec.frames["corner"][0])
            np.testing.assert_array_equal(en.actions[0], ec.actions[0])
            n = min(len(en.actions), len(ec.actions))
            assert not np.array_equal(en.actions[:n], ec.actions[:n])  # the noise did act


def test_all_failures_raise_and_write_nothing(tmp_path):
    hopeless = dataclasses.replace(suite_preset("debug"), max_steps=1)
    with pytest.raises(DataError, match="no expert episode of suite 'debug' succeeded"):
        collect(hopeless, tmp_path / "x.hdf5", workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_file_and_reports_drops(tmp_path):
    out = tmp_path / "d.hdf5"
    argv = ["collect", "--preset", "debug", "--out", str(out), "--workers", "1", "--episodes-per-task", "1"]
    argv += ["--explore-per-task", "2", "--explore-steps", "3"]
    r = subprocess.run(
        [sys.executable, "-m", "worldvla.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "handle-press-v3: kept 1, dropped 0 unsuccessful" in r.stdout
    assert "plus 2 exploratory segments" in r.stdout
    with EpisodeReader(out) as reader:
        assert len(reader) == 3  # the demonstration, then the world model's segments


def test_cli_rejects_unknown_suite():
    r = subprocess.run(
        [sys.executable, "-m", "worldvla.cli", "collect", "--preset", "mw-quik"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Did you mean 'mw-quick'" in r.stderr and "Traceback" not in r.stderr


def test_physics_rate_expert_is_recorded_and_labels_stay_in_range(tmp_path):
    suite = dataclasses.replace(suite_preset("debug"), action_repeat=4, expert_rate="physics")
    report = collect(suite, tmp_path / "p.hdf5", seed=0, action_noise=0.1, workers=1, progress=False)
    assert report.kept == {"handle-press-v3": 2}
    with EpisodeReader(tmp_path / "p.hdf5") as r:
        for ep in r:
            assert ep.attrs["expert_rate"] == "physics" and np.abs(ep.actions).max() <= 1.0
    with pytest.raises(ConfigError, match="expert_rate"):
        dataclasses.replace(suite, expert_rate="fast")


def test_a_killed_collection_resumes_its_unfinished_task_groups_only(tmp_path, monkeypatch):
    import worldvla.data.collect as col
    from worldvla.data.exploration import ExplorationConfig

    suite, explore = suite_preset("debug"), ExplorationConfig(per_task=2, steps=4)
    args = {"seed": 1, "action_noise": 0.3, "workers": 1, "progress": False, "exploration": explore}
    whole = collect(suite, tmp_path / "whole.hdf5", **args)
    real_explore, calls = col._explore, []

    def killed(job):
        raise KeyboardInterrupt  # the process dies while the exploratory segments run

    monkeypatch.setattr(col, "_explore", killed)
    out = tmp_path / "resumed.hdf5"
    with pytest.raises(KeyboardInterrupt):
        collect(suite, out, **args)
    assert not out.exists() and (tmp_path / ".resumed.hdf5.parts" / "demo-000.json").is_file()

    def counted_demo(job):
        calls.append(job)
        raise AssertionError("a finished task group ran again")

    monkeypatch.setattr(col, "_explore", real_explore)
    monkeypatch.setattr(col, "_demonstrate", counted_demo)
    report = collect(suite, out, **args)
    assert calls == [] and report.kept == whole.kept and report.steps == whole.steps
    assert report.explore_segments == 2 and not (tmp_path / ".resumed.hdf5.parts").exists()
    with EpisodeReader(tmp_path / "whole.hdf5") as a, EpisodeReader(out) as b:
        assert a.file_attrs == b.file_attrs
        for ea, eb in zip(a, b, strict=True):
            assert ea.attrs == eb.attrs
            np.testing.assert_array_equal(ea.actions, eb.actions)
            np.testing.assert_array_equal(ea.frames["corner"], eb.frames["corner"])


def test_parts_of_a_collection_with_other_settings_are_refused(tmp_path, monkeypatch):
    import worldvla.data.collect as col

    suite = suite_preset("debug")
    monkeypatch.setattr(col, "_demonstrate", lambda job: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        collect(suite, tmp_path / "x.hdf5", seed=1, workers=1, progress=False)
    with pytest.raises(DataError, match="interrupted collection with other settings"):
        collect(suite, tmp_path / "x.hdf5", seed=2, workers=1, progress=False)
