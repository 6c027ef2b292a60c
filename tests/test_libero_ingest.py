"""Official LIBERO files -> episode store: no-op filter, failed demos, rotation, resize, split."""

import json

import h5py
import numpy as np
import pytest

from worldvla.data.libero_ingest import demo_succeeded, ingest_libero, noop_mask, split_per_task
from worldvla.errors import DataError

INSTRUCTION = "put the bowl on the plate"


def _actions(T, rng):
    a = rng.uniform(-0.5, 0.5, (T, 7))
    a[:, 6] = np.where(np.arange(T) < T // 2, -1.0, 1.0)  # open, then close
    return a


def _frames(T, size=16):
    """Frame t has pixel value t everywhere except a marked top-left corner."""
    f = np.repeat(np.arange(T, dtype=np.uint8)[:, None, None, None], size * size * 3, 1).reshape(
        T, size, size, 3
    )
    f = f.copy()
    f[:, 0, 0] = 255  # rotation moves this corner to the bottom-right
    return f


def write_official(path, demos, problem_info=True):
    """A file in the official LIBERO layout; ``demos`` maps key -> (actions, dones or None)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if problem_info:
            data.attrs["problem_info"] = json.dumps(
                {"language_instruction": INSTRUCTION, "problem_name": "x"}
            )
        for key, (actions, dones) in demos.items():
            g = data.create_group(key)
            T = len(actions)
            g.create_dataset("actions", data=actions.astype(np.float64))
            g.create_dataset("obs/agentview_rgb", data=_frames(T))
            g.create_dataset("obs/eye_in_hand_rgb", data=_frames(T))
            g.create_dataset("states", data=np.zeros((T, 9)))
            g.create_dataset("robot_states", data=np.zeros((T, 9)))
            if dones is not None:
                g.create_dataset("dones", data=dones)
                g.create_dataset("rewards", data=dones.astype(np.float64))


def test_noop_rule_needs_small_pose_and_unchanged_gripper():
    a = np.zeros((7, 7))
    a[:, 6] = [-1, -1, 1, 1, 1, 1, -1]
    a[3, :6] = 3e-5  # norm 7.3e-5 < 1e-4: a no-op
    a[4, :6] = 5e-5  # norm 1.2e-4 >= 1e-4: motion
    a[5, 0] = 2e-4  # motion
    # step 0: still, no previous action; steps 2 and 6: still but the gripper changed
    np.testing.assert_array_equal(noop_mask(a), [True, True, False, True, False, False, False])
    with pytest.raises(ValueError):
        noop_mask(np.zeros((3, 6)))


def test_success_signals():
    assert demo_succeeded(np.array([0, 0, 1]), None) is True
    assert demo_succeeded(np.array([0, 1, 0]), np.array([0, 0, 1.0])) is False  # dones take precedence
    assert demo_succeeded(None, np.array([0, 1.0])) is True
    assert demo_succeeded(None, None) is None


def test_split_is_per_task_deterministic_and_ordered_by_demo_number():
    keys = [f"demo_{i}" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)]  # 11 demos, unordered
    s = split_per_task(keys)
    assert [k for k in sorted(keys, key=lambda k: int(k[5:])) if s[k] == "val"] == ["demo_10"]
    assert sum(v == "train" for v in s.values()) == 10  # ceil(0.9 * 11)
    assert split_per_task([f"demo_{i}" for i in range(50)]) == split_per_task(
        [f"demo_{i}" for i in range(50)]
    )
    assert sum(v == "val" for v in split_per_task([f"demo_{i}" for i in range(50)]).values()) == 5


def test_ingest_drops_exactly_the_noop_steps_and_failed_demos(tmp_path):
    from worldvla.data.episodes import EpisodeReader

    rng = np.random.default_rng(0)
    T = 12
    a0 = _actions(T, rng)
    noops = [0, 3, 4, 9]  # 3 and 4: consecutive no-ops; gripper unchanged at all four
    for t in noops:
        a0[t, :6] = rng.uniform(-1, 1, 6) * 1e-5
    a0[6, :6] = 0.0  # step 6 is still, but the gripper switches from -1 to +1 there: kept
    assert a0[6, 6] != a0[5, 6]
    a1 = _actions(T, rng)
    done = np.zeros(T, np.uint8)
    done[-1] = 1
    demos = {f"demo_{i}": (a0 if i == 0 else a1, done) for i in range(10)}
    demos["demo_10"] = (a1, np.zeros(T, np.uint8))  # failed: last done flag unset
    src = tmp_path / "pick_bowl_demo.hdf5"
    write_official(src, demos)

    out = tmp_path / "libero.hdf5"
    report = ingest_libero(src, out, resolution=256)
    assert report.demos_in == 11 and report.demos_failed == 1 and report.episodes_out == 10
    assert report.noop_steps == len(noops) and report.steps_out == 10 * T - len(noops)

    episodes = {e.attrs["source_demo"]: e for e in EpisodeReader(out)}
    assert set(episodes) == {f"demo_{i}" for i in range(10)}
    e0 = episodes["demo_0"]
    kept = [t for t in range(T) if t not in noops]
    np.testing.assert_allclose(e0.actions, a0[kept].astype(np.float32))
    assert e0.actions.dtype == np.float32 and e0.instruction == INSTRUCTION
    frames = e0.frames["agentview"]
    assert frames.shape == (len(kept), 256, 256, 3) and frames.dtype == np.uint8
    # Frame t is still paired with action t (pixel value t), rotated 180°: marked corner at bottom-right.
    np.testing.assert_array_equal(frames[:, 128, 128, 0], kept)
    assert (frames[:, -1, -1] > 200).all() and (frames[:, 0, 0] < 200).all()
    # 90/10 split per task: 10 successful demos -> demo_9 is validation (the failed demo_10 is gone).
    assert {k for k, e in episodes.items() if e.attrs["split"] == "val"} == {"demo_9"}
    with h5py.File(out, "r") as f:
        split = json.loads(f["data"].attrs["split"])
        assert f["data"].attrs["resolution"] == 256
    assert len(split["pick_bowl"]["train"]) == 9 and len(split["pick_bowl"]["val"]) == 1


def test_ingest_errors_name_the_file(tmp_path):
    src = tmp_path / "bad_demo.hdf5"
    write_official(src, {"demo_0": (np.zeros((3, 7)), None)}, problem_info=False)
    with pytest.raises(DataError, match="bad_demo.hdf5.*language_instruction"):
        ingest_libero(src, tmp_path / "o.hdf5")
    with pytest.raises(DataError, match="no such file"):
        ingest_libero(tmp_path / "missing", tmp_path / "o.hdf5")
    with pytest.raises(DataError, match="resolution"):
        ingest_libero(src, tmp_path / "o.hdf5", resolution=300)
