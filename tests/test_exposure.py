"""worldvla compare / worldvla.eval.exposure: held-out losses lined up at equal exposure."""

from __future__ import annotations

import json

import pytest

from worldvla.artifacts.checkpoint import write_manifest
from worldvla.cli import main as cli_main
from worldvla.errors import ConfigError, DataError
from worldvla.eval.exposure import compare_at_exposure, exposure_markdown
from worldvla.serving.random_checkpoint import write_random_checkpoint

VAL = ("demo_3", "demo_7")


def _run(tmp_path, name, losses, val=VAL, metrics_in="", **train):
    """A run directory whose checkpoint has the training fields ``train`` and whose
    metrics.jsonl has a validation record {step: (action_loss, world_loss)} per entry."""
    run = tmp_path / name
    ckpt = write_random_checkpoint(run, action_dim=4, image_size=32, val_episodes=val)
    cfg_path = ckpt / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["train"].update(train)
    cfg_path.write_text(json.dumps(doc))
    write_manifest(ckpt)
    lines = []
    for step, (a, w) in losses.items():
        lines.append(json.dumps({"step": step, "split": "train", "action_loss": 9.0, "world_loss": 9.0}))
        lines.append(json.dumps({"step": step, "split": "val", "action_loss": a, "world_loss": w}))
    folder = run / metrics_in if metrics_in else run
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_joint_and_action_only_line_up_at_equal_action_samples(tmp_path):
    # Joint: 16 of 32 samples are action samples; action-only: all 32. Step 2s of the joint
    # run has seen as many action samples as step s of the action-only run.
    joint = _run(
        tmp_path,
        "joint",
        {100: (2.0, 3.0), 200: (1.5, 2.5), 300: (1.4, 2.4), 400: (1.2, 2.2)},
        batch_size=32,
        world_fraction=0.5,
    )
    only = _run(
        tmp_path,
        "only",
        {100: (1.8, None), 200: (1.3, None)},
        metrics_in="train",
        batch_size=32,
        use_world_data=False,
        steps=200,
    )
    doc = compare_at_exposure([joint, only], "action")
    assert [r["samples"] for r in doc["rows"]] == [3_200, 6_400]
    assert [r["steps"] for r in doc["rows"]] == [[200, 100], [400, 200]]
    assert [r["losses"] for r in doc["rows"]] == [[1.5, 1.8], [1.2, 1.3]]
    assert doc["differences"] == []  # same model, split and validation batches
    table = exposure_markdown(doc)
    assert "| 6,400 | 400 | 200 | 1.2000 | 1.3000 | +0.1000 |" in table
    assert "16 action samples per step" in table and "32 action samples per step" in table


def test_world_kind_and_refusals(tmp_path):
    joint = _run(tmp_path, "joint", {100: (2.0, 3.0), 200: (1.5, 2.5)}, batch_size=8, world_fraction=0.25)
    world = _run(tmp_path, "world", {50: (None, 2.9), 100: (None, 2.6)}, batch_size=4, use_action_data=False)
    doc = compare_at_exposure([joint, world], "world")
    assert [(r["samples"], r["losses"]) for r in doc["rows"]] == [(200, [3.0, 2.9]), (400, [2.5, 2.6])]
    only = _run(tmp_path, "only", {100: (1.0, None)}, use_world_data=False)
    with pytest.raises(ConfigError, match="trains no world samples"):
        compare_at_exposure([joint, only], "world")
    other = _run(tmp_path, "other", {100: (1.0, 2.0)}, val=("demo_1",))
    with pytest.raises(DataError, match="holds out other episodes"):
        compare_at_exposure([joint, other], "action")
    with pytest.raises(ConfigError, match="at least two"):
        compare_at_exposure([joint], "action")
    with pytest.raises(ConfigError, match="unknown sample kind"):
        compare_at_exposure([joint, world], "text")


def test_bad_metrics_name_the_file_and_line(tmp_path):
    a = _run(tmp_path, "a", {100: (1.0, 2.0)})
    b = _run(tmp_path, "b", {100: (1.0, 2.0)})
    (b / "metrics.jsonl").write_text('{"step": 100, "split": "val", "action_loss": 1.0}\n{"step": 2\n')
    with pytest.raises(DataError, match=r"b/metrics.jsonl, line 2: not JSON"):
        compare_at_exposure([a, b], "action")
    (b / "metrics.jsonl").write_text('{"step": 100, "split": "train", "action_loss": 1.0}\n')
    with pytest.raises(DataError, match="no validation record with action_loss"):
        compare_at_exposure([a, b], "action")
    (b / "metrics.jsonl").unlink()
    with pytest.raises(DataError, match="no metrics.jsonl"):
        compare_at_exposure([a, b], "action")


def test_cli_prints_and_writes_atomically(tmp_path, capsys):
    a = _run(tmp_path, "a", {100: (1.0, 2.0), 200: (0.8, 1.9)}, batch_size=32)
    b = _run(tmp_path, "b", {100: (1.1, 2.1), 200: (0.7, 1.8)}, batch_size=32, val_batches=3)
    out = tmp_path / "cmp" / "table.md"
    out.parent.mkdir()
    assert cli_main(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 1,600 | 100 | 100 | 1.0000 | 1.1000 | +0.1000 |" in printed
    assert out.read_text() in printed
    assert "differs: val_batches: a=" in printed
    assert json.loads(out.with_suffix(".json").read_text())["rows"][1]["losses"] == [0.8, 0.7]
    assert cli_main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "missing: run directory not found" in capsys.readouterr().err
