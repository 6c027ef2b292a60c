import json

import h5py
import numpy as np
import pytest

from worldvla.data.episodes import Episode, EpisodeReader, write_episodes
from worldvla.errors import DataError


def _episode(i, T=5, D=4, cams=("corner",)):
    rng = np.random.default_rng(i)
    return Episode(
        key=f"demo_{i}",
        actions=rng.normal(size=(T, D)).astype(np.float32),
        frames={c: rng.integers(0, 256, (T, 8, 8, 3), dtype=np.uint8) for c in cams},
        instruction=f"do thing {i}",
        task="reach-v3",
        attrs={"variation": i, "seed": 7, "success": True},
    )


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "demos.hdf5"
    eps = [_episode(i) for i in range(12)]
    assert write_episodes(path, eps, {"env": "metaworld", "suite": {"name": "x"}}) == 12
    return path, eps


def test_round_trip_and_numeric_demo_order(store):
    path, eps = store
    with EpisodeReader(path) as r:
        assert r.keys[:3] == ["demo_0", "demo_1", "demo_2"] and r.keys[-1] == "demo_11"
        assert r.cameras == ["corner"] and r.action_dim == 4 and r.image_shape == (8, 8, 3)
        assert json.loads(r.file_attrs["suite"]) == {"name": "x"}
        e = r[10]
        assert e.key == "demo_10" and e.instruction == "do thing 10" and e.task == "reach-v3"
        assert e.attrs["variation"] == 10 and e.attrs["success"] and e.attrs["num_samples"] == 5
        np.testing.assert_array_equal(e.actions, eps[10].actions)
        np.testing.assert_array_equal(r.frames("demo_3", "corner"), eps[3].frames["corner"])
        assert len(list(r)) == 12


def test_write_is_atomic_no_temp_files_left(tmp_path):
    path = tmp_path / "x.hdf5"

    def bad():
        yield _episode(0)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_episodes(path, bad())
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_official_libero_layout_is_read(tmp_path):
    path = tmp_path / "libero_demo.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "put the bowl on the plate"})
        data.attrs["env_name"] = "libero_goal"
        for i in range(2):
            g = data.create_group(f"demo_{i}")
            g.create_dataset("actions", data=np.zeros((6, 7), np.float64))
            g.create_dataset("dones", data=np.r_[np.zeros(5), 1].astype(np.uint8))
            g.create_dataset("rewards", data=np.zeros(6))
            g.create_dataset("states", data=np.zeros((6, 40)))
            obs = g.create_group("obs")
            obs.create_dataset("agentview_rgb", data=np.zeros((6, 16, 16, 3), np.uint8))
            obs.create_dataset("eye_in_hand_rgb", data=np.zeros((6, 16, 16, 3), np.uint8))
            obs.create_dataset("joint_states", data=np.zeros((6, 7)))
            g.attrs["num_samples"] = 6
    with EpisodeReader(path, cameras=["agentview"]) as r:
        e = r[0]
        assert e.instruction == "put the bowl on the plate" and e.actions.dtype == np.float32
        assert e.actions.shape == (6, 7) and list(e.frames) == ["agentview"]
    assert EpisodeReader(path).cameras == ["agentview", "eye_in_hand"]


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        EpisodeReader(tmp_path / "nope.hdf5")
    bad = tmp_path / "garbage.hdf5"
    bad.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DataError, match="garbage.hdf5.*not a readable HDF5"):
        EpisodeReader(bad)


def test_truncated_file_gives_a_clear_error(store, tmp_path):
    path, _ = store
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    for frac in (0.3, 0.6, 0.9):
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(DataError, match="cut.hdf5"), EpisodeReader(cut) as r:
            for _ in r:
                pass


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.pop("data"), "no 'data' group"),
        (lambda f: [f["data"].pop(k) for k in list(f["data"])], "no demonstrations"),
        (lambda f: f["data/demo_3"].pop("actions"), "demo_3: missing 'actions'"),
        (
            lambda f: (
                f["data/demo_2"].pop("actions"),
                f["data/demo_2"].create_dataset("actions", data=np.zeros((5, 3), np.float32)),
            ),
            "action dimension",
        ),
        (
            lambda f: (
                f["data/demo_1"].pop("actions"),
                f["data/demo_1"].create_dataset("actions", data=np.zeros((4, 4), np.float32)),
            ),
            "demo_1: obs/corner_rgb has 5 frames but there are 4 actions",
        ),
        (
            lambda f: (
                f["data/demo_4/obs"].pop("corner_rgb"),
                f["data/demo_4/obs"].create_dataset("corner_rgb", data=np.zeros((5, 8, 8, 3), np.float32)),
            ),
            "demo_4: obs/corner_rgb must be uint8",
        ),
        (
            lambda f: (
                f["data/demo_5"].pop("actions"),
                f["data/demo_5"].create_dataset("actions", data=np.zeros((5, 4), np.int64)),
            ),
            "demo_5: actions must be floating point",
        ),
    ],
)
def test_inconsistent_files_name_the_demo_and_problem(store, edit, message):
    path, _ = store
    _edit(path, edit)
    with pytest.raises(DataError, match=message):
        EpisodeReader(path)


