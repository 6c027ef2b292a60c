"""Read a local LeRobot dataset directory: metadata, episodes, numeric columns and frames.

LeRobot layouts read (``codebase_version`` in ``meta/info.json``)::

    v2.0 / v2.1                                       v3.0
    meta/info.json    fps, features, data_path,       meta/info.json
                      video_path, chunks_size
    meta/episodes.jsonl {episode_index, tasks,        meta/episodes/chunk-000/file-000.parquet
                         length} per line               episode_index, tasks, length,
                                                        data/chunk_index, data/file_index,
                                                        videos/<key>/chunk_index, .../file_index,
                                                        videos/<key>/from_timestamp, .../to_timestamp
    meta/tasks.jsonl  {task_index, task} per line     meta/tasks.parquet  task, task_index
    data/chunk-000/episode_000000.parquet             data/chunk-000/file-000.parquet (many episodes)
    videos/chunk-000/<key>/episode_000000.mp4         videos/<key>/chunk-000/file-000.mp4 (many episodes)

File names come from the ``data_path`` / ``video_path`` templates of ``info.json`` (v2.x
fills ``episode_chunk = episode_index // chunks_size``; v3.0 takes the chunk and file
indices from the episode table). A data row is one frame: ``episode_index``,
``frame_index``, ``timestamp`` (seconds since the episode's start), ``task_index`` and one
column per feature. A camera feature is either

- ``image``: the PNG/JPEG bytes inside the parquet (a struct ``{bytes, path}``), or
- ``video``: an mp4; row t shows the frame at ``from_timestamp + timestamp[t]`` (v2.x
  videos hold one episode, ``from_timestamp = 0``), matched to the nearest decoded frame
  within 0.4 frame periods, so a video with fewer frames than rows is an error.

The frames are decoded by :mod:`worldvla.data.media`. This module knows the format only;
what becomes of the data (LIBERO's no-op filter, split and episode store) is
:mod:`worldvla.data.lerobot_ingest`'s job. Any problem with the input raises
:class:`~worldvla.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.data.media import decode_images, decode_video
from worldvla.errors import DataError

INFO_PATH = "meta/info.json"
VERSIONS = ("v2.0", "v2.1", "v3.0")
CAMERA_DTYPES = ("image", "video")
_INDEX_COLUMNS = ("episode_index", "frame_index", "timestamp", "task_index")


@dataclass(frozen=True)
class LeRobotEpisode:
    """One episode as the episode table lists it: where its rows and its videos are."""

    index: int
    length: int | None
    tasks: tuple[str, ...]
    data_file: str  # relative to the dataset root
    videos: dict[str, tuple[str, float]] = field(default_factory=dict)  # feature -> (file, from_timestamp)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file: {e}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: missing (part of the LeRobot v2.x layout)")
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not JSON: {e}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _read_parquet(path: Path, columns: list[str] | None = None) -> Any:
    """A pyarrow table; any read problem becomes a :class:`DataError` naming ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file (truncated or corrupt?): {e}") from None


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file (truncated or corrupt?): {e}") from None


def _fill(template: str, where: Path, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"{where}: cannot fill the path template {template!r}: {e}") from None


