"""The MT50 experiment end to end on its tiny preset, and reusing a collected episode file."""

import dataclasses
import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worldvla.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_mt50_debug_quickstart_on_collected_demonstrations(tmp_path):
    demos = tmp_path / "mt50-debug.hdf5"
    r = _cli("collect", "--preset", "mt50-debug", "--out", str(demos), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    r = _cli(
        "quickstart", "--preset", "mt50-debug", "--out", str(run), "--episodes", str(demos), "--no-progress"
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = json.loads((run / "stages.json").read_text())
    assert all(s["done"] for s in stages["stages"].values())
    collect = stages["stages"]["collect"]
    assert collect["copied_from"] == str(demos.resolve())
    assert (run / "data" / "episodes.hdf5").read_bytes() == demos.read_bytes()
    # The evaluation is the protocol's comparison: groups, mean of groups, baselines, published rows.
    table = json.loads((run / "eval_policy" / "mt50.json").read_text())
    assert set(table["agents"]) == {"worldvla", "random", "replay"}
    assert set(stages["stages"]["eval_policy"]["mean_of_groups"]) == {"worldvla", "random", "replay"}
    assert set(table["agents"]["worldvla"]["groups"]) == {"easy", "medium"}  # reach, sweep-into
    md = (run / "report.md").read_text()
    assert "Policy under LeRobot's Meta-World protocol" in md and "(published)" in md
    assert "the frame, the instruction and the 4-d state" in md  # mt50 reads the state
    # A second command finds every stage done and does nothing again.
    r = _cli("quickstart", "--preset", "mt50-debug", "--out", str(run), "--no-progress")
    assert r.returncode == 0 and "[train] done earlier" in r.stdout
    # --episodes again: the same file is accepted, another one refused before anything runs.
    r = _cli(
        "quickstart", "--preset", "mt50-debug", "--out", str(run), "--episodes", str(demos), "--no-progress"
    )
    assert r.returncode == 0 and "[collect] done earlier" in r.stdout
    other = tmp_path / "other.hdf5"
    other.write_bytes(demos.read_bytes()[:-1] + b"x")
    before = (run / "stages.json").read_bytes()
    r = _cli(
        "quickstart", "--preset", "mt50-debug", "--out", str(run), "--episodes", str(other), "--no-progress"
    )
    assert r.returncode != 0 and "the run already holds other episodes" in r.stderr
    assert "Traceback" not in r.stderr and (run / "stages.json").read_bytes() == before


def test_reuse_refuses_a_file_collected_otherwise_and_writes_nothing(tmp_path):
    from worldvla.data.collect import collect, reuse_collected
    from worldvla.data.exploration import ExplorationConfig
    from worldvla.envs.suites import suite_preset
    from worldvla.errors import DataError

    suite = suite_preset("debug")
    demos = tmp_path / "demos.hdf5"
    collect(suite, demos, episodes_per_task=1, workers=1, progress=False)
    out = tmp_path / "run" / "episodes.hdf5"
    other = dataclasses.replace(suite, max_steps=29)
    for kwargs, field in (
        ({"seed": 1}, "seed"),
        ({"action_noise": 0.1}, "action_noise"),
        ({"episodes_per_task": 2}, "episodes_per_task"),
        ({"exploration": ExplorationConfig(per_task=2, steps=6)}, "exploration"),
        ({"suite": other}, "suite"),
    ):
        args = {"suite": suite, "episodes_per_task": 1, **kwargs}
        with pytest.raises(DataError, match=f"collected with this experiment's {field} "):
            reuse_collected(demos, out, **args)
        assert not out.parent.exists() or not list(out.parent.iterdir())
    report = reuse_collected(demos, out, suite, episodes_per_task=1)
    assert out.read_bytes() == demos.read_bytes()
    assert report.kept == {"handle-press-v3": 1} and "copied 1 successful episodes" in report.summary()
    with pytest.raises(DataError, match="not a readable HDF5"):
        bad = tmp_path / "bad.hdf5"
        bad.write_bytes(b"not hdf5")
        reuse_collected(bad, tmp_path / "other.hdf5", suite)
