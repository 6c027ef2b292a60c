"""LeRobot-format LIBERO datasets -> episode store: v2.x and v3.0, images in parquet and mp4 videos."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worldvla.data.episodes import EpisodeReader
from worldvla.data.lerobot_ingest import ingest_lerobot
from worldvla.data.lerobot_reader import LeRobotDataset
from worldvla.errors import DataError

FPS = 10
TASKS = {0: "put the bowl on the plate", 1: "open the top drawer"}
# episode -> task: task 0 has 10 episodes (9 train, 1 val), task 1 has 2 (both train)
EPISODE_TASKS = [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
N_EPISODES = len(EPISODE_TASKS)
NOOP = (0, 1)  # (episode, step) made a no-op
OPENPI = {"camera": "image", "wrist": "wrist_image", "action": "actions", "state": "state"}
LEROBOT = {
    "camera": "observation.images.image",
    "wrist": "observation.images.image2",
    "action": "action",
    "state": "observation.state",
}


def _length(i):
    return 5 + i % 3


def _actions(i):
    rng = np.random.default_rng(i)
    T = _length(i)
    a = rng.uniform(-0.5, 0.5, (T, 7)).astype(np.float32)
    a[:, 6] = np.where(np.arange(T) < T // 2, -1.0, 1.0)
    if i == NOOP[0]:
        a[NOOP[1], :6] = 1e-6  # gripper unchanged from step 1: a no-op
    return a


def _frames(i, size, wrist=False):
    """Gray frame t of episode i has value 20·t + 5·i (+100 for the wrist); top-left quadrant white."""
    T = _length(i)
    v = (20 * np.arange(T) + 5 * i + (100 if wrist else 0)) % 200
    f = np.repeat(v.astype(np.uint8), size * size * 3).reshape(T, size, size, 3)
    f[:, : size // 2, : size // 2] = 255  # rotation moves this to the bottom-right
    return f


def _png(img):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _write_mp4(path, frames):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "0", "g": "2"}  # frequent key frames, as LeRobot encodes: seeks land mid-file
        for img in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def make_dataset(root, version="v2.1", cameras="image", names=OPENPI, size=None, n=N_EPISODES):
    """A LeRobot dataset with the episodes above; ``cameras`` "image" (PNG in parquet) or "video"."""
    size = size or (256 if cameras == "image" else 32)
    v3 = version == "v3.0"
    cam_ft = {"dtype": cameras, "shape": [size, size, 3], "names": ["height", "width", "channel"]}
    features = {
        names["camera"]: cam_ft,
        names["wrist"]: dict(cam_ft),
        names["state"]: {"dtype": "float32", "shape": [8], "names": None},
        names["action"]: {"dtype": "float32", "shape": [7], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("index", "task_index")},
    }
    info = {
        "codebase_version": version,
        "robot_type": "panda",
        "fps": FPS,
        "chunks_size": 1000,
        "features": features,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
        if v3
        else "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None
        if cameras == "image"
        else "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
        if v3
        else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    vec = pa.list_(pa.float32(), 7) if v3 else pa.list_(pa.float32())  # both occur
    tables, ep_rows, videos, start = [], [], {names["camera"]: [], names["wrist"]: []}, 0
    for i in range(n):
        T = _length(i)
        cols = {
            names["action"]: pa.array(_actions(i).tolist(), vec),
            names["state"]: pa.array(np.zeros((T, 8)).tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(T) / FPS, pa.float32()),
            "frame_index": pa.array(np.arange(T), pa.int64()),
            "episode_index": pa.array([i] * T, pa.int64()),
            "index": pa.array(np.arange(start, start + T), pa.int64()),
            "task_index": pa.array([EPISODE_TASKS[i]] * T, pa.int64()),
        }
        for key, wrist in ((names["camera"], False), (names["wrist"], True)):
            frames = _frames(i, size, wrist)
            if cameras == "image":
                cols[key] = pa.StructArray.from_arrays(
                    [pa.array([_png(f) for f in frames], pa.binary()), pa.array([None] * T, pa.string())],
                    names=["bytes", "path"],
                )
            elif v3:
                videos[key].append(frames)
            else:
                _write_mp4(root / f"videos/chunk-000/{key}/episode_{i:06d}.mp4", frames)
        tables.append(pa.table(cols))
        row = {"episode_index": i, "tasks": [TASKS[EPISODE_TASKS[i]]], "length": T}
        if v3:
            file_index = 0 if i < n // 2 else 1  # two data files of several episodes each
            row |= {"data/chunk_index": 0, "data/file_index": file_index}
            row |= {"dataset_from_index": start, "dataset_to_index": start + T}
            for key in videos:
                done = sum(_length(j) for j in range(i))
                row |= {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": done / FPS,
                    f"videos/{key}/to_timestamp": (done + T) / FPS,
                }
        ep_rows.append(row)
        start += T
    if v3:
        for file_index in (0, 1):
            part = [t for i, t in enumerate(tables) if (i >= n // 2) == bool(file_index)]
            (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(part), root / f"data/chunk-000/file-{file_index:03d}.parquet")
        (root / "meta/episodes/chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta/episodes/chunk-000/file-000.parquet")
        pq.write_table(
            pa.table({"task_index": list(TASKS), "task": list(TASKS.values())}), root / "meta/tasks.parquet"
        )
        if cameras == "video":
            for key, parts in videos.items():
                _write_mp4(root / f"videos/{key}/chunk-000/file-000.mp4", np.concatenate(parts))
    else:
        (root / "data/chunk-000").mkdir(parents=True)
        for i, t in enumerate(tables):
            pq.write_table(t, root / f"data/chunk-000/episode_{i:06d}.parquet")
        lines = [json.dumps({k: r[k] for k in ("episode_index", "tasks", "length")}) for r in ep_rows]
        (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
        tasks = [json.dumps({"task_index": k, "task": v}) for k, v in TASKS.items()]
        (root / "meta/tasks.jsonl").write_text("\n".join(tasks) + "\n")
    return root


def _kept(i):
    keep = np.ones(_length(i), bool)
    if i == NOOP[0]:
        keep[NOOP[1]] = False
    return keep


def _check_store(out, n=N_EPISODES, exact=True, cameras=("agentview",), rotated=False):
    with EpisodeReader(out) as r:
        assert len(r) == n and r.cameras == sorted(cameras)
        splits = {}
        for k in range(n):
            e = r[k]
            i = e.attrs["source_episode"]
            assert i == k  # episodes keep their order
            keep = _kept(i)
            np.testing.assert_array_equal(e.actions, _actions(i)[keep])  # exact, float32
            assert e.instruction == TASKS[EPISODE_TASKS[i]]
            assert e.task == TASKS[EPISODE_TASKS[i]].replace(" ", "_")
            assert e.attrs["noop_steps"] == int((~keep).sum()) and e.attrs["source_steps"] == _length(i)
            for cam in cameras:
                frames = e.frames[cam]
                assert frames.shape == (keep.sum(), 256, 256, 3) and frames.dtype == np.uint8
                want = _frames(i, 256, wrist=cam == "eye_in_hand")[keep]
                if rotated:
                    want = want[:, ::-1, ::-1]
                if exact:
                    np.testing.assert_array_equal(frames, want)
                else:  # lossy video, then upsampled: compare away from the quadrant edges
                    for y, x in ((64, 64), (192, 192), (64, 192)):
                        diff = np.abs(frames[:, y, x].astype(int) - want[:, y, x].astype(int))
                        assert diff.max() <= 4, (cam, i, diff)
            splits.setdefault(EPISODE_TASKS[i], []).append(e.attrs["split"])
        assert splits[0] == ["train"] * 9 + ["val"] and splits[1] == ["train", "train"]
        assert r.file_attrs["resolution"] == 256
        split = json.loads(r.file_attrs["split"])
        assert split["put_the_bowl_on_the_plate"]["val"] == ["demo_11"]


def test_openpi_layout_images_in_parquet(tmp_path):
    src = make_dataset(tmp_path / "libero", "v2.1", "image", OPENPI)
    out = tmp_path / "out" / "libero.hdf5"
    report = ingest_lerobot(src, out, camera_features=("image", "wrist_image"))
    assert report.episodes_out == 12 and report.noop_steps == 1 and report.demos_in == 12
    assert report.steps_out == sum(_length(i) for i in range(12)) - 1
    _check_store(out, cameras=("agentview", "eye_in_hand"))
    with EpisodeReader(out) as r:
        assert not r.file_attrs["rotate_180_applied"] and r.file_attrs["rotated_180"]
        assert r.file_attrs["action_feature"] == "actions"


def test_lerobot_layout_v2_video(tmp_path):
    src = make_dataset(tmp_path / "libero", "v2.1", "video", LEROBOT)
    ds = LeRobotDataset(src)
    np.testing.assert_allclose(  # native resolution, straight from the decoder
        ds.frames(ds.episodes[4], "observation.images.image"), _frames(4, 32), atol=3
    )
    out = tmp_path / "out" / "libero.hdf5"
    ingest_lerobot(src, out)  # defaults: observation.images.image, action, no rotation
    _check_store(out, exact=False)


@pytest.mark.parametrize("cameras", ["image", "video"])
def test_v3_several_episodes_per_file(tmp_path, cameras):
    src = make_dataset(tmp_path / "libero", "v3.0", cameras, LEROBOT)
    out = tmp_path / "out" / "libero.hdf5"
    ingest_lerobot(src, out)
    _check_store(out, exact=cameras == "image")


def test_rotation_is_explicit_for_unknown_features(tmp_path):
    names = dict(OPENPI, camera="agentview_rgb")
    src = make_dataset(tmp_path / "libero", "v2.1", "image", names, size=16, n=2)
    out = tmp_path / "out" / "o.hdf5"
    with pytest.raises(DataError, match="agentview_rgb.*--rotate-180"):
        ingest_lerobot(src, out, camera_features=["agentview_rgb"])
    assert not out.parent.exists() or not os.listdir(out.parent)
    ingest_lerobot(src, out, camera_features=["agentview_rgb"], rotate_180=True)
    with EpisodeReader(out) as r:
        frames = r[1].frames["agentview_rgb"]  # 16 -> 256: the white quadrant is now bottom-right
        assert (frames[:, -8, -8] == 255).all() and (frames[:, 8, 8] < 255).all()
        assert r.file_attrs["rotate_180_applied"]


def _fails(src, out, match, **kw):
    with pytest.raises(DataError, match=match):
        ingest_lerobot(src, out, **kw)
    assert not out.parent.exists() or os.listdir(out.parent) == []  # nothing, not even a temp file


def test_bad_input_is_a_readable_error_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "o.hdf5"
    small = {"size": 16, "n": 3}

    missing = make_dataset(tmp_path / "a", "v2.1", "image", OPENPI, **small)
    (missing / "meta/info.json").unlink()
    _fails(missing, out, r"a: no meta/info.json")

    src = make_dataset(tmp_path / "b", "v2.1", "image", OPENPI, **small)
    _fails(src, out, r"info.json: no feature 'front'; available: image \(image", camera_features=["front"])
    _fails(src, out, r"no feature 'act'", action_feature="act")
    _fails(src, out, r"'state' has shape \(8,\)", action_feature="state")

    nan = make_dataset(tmp_path / "c", "v2.1", "image", OPENPI, **small)
    path = nan / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(path)
    a = _actions(1)
    a[3, 2] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("actions"), "actions", pa.array(a.tolist())), path)
    _fails(nan, out, r"episode_000001.parquet: episode 1: 'actions': NaN or inf values \(first at frame 3\)")

    wide = make_dataset(tmp_path / "d", "v2.1", "image", OPENPI, **small)
    path = wide / "data/chunk-000/episode_000002.parquet"
    t = pq.read_table(path)
    a8 = np.concatenate([_actions(2), np.zeros((_length(2), 1), np.float32)], axis=1)
    pq.write_table(t.set_column(t.schema.get_field_index("actions"), "actions", pa.array(a8.tolist())), path)
    _fails(wide, out, r"episode_000002.parquet: episode 2: 'actions' has 8 values per frame")

    cut = make_dataset(tmp_path / "e", "v2.1", "image", OPENPI, **small)
    path = cut / "data/chunk-000/episode_000002.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _fails(cut, out, r"episode_000002.parquet: not a readable parquet file \(truncated")

    short = make_dataset(tmp_path / "f", "v2.1", "video", LEROBOT, **small)
    video = short / "videos/chunk-000/observation.images.image/episode_000001.mp4"
    _write_mp4(video, _frames(1, 16)[:-2])  # two frames fewer than rows
    # Fails while writing (episode 0 is already in the temporary file): nothing is left.
    _fails(short, out, r"episode_000001.mp4 \(episode 1\): no frame at 0.400 s.*fewer frames than rows")

    bad_png = make_dataset(tmp_path / "g", "v2.1", "image", OPENPI, **small)
    path = bad_png / "data/chunk-000/episode_000002.parquet"
    t = pq.read_table(path)
    col = t["image"].combine_chunks()
    blobs = col.field("bytes").to_pylist()
    blobs[1] = blobs[1][:20]
    images = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), col.field("path")], names=["bytes", "path"]
    )
    pq.write_table(t.set_column(t.schema.get_field_index("image"), "image", images), path)
    _fails(bad_png, out, r"episode_000002.parquet: episode 2: 'image': frame 1 is not a readable image")

    old = make_dataset(tmp_path / "h", "v2.1", "image", OPENPI, **small)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v1.6"}))
    _fails(old, out, r"codebase_version 'v1.6' is not supported")


def test_cli_detects_lerobot_and_exits_nonzero_on_errors(tmp_path, capsys):
    from worldvla.cli import main

    src = make_dataset(tmp_path / "libero", "v2.1", "image", OPENPI, size=16, n=3)
    out = tmp_path / "out.hdf5"
    assert main(["ingest-libero", "--src", str(src), "--out", str(out)]) == 0
    assert "lerobot: 3 files, 3 demos -> 3 episodes" in capsys.readouterr().out
    with EpisodeReader(out) as r:
        assert len(r) == 3 and r.cameras == ["agentview"] and r.image_shape == (256, 256, 3)

    argv = ["ingest-libero", "--src", str(src), "--out", str(tmp_path / "o2.hdf5")]
    assert main([*argv, "--camera-feature", "front"]) == 2
    assert "no feature 'front'; available: image" in capsys.readouterr().err
    assert main([*argv, "--cameras", "agentview"]) == 2
    assert "--camera-feature" in capsys.readouterr().err
    assert main([*argv, "--format", "hdf5", "--action-feature", "actions"]) == 2
    assert "LeRobot datasets only" in capsys.readouterr().err
    (src / "meta/info.json").unlink()
    assert main([*argv, "--format", "lerobot"]) == 2
    assert "no meta/info.json" in capsys.readouterr().err
    assert not (tmp_path / "o2.hdf5").exists()
