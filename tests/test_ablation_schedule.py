"""Sharing an ablation's runs between processes: locks, claim order, waiting for init runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from worldvla.ablation.config import ablation_preset
from worldvla.ablation.plan import level, plan
from worldvla.ablation.schedule import RunLock, claim, lock_path
from worldvla.errors import ConfigError


def test_the_study_runs_whole_levels_in_order_capacity_last():
    cfg = ablation_preset("claims-study")
    runs = plan(cfg)
    levels = [level(r.variants[0]) for r in runs]
    # Every seed of a level before the next level; the levels in the preset's order.
    assert levels == sorted(levels, key=levels.index)
    assert list(dict.fromkeys(levels)) == [
        "base",
        "demos-10",
        "demos-50",
        "explore",
        "pretrain",
        "compact",
        "small",
    ]
    base = [r for r in runs if level(r.variants[0]) == "base"]
    assert [r.seed for r in base] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # The same runs as seed-major order, only reordered (keys do not depend on the order).
    assert sorted(r.key for r in runs) == sorted(r.key for r in plan(replace(cfg, order="seeds")))


def test_a_locked_run_is_skipped_and_a_run_waits_for_its_init(tmp_path):
    cfg = ablation_preset("claims-study").select(["base/action-only", "pretrain/action-ft"], [0])
    runs = plan(cfg)  # base/action-only, base/world-only, pretrain/action-ft
    done: set[str] = set()
    trained = done.__contains__

    def is_done(r):
        return r.key in done

    # Another process holds the first run (flock: a second open file description conflicts).
    other = RunLock(lock_path(tmp_path, runs[0].key))
    assert other.acquire()
    r, lock, _ = claim(runs, tmp_path, is_done, trained)
    assert r is runs[1] and lock is not None
    # The fine-tuning run waits for the world model it starts from; nothing else is free.
    r2, lock2, waiting = claim(runs, tmp_path, is_done, trained)
    assert r2 is None and lock2 is None and waiting
    done.add(runs[1].key)
    lock.release()
    r3, lock3, _ = claim(runs, tmp_path, is_done, trained)
    assert r3 is runs[2]
    lock3.release()
    # A kill releases the lock: the run becomes free again.
    other.release()
    r4, lock4, _ = claim(runs, tmp_path, is_done, trained)
    assert r4 is runs[0]
    lock4.release()
    done.update(r.key for r in runs)
    assert claim(runs, tmp_path, is_done, trained) == (None, None, False)


def test_level_seeds_must_name_a_level_and_the_ablations_seeds():
    cfg = ablation_preset("claims-study")
    for bad in ((("capacity", (0,)),), (("small", (5,)),), (("small", ()),)):
        with pytest.raises(ConfigError, match="level_seeds"):
            replace(cfg, level_seeds=bad)
