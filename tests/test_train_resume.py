"""Exact resumption: 2 + 2 steps == 4 steps; a SIGKILL loses only the steps after the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch

from worldvla.commands.train import main as train_main
from worldvla.data.datasets import InMemoryCache
from worldvla.errors import DataError
from worldvla.train import checkpoint as ckpt
from worldvla.train.config import train_preset
from worldvla.train.distributed import DistInfo
from worldvla.train.logs import read_metrics
from worldvla.train.loop import Trainer, train


def _weights(run):
    return ckpt.load_model_state(ckpt.latest_checkpoint(run))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "execution",
    [
        {},
        {"attention": "math"},
        pytest.param({"compile": True, "attention": "math"}, marks=pytest.mark.slow, id="compiled"),
    ],
)
def test_two_plus_two_steps_equal_four_steps(tmp_path, execution):
    cache = InMemoryCache.synthetic()
    # Dropout on, so the restored torch RNG state matters too.
    cfg = replace(train_preset("debug"), dropout=0.1, ckpt_every=4, val_every=1, **execution)
    full = train(cfg, cache, tmp_path / "full", progress=False)
    first = train(cfg, cache, tmp_path / "split", progress=False, stop_after=2)
    second = train(cfg, cache, tmp_path / "split", resume=True, progress=False)
    assert first.step == 2 and second.step == 4
    assert first.losses + second.losses == full.losses  # bitwise
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "split"))
    # The logged curve continues without a fork or a gap.
    steps = [r["step"] for r in read_metrics(tmp_path / "split")]
    assert steps == [1, 2, 3, 4]
    assert [r["loss"] for r in read_metrics(tmp_path / "split")] == [
        r["loss"] for r in read_metrics(tmp_path / "full")
    ]


def _grads(cfg, cache, run):
    trainer = Trainer(cfg, cache, run, DistInfo(), progress=False)
    total = trainer.forward_backward(0)
    return float(total[-2]), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Same global batch in 1 or 2 micro-batches: same loss and gradients (weights after an Adam
    step are not compared: Adam's first update is the sign of tiny gradient entries)."""
    cache = InMemoryCache.synthetic()
    cfg = train_preset("debug")
    loss1, g1 = _grads(cfg, cache, tmp_path / "one")
    loss2, g2 = _grads(replace(cfg, grad_accum=2), cache, tmp_path / "acc")
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], atol=1e-7, rtol=1e-5), k


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    cache = InMemoryCache.synthetic()
    cfg = replace(train_preset("debug"), ckpt_every=100)
    r = train(cfg, cache, tmp_path, minutes=1e-6, progress=False)
    assert r.stopped_by_budget and r.step == 1
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"
    r2 = train(cfg, cache, tmp_path, resume=True, progress=False)
    assert r2.step == cfg.steps and not r2.stopped_by_budget


_CHILD = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from worldvla.data.datasets import InMemoryCache
    from worldvla.train.config import train_preset
    from worldvla.train.loop import train
    cfg = replace(train_preset("debug"), steps=int(sys.argv[2]), ckpt_every=1, val_every=0)
    train(cfg, InMemoryCache.synthetic(), sys.argv[1], progress=False)
    """
)


def test_wall_time_adds_up_over_resumes_and_starts_late_for_older_checkpoints(tmp_path):
    cache = InMemoryCache.synthetic()
    cfg = replace(train_preset("debug"), ckpt_every=2, val_every=0)
    first = train(cfg, cache, tmp_path / "run", progress=False, stop_after=2)
    assert first.wall_seconds > 0 and first.wall_from_step == 0
    second = train(cfg, cache, tmp_path / "run", resume=True, progress=False)
    assert second.step == 4 and second.wall_from_step == 0
    assert (
        second.wall_seconds
        > ckpt.load_trainer_state(tmp_path / "run" / "checkpoints" / "step_00000002")["wall_seconds"]
    )
    walls = [r["wall_s"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert walls == sorted(walls) and len(walls) == 4  # one count across both commands
    # A checkpoint written before the count (no wall_seconds) starts it at its own step.
    old = tmp_path / "old"
    train(cfg, cache, old, progress=False, stop_after=2)
    path = old / "checkpoints" / "step_00000002"
    state = torch.load(path / ckpt.TRAINER_FILE, weights_only=False)
    del state["wall_seconds"], state["wall_from_step"]
    torch.save(state, path / ckpt.TRAINER_FILE)
    (path / "manifest.json").unlink()  # as written before manifests: loads with the checks it allows
    resumed = train(cfg, cache, old, resume=True, progress=False)
    assert resumed.step == 4 and resumed.wall_from_step == 2


def test_sigkill_leaves_the_last_checkpoint_and_resume_continues_the_curve(tmp_path):
    steps = 40
    run = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(run), str(steps)], env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            latest = ckpt.latest_checkpoint(run)
            if latest is not None and int(latest.name.split("_")[1]) >= 3:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the training child wrote no checkpoint in 60 s")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = ckpt.latest_checkpoint(run)
    assert killed_at is not None and int(killed_at.name.split("_")[1]) < steps, (
        "the child finished before the kill"
    )
    ckpt.load_trainer_state(killed_at)  # intact
    cfg = replace(train_preset("debug"), steps=steps, ckpt_every=1, val_every=0)
    cache = InMemoryCache.synthetic()
    resumed = train(cfg, cache, run, resume=True, progress=False)
    train(cfg, cache, tmp_path / "clean", progress=False)
    assert resumed.step == steps
    got = read_metrics(run)
    want = read_metrics(tmp_path / "clean")
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]


def test_cli_lists_presets_and_rejects_a_missing_cache(tmp_path, capsys):
    assert train_main(["--list-presets"]) == 0
    assert "mw-quick-no-chunk-mask" in capsys.readouterr().out
    with pytest.raises(DataError, match="token cache not found"):
        train_main(["--preset", "debug", "--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