class LeRobotDataset:
    """A local LeRobot dataset directory (v2.x or v3.0): metadata, episode columns, frames.

    Reads only what it is asked for; the last data file read stays cached, so reading the
    episodes of a v3.0 file in order reads that file once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such directory")
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise DataError(
                f"{self.root}: no {INFO_PATH}; not a LeRobot dataset directory (expected the LeRobot "
                "v2.x/v3.0 layout: meta/info.json, meta/episodes*, data/...)"
            )
        self.info_path = info_path
        info = _read_json(info_path)
        if not isinstance(info, dict):
            raise DataError(f"{info_path}: expected a JSON object")
        self.version = str(info.get("codebase_version", ""))
        if self.version not in VERSIONS:
            raise DataError(
                f"{info_path}: codebase_version {self.version or None!r} is not supported "
                f"(supported: {', '.join(VERSIONS)})"
            )
        try:
            self.fps = float(info["fps"])
            self.features: dict[str, dict[str, Any]] = dict(info["features"])
            self.data_path = str(info["data_path"])
            self.chunks_size = int(info.get("chunks_size") or 1000)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{info_path}: needs 'fps', 'features' and 'data_path'") from None
        if not self.fps > 0:
            raise DataError(f"{info_path}: fps must be positive, got {info['fps']!r}")
        self.video_path = info.get("video_path")
        self.video_features = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        if self.version.startswith("v2"):
            self.tasks = self._tasks_v2()
            self.episodes = self._episodes_v2()
        else:
            self.tasks = self._tasks_v3()
            self.episodes = self._episodes_v3()
        if not self.episodes:
            raise DataError(f"{self.root}: the episode table lists no episodes")
        self._cache: tuple[str, set[str], Any] | None = None  # (data file, columns, table)

    # ------------------------------------------------------------------ metadata
    def _tasks_v2(self) -> dict[int, str]:
        rows = _read_jsonl(self.root / "meta/tasks.jsonl")
        try:
            return {int(r["task_index"]): str(r["task"]) for r in rows}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{self.root / 'meta/tasks.jsonl'}: lines need 'task_index' and 'task'") from None

    def _tasks_v3(self) -> dict[int, str]:
        path = self.root / "meta/tasks.parquet"
        table = _read_parquet(path)
        # pandas writes the task text as the frame's index, which parquet keeps as a column.
        text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if text is None or "task_index" not in table.column_names:
            raise DataError(f"{path}: needs columns 'task' and 'task_index', has {table.column_names}")
        return dict(zip(map(int, table["task_index"].to_pylist()), map(str, table[text].to_pylist())))

    def _episodes_v2(self) -> list[LeRobotEpisode]:
        path = self.root / "meta/episodes.jsonl"
        episodes = []
        for row in _read_jsonl(path):
            try:
                i = int(row["episode_index"])
                length = int(row["length"]) if "length" in row else None
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: every line needs an integer 'episode_index'") from None
            where = {"episode_chunk": i // self.chunks_size, "episode_index": i}
            videos = {}
            if self.video_path:
                for key in self.video_features:
                    videos[key] = (_fill(self.video_path, self.info_path, video_key=key, **where), 0.0)
            episodes.append(
                LeRobotEpisode(
                    index=i,
                    length=length,
                    tasks=tuple(map(str, row.get("tasks") or ())),
                    data_file=_fill(self.data_path, self.info_path, **where),
                    videos=videos,
                )
            )
        return sorted(episodes, key=lambda e: e.index)

    def _episodes_v3(self) -> list[LeRobotEpisode]:
        files = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
        if not files:
            raise DataError(f"{self.root / 'meta/episodes'}: no episode table (chunk-*/file-*.parquet)")
        episodes = []
        for path in files:
            # Skip the per-episode statistics columns: many, and not needed here.
            columns = [c for c in _parquet_columns(path) if not c.startswith("stats/")]
            for row in _read_parquet(path, columns).to_pylist():
                try:
                    i = int(row["episode_index"])
                    data_file = _fill(
                        self.data_path,
                        self.info_path,
                        chunk_index=int(row["data/chunk_index"]),
                        file_index=int(row["data/file_index"]),
                    )
                except DataError:
                    raise
                except (KeyError, TypeError, ValueError) as e:
                    raise DataError(
                        f"{path}: episode rows need 'episode_index', 'data/chunk_index' and "
                        f"'data/file_index' (missing or invalid: {e})"
                    ) from None
                videos = {}
                for key in self.video_features:
                    cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
                    if self.video_path and all(row.get(c) is not None for c in cols):
                        file = _fill(
                            self.video_path,
                            self.info_path,
                            video_key=key,
                            chunk_index=int(row[cols[0]]),
                            file_index=int(row[cols[1]]),
                        )
                        videos[key] = (file, float(row[cols[2]]))
                episodes.append(
                    LeRobotEpisode(
                        index=i,
                        length=int(row["length"]) if row.get("length") is not None else None,
                        tasks=tuple(map(str, row.get("tasks") or ())),
                        data_file=data_file,
                        videos=videos,
                    )
                )
        return sorted(episodes, key=lambda e: e.index)

    def describe_features(self) -> str:
        return ", ".join(
            f"{k} ({f.get('dtype')}, shape {tuple(f.get('shape') or ())})" for k, f in self.features.items()
        )

    def feature(self, name: str, dtypes: Sequence[str] | None = None) -> dict[str, Any]:
        """The ``info.json`` entry of feature ``name``; an unknown name lists the available ones."""
        if name not in self.features:
            raise DataError(f"{self.info_path}: no feature {name!r}; available: {self.describe_features()}")
        ft = self.features[name]
        if dtypes is not None and ft.get("dtype") not in dtypes:
            raise DataError(
                f"{self.info_path}: feature {name!r} has dtype {ft.get('dtype')!r}, need one of "
                f"{list(dtypes)}; available: {self.describe_features()}"
            )
        return ft

    def first_feature(self, candidates: Sequence[str], dtypes: Sequence[str], what: str) -> str:
        for name in candidates:
            if name in self.features and self.features[name].get("dtype") in dtypes:
                return name
        raise DataError(
            f"{self.info_path}: none of the usual {what} features {list(candidates)} is present; "
            f"name one (available: {self.describe_features()})"
        )

    # ------------------------------------------------------------------ episode data
    def table(self, ep: LeRobotEpisode, columns: Sequence[str]) -> Any:
        """The rows of ``ep`` in frame order: ``columns`` plus the index columns present."""
        import pyarrow as pa
        import pyarrow.compute as pc

        path = self.root / ep.data_file
        available = _parquet_columns(path)
        missing = [c for c in columns if c not in available]
        if missing:
            raise DataError(f"{path}: no column(s) {missing} (columns: {available})")
        wanted = set(columns) | {c for c in _INDEX_COLUMNS if c in available}
        if self._cache is None or self._cache[0] != ep.data_file or not wanted <= self._cache[1]:
            if self._cache is not None and self._cache[0] == ep.data_file:
                wanted |= self._cache[1]
            self._cache = None  # free the previous file first
            self._cache = (ep.data_file, wanted, _read_parquet(path, sorted(wanted)))
        table = self._cache[2]
        try:
            if "episode_index" in table.column_names:
                table = table.filter(pc.equal(table["episode_index"], ep.index))
            if "frame_index" in table.column_names:
                table = table.take(pc.sort_indices(table["frame_index"]))
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: cannot read the rows of episode {ep.index}: {e}") from None
        if len(table) == 0:
            raise DataError(f"{path}: no rows for episode {ep.index}")
        if ep.length is not None and len(table) != ep.length:
            raise DataError(
                f"{path}: episode {ep.index} has {len(table)} rows but the episode table says "
                f"{ep.length} (truncated?)"
            )
        return table

    def vectors(self, ep: LeRobotEpisode, name: str) -> np.ndarray:
        """Numeric feature ``name`` of ``ep`` as float32 ``(T, D)``; NaN/inf is an error."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.table(ep, [name])
        where = f"{self.root / ep.data_file}: episode {ep.index}: {name!r}"
        col = table[name].combine_chunks()
        if col.null_count:
            raise DataError(f"{where}: {col.null_count} missing values")
        is_list = (
            pa.types.is_list(col.type)
            or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)
        )
        sizes = set(pc.list_value_length(col).to_pylist()) if is_list else {1}
        if len(sizes) != 1:
            raise DataError(f"{where}: rows of different lengths {sorted(sizes)}")
        try:
            flat = col.flatten() if is_list else col
            values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
            values = values.reshape(len(col), sizes.pop())  # (T, D)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise DataError(f"{where}: not a numeric vector feature ({col.type}): {e}") from None
        bad = ~np.isfinite(values)
        if bad.any():
            t = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: NaN or inf values (first at frame {t})")
        return values.astype(np.float32)

    def task(self, ep: LeRobotEpisode) -> tuple[int | None, str]:
        """``(task_index, instruction)`` of ``ep``: from its rows' ``task_index``, else its ``tasks``."""
        table = self.table(ep, [])
        where = f"{self.root / ep.data_file}: episode {ep.index}"
        if "task_index" in table.column_names:
            indices = sorted(set(table["task_index"].to_pylist()))
            if len(indices) != 1:
                raise DataError(f"{where}: rows carry several task_index values {indices}; expected one")
            if indices[0] not in self.tasks:
                raise DataError(f"{where}: task_index {indices[0]} is not in the task table")
            return int(indices[0]), self.tasks[indices[0]]
        if len(ep.tasks) == 1:
            text = ep.tasks[0]
            return next((i for i, t in self.tasks.items() if t == text), None), text
        raise DataError(f"{where}: no task_index column and the episode table lists tasks {list(ep.tasks)}")

    def frames(self, ep: LeRobotEpisode, name: str) -> np.ndarray:
        """Camera feature ``name`` of ``ep`` as uint8 ``(T, H, W, 3)``, one frame per row."""
        dtype = self.feature(name, CAMERA_DTYPES).get("dtype")
        if dtype == "image":
            table = self.table(ep, [name])
            return decode_images(
                table[name], self.root, f"{self.root / ep.data_file}: episode {ep.index}: {name!r}"
            )
        table = self.table(ep, [])
        if "timestamp" in table.column_names:
            timestamps = np.asarray(table["timestamp"].to_pylist(), dtype=np.float64)
        elif "frame_index" in table.column_names:
            timestamps = np.asarray(table["frame_index"].to_pylist(), dtype=np.float64) / self.fps
        else:
            raise DataError(
                f"{self.root / ep.data_file}: neither 'timestamp' nor 'frame_index' to locate frames"
            )
        if name not in ep.videos:
            raise DataError(
                f"{self.root}: the episode table does not locate video {name!r} of episode {ep.index}"
            )
        file, start = ep.videos[name]
        return decode_video(self.root / file, start + timestamps, self.fps, f"episode {ep.index}")
