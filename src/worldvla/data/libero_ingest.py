"""Convert the official LIBERO demonstrations into our episode store (SPEC §7).

Input: the official LIBERO HDF5 files (one per task, e.g. ``libero_spatial/<task>_demo.hdf5``)::

    data.attrs["problem_info"]       JSON with "language_instruction"
    data/demo_<i>/actions            float64 (T, 7): Δxyz, Δrotation(3), gripper (-1 open, +1 close)
    data/demo_<i>/obs/agentview_rgb  uint8 (T, 128, 128, 3), rendered upside down
    data/demo_<i>/obs/eye_in_hand_rgb
    data/demo_<i>/dones, rewards     (T,) success signals (optional)

Processing, in the order applied (each follows the reference data pipeline):

1. **Failed demos** are dropped when success information is present: a demo counts as
   successful if its last ``dones`` entry is set, or (without ``dones``) its last reward is
   positive. Without either signal the demo is kept and counted as "unknown".
2. **No-op steps** are dropped (:func:`noop_mask`): step t is a no-op when the Euclidean
   norm of its 6 pose dimensions (``actions[t, :6]``) is below 1e-4 *and* its gripper
   command equals the previous action's (``actions[t, 6] == actions[t-1, 6]``, exact
   equality; the first step only needs the norm condition). The reference compares with the
   previous *kept* action; that is the same rule, because a dropped step's gripper always
   equals the kept action before it. The frame observed before a dropped action goes with
   it, so ``frames[t]`` is still observed before ``actions[t]`` is executed.
   The reference re-renders the kept actions in the simulator; we keep the recorded frames
   (a no-op leaves the scene unchanged, so the frames match up to settling motion).
3. **Rotation** by 180° (``img[::-1, ::-1]``), as in evaluation (:mod:`worldvla.envs.libero_benchmark`).
4. **Resize** to ``resolution`` (256 or 512) with bicubic filtering. The official files hold
   128×128 frames, so this upsamples; the reference re-rendered at the target resolution.
5. **Split** per task, as the reference does: demos in ascending demo-number order, the
   first ``ceil(0.9 · n)`` train, the rest validation. Each episode's ``split`` attribute and
   the file's ``split`` attribute (JSON) record it.

Output: :func:`worldvla.data.episodes.write_episodes` (atomic): episodes ``demo_0..`` in
file order, actions float32, cameras named ``agentview`` / ``eye_in_hand``, and per-episode
attrs ``split``, ``source_file``, ``source_demo``, ``source_steps``, ``noop_steps``, ``success``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.envs.libero_benchmark import ACTION_DIM, RESOLUTIONS, rotate_180
from worldvla.errors import DataError

NOOP_THRESHOLD = 1e-4
VAL_FRACTION = 0.1
CAMERAS = {"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}  # ours -> official obs key
_DEMO_RE = re.compile(r"^demo_(\d+)$")


def noop_mask(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """``(T,)`` bool, True where step t is a no-op (rule in the module docstring, item 2)."""
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise ValueError(f"expected (T, {ACTION_DIM}) LIBERO actions, got {actions.shape}")
    still = np.linalg.norm(actions[:, :6], axis=1) < threshold
    same_gripper = np.ones(len(actions), dtype=bool)  # the first step has no previous action
    same_gripper[1:] = actions[1:, 6] == actions[:-1, 6]
    return still & same_gripper


def demo_succeeded(dones: np.ndarray | None, rewards: np.ndarray | None) -> bool | None:
    """Success from the recorded signals; None when the file has neither."""
    if dones is not None and len(dones):
        return bool(np.asarray(dones)[-1])
    if rewards is not None and len(rewards):
        return bool(np.asarray(rewards)[-1] > 0)
    return None


def split_in_order(n: int, val_fraction: float = VAL_FRACTION) -> list[str]:
    """``"train"`` for the first ``ceil((1 - val_fraction) · n)`` of ``n`` ordered demos, then ``"val"``."""
    n_train = math.ceil(n * (1.0 - val_fraction) - 1e-9)
    return ["train" if i < n_train else "val" for i in range(n)]


def split_per_task(keys: list[str], val_fraction: float = VAL_FRACTION) -> dict[str, str]:
    """``{demo key: "train" | "val"}``: first ``ceil((1 - val_fraction) · n)`` demos by number train."""
    ordered = sorted(keys, key=_demo_number)
    return dict(zip(ordered, split_in_order(len(ordered), val_fraction)))


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(T, size, size, 3)`` uint8, bicubic."""
    from PIL import Image

    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])


def _demo_number(key: str) -> int:
    m = _DEMO_RE.match(key)
    return int(m.group(1)) if m else 1 << 30


@dataclass
class IngestReport:
    files: int = 0
    demos_in: int = 0
    demos_failed: int = 0
    demos_success_unknown: int = 0
    demos_too_short: int = 0
    episodes_out: int = 0
    steps_in: int = 0
    noop_steps: int = 0
    steps_out: int = 0
    split: dict[str, dict[str, list[str]]] = field(
        default_factory=dict
    )  # task -> {"train": keys, "val": keys}

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.demos_in} demos -> {self.episodes_out} episodes "
            f"({self.demos_failed} failed, {self.demos_success_unknown} without success info, "
            f"{self.demos_too_short} empty after filtering); {self.steps_in} steps -> {self.steps_out} "
            f"({self.noop_steps} no-ops dropped)"
        )