def test_nan_actions_are_reported_on_access(store):
    path, _ = store

    def poison(f):
        f["data/demo_6/actions"][2, 1] = np.nan

    _edit(path, poison)
    with EpisodeReader(path) as r, pytest.raises(DataError, match="demo_6: actions contain NaN or inf"):
        r[6]


def test_unknown_camera_is_refused(store):
    path, _ = store
    with pytest.raises(DataError, match="camera"):
        EpisodeReader(path, cameras=["wrist"])


def test_empty_file_is_not_hdf5(tmp_path):
    empty = tmp_path / "empty.hdf5"
    empty.touch()
    with pytest.raises(DataError, match="empty.hdf5.*not a readable HDF5"):
        EpisodeReader(empty)


def test_demo_without_steps_is_refused(store):
    path, _ = store

    def empty_demo(f):
        g = f["data/demo_7"]
        g.pop("actions")
        g.create_dataset("actions", data=np.zeros((0, 4), np.float32))
        g["obs"].pop("corner_rgb")
        g["obs"].create_dataset("corner_rgb", data=np.zeros((0, 8, 8, 3), np.uint8))

    _edit(path, empty_demo)
    with pytest.raises(DataError, match="demo_7: actions must be a non-empty"):
        EpisodeReader(path)


@pytest.mark.parametrize(
    ("episodes", "message"),
    [
        ([], "no episodes to write"),
        ([_episode(0), _episode(1, D=7)], "demo_1: action dimension 7 differs"),
        ([_episode(0, T=0)], "non-empty"),
        (
            [
                Episode(
                    "demo_0",
                    np.zeros((3, 4), np.float32),
                    {"corner": np.zeros((3, 8, 8), np.uint8)},
                    "i",
                    "t",
                )
            ],
            "frames must be uint8",
        ),
        (
            [Episode("demo_0", np.full((3, 4), np.inf, np.float32), {}, "i", "t")],
            "finite",
        ),
    ],
)
def test_writer_refuses_bad_episodes_and_leaves_no_file(tmp_path, episodes, message):
    with pytest.raises(DataError, match=message):
        write_episodes(tmp_path / "bad.hdf5", episodes)
    assert list(tmp_path.iterdir()) == []


def test_unknown_demo_key_is_a_data_error(store):
    path, _ = store
    with EpisodeReader(path) as r, pytest.raises(DataError, match="no demo 'demo_99'"):
        r["demo_99"]


def test_state_round_trip_and_files_without_state_still_load(store, tmp_path):
    from dataclasses import replace

    # Files written before the state existed (the store fixture has none) read with state None.
    with EpisodeReader(store[0]) as r:
        assert r.state_dim is None and r.state(0) is None and r[0].state is None
    rng = np.random.default_rng(0)
    eps = [replace(_episode(i), state=rng.normal(size=(5, 4)).astype(np.float32)) for i in range(3)]
    path = tmp_path / "state.hdf5"
    write_episodes(path, eps)
    with EpisodeReader(path) as r:
        assert r.state_dim == 4
        np.testing.assert_array_equal(r[2].state, eps[2].state)
    # A file where only some demos carry a state gives none (never a state in some episodes only).
    mixed = tmp_path / "mixed.hdf5"
    write_episodes(mixed, [eps[0], _episode(1)])
    with EpisodeReader(mixed) as r:
        assert r.state_dim is None and r[0].state is None
    # Bad states are refused by the writer (nothing written) and by the reader (demo named).
    with pytest.raises(DataError, match="state must be a finite"):
        write_episodes(tmp_path / "bad.hdf5", [replace(eps[0], state=np.zeros((4, 4)))])
    assert not (tmp_path / "bad.hdf5").exists()
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/state"]
        f["data/demo_1/obs"].create_dataset("state", data=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="demo_1: obs/state must be a floating"):
        EpisodeReader(path)
