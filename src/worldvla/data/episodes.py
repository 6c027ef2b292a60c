"""Episode store: HDF5 in the LIBERO / robomimic layout, with a validating reader.

Layout (the same as the official LIBERO demonstration files, so those read through this
code unchanged)::

    data/                         attrs: env, cameras (JSON list), problem_info (JSON), ...
      demo_<i>/                   attrs: instruction, task, variation, seed, success, num_samples
        actions                   float (T, D)        actions[t] is executed after observing obs[t]
        executed_actions          float (T, D)        optional: what was really executed when
                                                      ``actions`` are clean expert labels (DART noise)
        obs/<camera>_rgb          uint8 (T, H, W, 3)  one dataset per camera
        obs/state                 float32 (T, S)      optional proprioceptive state at obs[t]
                                                      (Meta-World: hand xyz + gripper opening)

Official LIBERO files store the instruction in ``data.attrs["problem_info"]`` (JSON key
``language_instruction``) rather than per demo, store float64 actions and carry extra
datasets (``dones``, ``rewards``, ``states``, ``robot_states``, ``obs/joint_states``, …);
the reader uses what it needs and ignores the rest. ``obs/state`` is optional: files
written before it existed, and LIBERO's, load with ``Episode.state = None``.

Files are written to a temporary name and renamed when complete (a kill never leaves a
half-written store under the final name). The reader validates structure on open and
every episode on access; any problem — not an HDF5 file, truncated, missing groups, wrong
shapes or dtypes, NaN/inf actions, inconsistent action dimensions — raises
:class:`~worldvla.errors.DataError` naming the file, the demo and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from worldvla.errors import DataError
from worldvla.utils.io import atomic_path

_DEMO_RE = re.compile(r"^demo_(\d+)$")
_RGB_SUFFIX = "_rgb"
_STATE = "state"  # obs/state


@dataclass
class Episode:
    key: str  # "demo_0"
    actions: np.ndarray  # float32 (T, D)
    frames: dict[str, np.ndarray]  # camera -> uint8 (T, H, W, 3)
    instruction: str
    task: str
    attrs: dict[str, Any] = field(default_factory=dict)
    # float32 (T, D) or None: the actions really executed, where ``actions`` are labels that
    # differ from them (demonstrations collected with injected noise); world-model samples
    # use these, policy samples the labels.
    executed_actions: np.ndarray | None = None
    state: np.ndarray | None = None  # float32 (T, S): proprioception observed with frames[t]

    def __len__(self) -> int:
        return len(self.actions)


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _store_attr(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if v is None:
        return "null"
    return v


def write_episodes(
    path: str | Path, episodes: Iterable[Episode], file_attrs: dict[str, Any] | None = None
) -> int:
    """Write ``episodes`` to ``path`` atomically; returns how many were written.

    Episodes become ``demo_0, demo_1, …`` in the order given (``Episode.key`` is not kept;
    put anything that identifies an episode in ``attrs``). ``file_attrs`` go to
    ``data.attrs`` (dicts/lists as JSON). Frames are chunked per frame and compressed with
    LZF (fast, lossless, part of h5py). Inconsistent episodes raise :class:`DataError`
    before anything appears under ``path``; so does an empty iterable (the reader would
    refuse a store without demonstrations).
    """
    path = Path(path)
    n = 0
    cameras: set[str] = set()
    action_dim: int | None = None
    with atomic_path(path, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for ep in episodes:
            actions = np.asarray(ep.actions, dtype=np.float32)
            if actions.ndim != 2 or len(actions) == 0 or not np.isfinite(actions).all():
                raise DataError(
                    f"{path}: episode {ep.key}: actions must be a finite, non-empty (T, D) array, "
                    f"got shape {actions.shape}"
                )
            if action_dim is not None and actions.shape[1] != action_dim:
                raise DataError(
                    f"{path}: episode {ep.key}: action dimension {actions.shape[1]} differs from the "
                    f"earlier episodes' {action_dim}"
                )
            action_dim = actions.shape[1]
            executed = None
            if ep.executed_actions is not None:
                executed = np.asarray(ep.executed_actions, dtype=np.float32)
                if executed.shape != actions.shape or not np.isfinite(executed).all():
                    raise DataError(
                        f"{path}: episode {ep.key}: executed_actions must be finite and shaped like the "
                        f"actions {actions.shape}, got {executed.shape}"
                    )
            g = data.create_group(f"demo_{n}")
            g.create_dataset("actions", data=actions)
            if executed is not None:
                g.create_dataset("executed_actions", data=executed)
            obs = g.create_group("obs")
            for cam, frames in ep.frames.items():
                frames = np.asarray(frames)
                if (
                    frames.dtype != np.uint8
                    or frames.ndim != 4
                    or frames.shape[-1] != 3
                    or len(frames) != len(actions)
                ):
                    raise DataError(
                        f"{path}: episode {ep.key}: camera {cam!r} frames must be uint8 "
                        f"(T={len(actions)}, H, W, 3), got {frames.dtype} {frames.shape}"
                    )
                # One chunk per frame: tokenizers read whole frames; LZF is fast and lossless.
                obs.create_dataset(
                    f"{cam}{_RGB_SUFFIX}", data=frames, chunks=(1, *frames.shape[1:]), compression="lzf"
                )
                cameras.add(cam)
            if ep.state is not None:
                state = np.asarray(ep.state, dtype=np.float32)
                if state.ndim != 2 or len(state) != len(actions) or not np.isfinite(state).all():
                    raise DataError(
                        f"{path}: episode {ep.key}: state must be a finite (T={len(actions)}, S) array, "
                        f"got shape {state.shape}"
                    )
                obs.create_dataset("state", data=state)
            g.attrs["instruction"] = ep.instruction
            g.attrs["task"] = ep.task
            g.attrs["num_samples"] = len(actions)
            for k, v in ep.attrs.items():
                g.attrs[k] = _store_attr(v)
            n += 1
        for k, v in (file_attrs or {}).items():
            data.attrs[k] = _store_attr(v)
        if n == 0:
            raise DataError(f"{path}: no episodes to write")
        data.attrs["cameras"] = json.dumps(sorted(cameras))
        data.attrs["total"] = n
    return n


class EpisodeReader:
    """Validating reader for episode stores (ours and official LIBERO files).

    Use as a context manager or call :meth:`close`. ``cameras`` restricts which cameras
    are read (default: all cameras present in every demo).
    """

    def __init__(self, path: str | Path, cameras: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: episode file not found")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}") from e
        try:
            self._open(cameras)
        except DataError:
            self._f.close()
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            self._f.close()
            raise DataError(
                f"{self.path}: cannot read the file structure (truncated or corrupt?): {e}"
            ) from e

    def _open(self, cameras: list[str] | None) -> None:
        if "data" not in self._f or not isinstance(self._f["data"], h5py.Group):
            raise DataError(
                f"{self.path}: no 'data' group (expected the LIBERO/robomimic layout data/demo_<i>/...)"
            )
        data = self._f["data"]
        keys = [k for k in data if _DEMO_RE.match(k)]
        if not keys:
            raise DataError(f"{self.path}: the file holds no demonstrations (no data/demo_<i> groups)")
        self.keys: list[str] = sorted(keys, key=lambda k: int(_DEMO_RE.match(k).group(1)))
        self.file_attrs: dict[str, Any] = {k: _attr_value(v) for k, v in data.attrs.items()}
        self._problem_instruction = None
        info = self.file_attrs.get("problem_info")
        if isinstance(info, str):
            try:
                self._problem_instruction = json.loads(info).get("language_instruction")
            except (json.JSONDecodeError, AttributeError):
                self._problem_instruction = None
        # Structure of every demo: actions and per-camera frames with consistent shapes.
        dims, cams_per_demo, shapes, state_dims = set(), [], set(), set()
        for k in self.keys:
            g = data[k]
            if "actions" not in g:
                raise DataError(f"{self.path}: {k}: missing 'actions'")
            a = g["actions"]
            if a.ndim != 2 or a.shape[0] == 0:
                raise DataError(
                    f"{self.path}: {k}: actions must be a non-empty (T, D) array, got shape {a.shape}"
                )
            if not np.issubdtype(a.dtype, np.floating):
                raise DataError(f"{self.path}: {k}: actions must be floating point, got {a.dtype}")
            dims.add(a.shape[1])
            obs = g.get("obs")
            cams = sorted(n[: -len(_RGB_SUFFIX)] for n in (obs or {}) if n.endswith(_RGB_SUFFIX))
            cams_per_demo.append(set(cams))
            for c in cams:
                ds = obs[f"{c}{_RGB_SUFFIX}"]
                if ds.dtype != np.uint8 or ds.ndim != 4 or ds.shape[-1] != 3:
                    raise DataError(
                        f"{self.path}: {k}: obs/{c}_rgb must be uint8 (T, H, W, 3), got {ds.dtype} {ds.shape}"
                    )
                if ds.shape[0] != a.shape[0]:
                    raise DataError(
                        f"{self.path}: {k}: obs/{c}_rgb has {ds.shape[0]} frames but there are "
                        f"{a.shape[0]} actions"
                    )
                shapes.add(ds.shape[1:])
            if obs is not None and _STATE in obs:
                st = obs[_STATE]
                if st.ndim != 2 or st.shape[0] != a.shape[0] or not np.issubdtype(st.dtype, np.floating):
                    raise DataError(
                        f"{self.path}: {k}: obs/{_STATE} must be a floating (T={a.shape[0]}, S) array, "
                        f"got {st.dtype} {st.shape}"
                    )
                state_dims.add(st.shape[1])
            else:
                state_dims.add(None)
        if len(dims) != 1:
            raise DataError(f"{self.path}: demos disagree on the action dimension: {sorted(dims)}")
        self.action_dim: int = dims.pop()
        # The state's dimension when every demo records one of the same size, else None
        # (then no demo's state is read: a policy must not see it in some episodes only).
        if len(state_dims) > 1 and None not in state_dims:
            raise DataError(f"{self.path}: demos disagree on the state dimension: {sorted(state_dims)}")
        self.state_dim: int | None = state_dims.pop() if len(state_dims) == 1 else None
        common = set.intersection(*cams_per_demo)
        if cameras is None:
            self.cameras: list[str] = sorted(common)
        else:
            missing = [c for c in cameras if c not in common]
            if missing:
                raise DataError(
                    f"{self.path}: camera(s) {missing} not present in every demo "
                    f"(available: {sorted(common)})"
                )
            self.cameras = list(cameras)
        if not self.cameras:
            raise DataError(f"{self.path}: no camera (obs/<camera>_rgb) is present in every demo")
        if len(shapes) > 1:
            raise DataError(f"{self.path}: frames of different shapes across demos/cameras: {sorted(shapes)}")
        self.image_shape: tuple[int, int, int] = tuple(shapes.pop())

    # ------------------------------------------------------------------ access
    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_f", None) is not None:
            self._f.close()
            self._f = None

    def __len__(self) -> int:
        return len(self.keys)

    def _key(self, i: int | str) -> str:
        if isinstance(i, str):
            if i not in self.keys:
                raise DataError(f"{self.path}: no demo {i!r}")
            return i
        return self.keys[i]

    def _read(self, key: str, what: str, fn: Any) -> Any:
        try:
            return fn()
        except DataError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise DataError(f"{self.path}: {key}: cannot read {what} (truncated or corrupt?): {e}") from e

    def actions(self, i: int | str) -> np.ndarray:
        key = self._key(i)
        a = self._read(key, "actions", lambda: self._f["data"][key]["actions"][()])
        a = np.asarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            t = int(np.argwhere(~np.isfinite(a))[0][0])
            raise DataError(f"{self.path}: {key}: actions contain NaN or inf (first at step {t})")
        return a

    def executed_actions(self, i: int | str) -> np.ndarray | None:
        """The actions really executed (``None`` when the file stores only ``actions``)."""
        key = self._key(i)
        g = self._f["data"][key]
        if "executed_actions" not in g:
            return None
        a = np.asarray(self._read(key, "executed_actions", lambda: g["executed_actions"][()]), np.float32)
        if a.shape != (g["actions"].shape[0], self.action_dim) or not np.isfinite(a).all():
            raise DataError(
                f"{self.path}: {key}: executed_actions must be finite and shaped like the actions "
                f"{g['actions'].shape}, got {a.shape}"
            )
        return a

    def frames(self, i: int | str, camera: str) -> np.ndarray:
        key = self._key(i)
        if camera not in self.cameras:
            raise DataError(f"{self.path}: camera {camera!r} not available (have {self.cameras})")
        return self._read(
            key, f"obs/{camera}_rgb", lambda: self._f["data"][key]["obs"][f"{camera}{_RGB_SUFFIX}"][()]
        )

    def state(self, i: int | str) -> np.ndarray | None:
        """The episode's proprioceptive state, float32 (T, S); None if the file has none in every demo."""
        if self.state_dim is None:
            return None
        key = self._key(i)
        s = self._read(key, f"obs/{_STATE}", lambda: self._f["data"][key]["obs"][_STATE][()])
        s = np.asarray(s, dtype=np.float32)
        if not np.isfinite(s).all():
            t = int(np.argwhere(~np.isfinite(s))[0][0])
            raise DataError(f"{self.path}: {key}: obs/{_STATE} contains NaN or inf (first at step {t})")
        return s

    def attrs(self, i: int | str) -> dict[str, Any]:
        key = self._key(i)
        return self._read(
            key, "attributes", lambda: {k: _attr_value(v) for k, v in self._f["data"][key].attrs.items()}
        )

    def __getitem__(self, i: int | str) -> Episode:
        key = self._key(i)
        attrs = self.attrs(key)
        instruction = attrs.pop("instruction", None) or self._problem_instruction or ""
        task = attrs.pop("task", None) or self.file_attrs.get("env_name") or self.file_attrs.get("env") or ""
        return Episode(
            key=key,
            actions=self.actions(key),
            frames={c: self.frames(key, c) for c in self.cameras},
            instruction=str(instruction),
            task=str(task),
            attrs=attrs,
            executed_actions=self.executed_actions(key),
            state=self.state(key),
        )

    def __iter__(self) -> Iterator[Episode]:
        for k in self.keys:
            yield self[k]


def content_digest(path: str | Path) -> str:
    """sha256 of what an episode file holds — every group's attributes and every dataset's
    name, dtype, shape and decoded values, in name order — independent of how HDF5 laid the
    file out or compressed it. Two collections of the same episodes agree here even where
    their bytes differ (the LZF compressor's output depends on memory it leaves
    uninitialized). Raises DataError if the file cannot be read."""
    import hashlib

    h = hashlib.sha256()

    def attrs(obj: h5py.HLObject) -> None:
        items = {k: _attr_value(obj.attrs[k]) for k in sorted(obj.attrs)}
        h.update(json.dumps(items, sort_keys=True, default=str).encode())

    def visit(name: str, obj: h5py.HLObject) -> None:
        h.update(f"\0{name}\0".encode())
        attrs(obj)
        if isinstance(obj, h5py.Dataset):
            h.update(f"{obj.dtype.str}{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj[()]).tobytes())
        else:
            for key in sorted(obj):
                visit(f"{name}/{key}", obj[key])

    p = Path(path)
    try:
        with h5py.File(p, "r") as f:
            visit("", f)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{p}: cannot read the episode file to fingerprint it ({e})") from None
    return h.hexdigest()