def _official_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if src.is_dir():
        files = sorted(p for p in src.rglob("*.hdf5") if p.is_file())
        if files:
            return files
        raise DataError(f"{src}: no .hdf5 files found")
    raise DataError(f"{src}: no such file or directory")


def _read_official(path: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """``(instruction, task, demos)`` of one official LIBERO file; each demo a dict of arrays."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if "data" not in f:
            raise DataError(f"{path}: no 'data' group; is this an official LIBERO demonstration file?")
        data = f["data"]
        try:
            info = json.loads(data.attrs["problem_info"])
            instruction = str(info["language_instruction"]).strip()
        except (KeyError, ValueError, TypeError):
            raise DataError(
                f"{path}: data.attrs['problem_info'] lacks a JSON 'language_instruction'"
            ) from None
        task = path.name.removesuffix(".hdf5").removesuffix("_demo")
        demos = []
        for key in sorted(data, key=_demo_number):
            g = data[key]
            if "actions" not in g or "obs" not in g:
                raise DataError(f"{path}: data/{key} needs 'actions' and 'obs'")
            demo = {"key": key, "actions": np.asarray(g["actions"], dtype=np.float64)}
            for ours, theirs in CAMERAS.items():
                if theirs in g["obs"]:
                    demo[ours] = np.asarray(g["obs"][theirs])
            if "agentview" not in demo:
                raise DataError(f"{path}: data/{key}/obs has no 'agentview_rgb'")
            for sig in ("dones", "rewards"):
                demo[sig] = np.asarray(g[sig]) if sig in g else None
            T = len(demo["actions"])
            for cam in CAMERAS:
                if cam in demo and (
                    demo[cam].shape[0] != T or demo[cam].dtype != np.uint8 or demo[cam].ndim != 4
                ):
                    raise DataError(
                        f"{path}: data/{key}/obs/{CAMERAS[cam]} must be uint8 (T={T}, H, W, 3), "
                        f"got {demo[cam].dtype} {demo[cam].shape}"
                    )
            if demo["actions"].shape != (T, ACTION_DIM):
                raise DataError(
                    f"{path}: data/{key}/actions must be (T, {ACTION_DIM}), got {demo['actions'].shape}"
                )
            demos.append(demo)
    return instruction, task, demos


def ingest_libero(
    src: str | Path,
    out: str | Path,
    resolution: int = 256,
    cameras: tuple[str, ...] = ("agentview",),
    val_fraction: float = VAL_FRACTION,
    noop_threshold: float = NOOP_THRESHOLD,
) -> IngestReport:
    """Convert official LIBERO file(s) under ``src`` into one episode store at ``out``."""
    from worldvla.data.episodes import Episode, write_episodes

    if resolution not in RESOLUTIONS:
        raise DataError(f"resolution must be one of {RESOLUTIONS} (the reference's), got {resolution}")
    unknown = sorted(set(cameras) - set(CAMERAS))
    if unknown:
        raise DataError(f"unknown camera(s) {unknown}; LIBERO files have {sorted(CAMERAS)}")
    report = IngestReport()
    episodes = []
    for path in _official_files(Path(src)):
        report.files += 1
        instruction, task, demos = _read_official(path)
        # The 90/10 split is drawn over the demos that survive the success filter, so a
        # failed demo never takes a validation slot.
        splits = split_per_task(
            [d["key"] for d in demos if demo_succeeded(d["dones"], d["rewards"]) is not False], val_fraction
        )
        task_split: dict[str, list[str]] = {"train": [], "val": []}
        for demo in demos:
            report.demos_in += 1
            T = len(demo["actions"])
            report.steps_in += T
            ok = demo_succeeded(demo["dones"], demo["rewards"])
            if ok is False:
                report.demos_failed += 1
                continue
            report.demos_success_unknown += ok is None
            drop = noop_mask(demo["actions"], noop_threshold)
            keep = ~drop
            report.noop_steps += int(drop.sum())
            if not keep.any():
                report.demos_too_short += 1
                continue
            frames = {}
            for cam in cameras:
                if cam not in demo:
                    raise DataError(f"{path}: data/{demo['key']}/obs has no '{CAMERAS[cam]}'")
                frames[cam] = resize_frames(rotate_180(demo[cam][keep]), resolution)  # (T', R, R, 3)
            key = f"demo_{len(episodes)}"  # robomimic-style key; the source is in the attrs
            split = splits[demo["key"]]
            task_split[split].append(key)
            episodes.append(
                Episode(
                    key=key,
                    actions=demo["actions"][keep].astype(np.float32),
                    frames=frames,
                    instruction=instruction,
                    task=task,
                    attrs={
                        "split": split,
                        "source_file": path.name,
                        "source_demo": demo["key"],
                        "source_steps": T,
                        "noop_steps": int(drop.sum()),
                        "success": "unknown" if ok is None else "true",
                    },
                )
            )
            report.steps_out += int(keep.sum())
        report.split[task] = task_split
    report.episodes_out = len(episodes)
    if not episodes:
        raise DataError(f"{src}: no episode left after filtering ({report.summary()})")
    file_attrs = {
        "env": "libero",
        "source": "official LIBERO demonstrations",
        "resolution": resolution,
        "rotated_180": True,
        "noop_rule": f"||a[:6]|| < {noop_threshold} and a[6] == previous a[6]",
        "split_rule": f"per task, demos by number, first ceil({1 - val_fraction:g}*n) train, rest val",
        "split": json.dumps(report.split),
        "ingest_report": json.dumps({k: v for k, v in report.__dict__.items() if k != "split"}),
    }
    write_episodes(out, episodes, file_attrs)
    return report
