"""The main job end to end on its tiny preset: every stage for real (simulator included)."""

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def test_quickstart_debug_end_to_end_and_resume(tmp_path):
    run = tmp_path / "qs"
    cmd = [
        sys.executable,
        "-m",
        "worldvla.cli",
        "quickstart",
        "--preset",
        "debug",
        "--out",
        str(run),
        "--no-progress",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "report:" in r.stdout
    stages = json.loads((run / "stages.json").read_text())
    assert all(s["done"] for s in stages["stages"].values())
    # The experiment's parts are objects, recorded by name as before (tests/test_experiments.py
    # pins the whole record): an existing run directory resumes unchanged.
    from worldvla.experiments import experiment_preset

    recorded = stages["experiment"]
    assert (recorded["suite"], recorded["tokenizer"], recorded["train"], recorded["train_overrides"]) == (
        "debug",
        "mw64",
        "mw-quick-debug",
        [],
    )
    assert recorded == json.loads(json.dumps(experiment_preset("debug").to_dict()))
    for name, steps in (("tokenizer", 20), ("train", 6)):  # the full step budgets, whatever the machine
        st = stages["stages"][name]
        assert st["step"] == st["total_steps"] == steps and st["stopped"] is None, st
    pol = json.loads((run / "eval_policy" / "results.json").read_text())
    assert set(pol["summary"]) == {"worldvla", "random", "replay"}  # baselines in the same table
    assert pol["meta"]["commit"] is not None or pol["meta"]["machine"]["cpus"] > 0
    world = json.loads((run / "eval_world" / "results.json").read_text())
    methods = {row["method"] for row in world["rows"]}
    assert methods == {"worldvla", "repeat-last", "tokenizer"}
    md = (run / "report.md").read_text()
    assert set(world["action_sensitivity"]["per_span"]) == {"1"}  # one-step world samples
    for needle in (
        "closed-loop success",
        "World model",
        "training curves",
        ".gif",
        "action readout mean",
        "does it read its actions",
    ):
        assert needle in md
    assert (run / "report.html").read_text().startswith("<!doctype html>")
    assert list((run / "eval_policy" / "gifs").glob("*.gif")) and list(
        (run / "eval_world" / "gifs").glob("*.gif")
    )
    # A probe with actions of one's choosing, against the simulator, from a held-out start.
    probe = subprocess.run(
        [
            *cmd[:3],
            "probe-world",
            str(run / "train"),
            "--episodes",
            str(run / "data" / "episodes.hdf5"),
            "--actions",
            "zero",
            "--actions",
            "hold:0,0,1,0",
            "--steps",
            "3",
            "--start-step",
            "2",
            "--out",
            str(tmp_path / "probe"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-2000:]
    probed = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert [r["sequence"] for r in probed["rows"]] == ["demonstration", "zero", "hold 0,0,1,0"]
    assert all(r["steps"] == 3 for r in probed["rows"]) and probed["suite"] == "debug"
    assert probed["start_step"] == 2  # the simulator replayed the demonstration to the recorded frame
    for r in probed["rows"]:  # zero actions do not freeze Meta-World's arm: it settles after a reset
        assert 0 < r["psnr_moving_last"] <= 100 and r["change_simulator"] > 0 and r["change_imagined"] >= 0
    assert probed["rows"][1]["change_simulator"] != probed["rows"][2]["change_simulator"]
    assert "| hold 0,0,1,0 | 3 |" in probe.stdout and (tmp_path / "probe" / "probe.gif").stat().st_size > 0

    # The checkpoint knows how its frames were rendered; evaluation refuses another view.
    from dataclasses import replace

    from worldvla.envs.suites import suite_preset
    from worldvla.errors import ConfigError
    from worldvla.eval.policy_eval import check_rendering
    from worldvla.train.checkpoint import latest_checkpoint, load_bundle

    layout = load_bundle(latest_checkpoint(run / "train")).layout
    suite = suite_preset("debug")
    assert layout.view == suite.view() == {"camera_aim": None, "camera_zoom": 1.0, "protocol": "worldvla"}
    check_rendering(layout, suite, "ckpt")
    for other, needle in (
        (replace(suite, camera_zoom=1.5), "view"),
        (replace(suite, camera="topview"), "camera 'corner'"),
        (replace(suite, resolution=32), "64x64"),
    ):
        with pytest.raises(ConfigError, match=needle):
            check_rendering(layout, other, "ckpt")
    # Running again resumes: every stage but the report is skipped.
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and r2.stdout.count("skipped") == 6, r2.stdout

    # Carried to another machine without its episode file (the one large file), after
    # training and before the world model's evaluation: the file is collected again before
    # that stage and must hold the same episodes (the collect stage's content digest).
    import shutil

    def carry(to, **collect_changes):
        shutil.copytree(run, to, ignore=shutil.ignore_patterns("episodes.hdf5"))
        doc = json.loads((to / "stages.json").read_text())
        doc["stages"]["eval_world"]["done"] = False
        doc["stages"]["collect"].update(collect_changes)
        (to / "stages.json").write_text(json.dumps(doc))
        argv = [*cmd[:-2], str(to), "--no-progress"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    assert len(stages["stages"]["collect"]["content_sha256"]) == 64
    carried = tmp_path / "carried"
    r3 = carry(carried)
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    assert "collecting it again" in r3.stdout and "collected again: the same episodes" in r3.stdout
    assert "[eval_world] finished" in r3.stdout
    assert json.loads((carried / "stages.json").read_text())["stages"]["collect"]["collected_again"] == 1

    # Other episodes than the recorded ones stop the run, with the new file left aside.
    other = tmp_path / "other"
    r4 = carry(other, content_sha256="0" * 64)
    assert r4.returncode != 0 and "Traceback" not in r4.stderr
    assert "collected again, but it does not hold the episodes" in r4.stderr, r4.stderr[-2000:]
    assert (other / "data" / "episodes.hdf5.again").exists()
    assert not (other / "data" / "episodes.hdf5").exists()
    assert not json.loads((other / "stages.json").read_text())["stages"]["eval_world"]["done"]


def test_quickstart_refuses_a_run_directory_of_another_preset(tmp_path):
    run = tmp_path / "qs"
    run.mkdir()
    (run / "stages.json").write_text(
        json.dumps({"preset": "mw-quick", "experiment": {"name": "mw-quick"}, "stages": {}})
    )
    r = subprocess.run(
        [sys.executable, "-m", "worldvla.cli", "quickstart", "--preset", "debug", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "another configuration" in r.stderr and "Traceback" not in r.stderr


def test_data_of_another_suite_definition_is_refused_not_reused(tmp_path):
    """Same preset names, but the suite's definition changed since the data was made."""
    from worldvla.envs.suites import suite_preset
    from worldvla.errors import ConfigError
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import RunState

    exp = experiment_preset("debug")
    suite = json.loads(json.dumps(suite_preset("debug").to_dict()))
    run = tmp_path / "qs"
    run.mkdir()
    state = RunState(run, exp, suite)
    state.stage("collect")["done"] = True
    state.save()
    RunState(run, exp, suite)  # the same definition: resumes
    changed = {**suite, "expert_rate": "physics"}
    with pytest.raises(ConfigError, match="another definition of suite 'debug'"):
        RunState(run, exp, changed)
    # Data recorded before suite definitions were stored is refused too (it cannot be checked).
    doc = json.loads((run / "stages.json").read_text())
    del doc["suite"]
    (run / "stages.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="another definition"):
        RunState(run, exp, suite)


def test_a_run_made_before_a_suite_field_existed_is_still_reused(tmp_path):
    """Fields added to SuiteConfig / ExperimentConfig later count at their defaults."""
    from worldvla.errors import ConfigError
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import RunState

    exp = experiment_preset("debug")
    suite = json.loads(json.dumps(exp.suite.to_dict()))
    old_suite = {k: v for k, v in suite.items() if k not in ("camera_aim", "camera_zoom")}
    old_exp = {k: v for k, v in json.loads(json.dumps(exp.to_dict())).items() if k != "action_noise"}
    run = tmp_path / "qs"
    run.mkdir()
    stages = {"collect": {"done": True}}
    doc = {"preset": "debug", "experiment": old_exp, "suite": old_suite, "stages": stages}
    (run / "stages.json").write_text(json.dumps(doc))
    RunState(run, exp, suite)  # accepted
    doc["suite"] = {**old_suite, "resolution": 32}
    (run / "stages.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="another definition of suite"):
        RunState(run, exp, suite)
