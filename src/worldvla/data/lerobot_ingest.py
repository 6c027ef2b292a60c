"""Convert a local LeRobot-format LIBERO dataset into our episode store (SPEC §7).

The dataset is read by :class:`worldvla.data.lerobot_reader.LeRobotDataset` (the layouts
it reads are listed there).

Published LIBERO conversions (all derived from OpenVLA's regenerated ``libero_*_no_noops``
data, which replayed the official demos in the simulator at 256×256, dropped no-op steps
and failed replays, and rotated the frames by 180° when it was written out):

=========================  ==================================  ===========================
layout                     camera features                     action feature
=========================  ==================================  ===========================
openpi (image in parquet)  ``image``, ``wrist_image``          ``actions``
LeRobot (video or image)   ``observation.images.image``,       ``action``
                           ``observation.images.image2``
=========================  ==================================  ===========================

Their frames are therefore already in the evaluation orientation (openpi's and LeRobot's
LIBERO clients rotate the simulator's frames to match them), so for these features the
default is *not* to rotate; any other camera feature needs an explicit ``rotate_180``.

Processing, in order:

1. **No-op steps** are dropped with the same rule as the official ingest
   (:func:`worldvla.data.libero_ingest.noop_mask`). On data that was already filtered
   this drops nothing (the rule is idempotent); ``noop_threshold=0`` turns it off.
2. **Rotation** by 180° only if ``rotate_180`` (default above).
3. **Resize** to ``resolution`` (256 or 512, bicubic; a no-op for 256×256 sources).
4. **Split** per task (``task_index``), the reference's rule
   (:func:`worldvla.data.libero_ingest.split_in_order`): episodes in ``episode_index``
   order, the first ``ceil(0.9 · n)`` train, the rest validation.

Failed demos cannot be dropped here: the format carries no success signal (the published
conversions hold successful demos only).

Output: :func:`worldvla.data.episodes.write_episodes` (atomic; episodes are decoded one
at a time while writing, so a dataset need not fit in memory). Cameras are named
``agentview`` / ``eye_in_hand`` for the known features (others: the feature name without
``observation.images.``), actions float32 (T, 7), per-episode attrs ``split``,
``source_file``, ``source_episode``, ``source_steps``, ``noop_steps``, ``task_index``,
``success`` (``"unknown"``). Any problem with the input raises
:class:`~worldvla.errors.DataError` naming the file before the output appears.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldvla.data.lerobot_reader import CAMERA_DTYPES, LeRobotDataset, LeRobotEpisode
from worldvla.data.libero_ingest import (
    NOOP_THRESHOLD,
    VAL_FRACTION,
    IngestReport,
    noop_mask,
    resize_frames,
    split_in_order,
)
from worldvla.envs import libero_benchmark
from worldvla.envs.libero_benchmark import ACTION_DIM, RESOLUTIONS
from worldvla.errors import DataError

# Camera features of the published LIBERO conversions (frames already upright) -> our names.
KNOWN_CAMERAS = {
    "image": "agentview",  # openpi
    "wrist_image": "eye_in_hand",
    "observation.images.image": "agentview",  # LeRobot
    "observation.images.image2": "eye_in_hand",
    "observation.images.wrist_image": "eye_in_hand",
}
DEFAULT_CAMERAS = ("observation.images.image", "image")  # agent view, first match
DEFAULT_ACTIONS = ("action", "actions")


def camera_name(feature: str) -> str:
    """Our camera name for a LeRobot camera feature (``agentview`` for the known agent views)."""
    if feature in KNOWN_CAMERAS:
        return KNOWN_CAMERAS[feature]
    return re.sub(r"[^A-Za-z0-9_]+", "_", feature.removeprefix("observation.images.")).strip("_") or "camera"


def task_name(instruction: str) -> str:
    """``"put the bowl on the plate"`` -> ``"put_the_bowl_on_the_plate"`` (LIBERO's task naming)."""
    return re.sub(r"[^a-z0-9]+", "_", instruction.lower()).strip("_") or "task"


@dataclass
class _Planned:
    ep: LeRobotEpisode
    actions: np.ndarray  # float32 (T, 7), as stored
    keep: np.ndarray  # (T,) bool
    task_index: int | None
    instruction: str


def ingest_lerobot(
    src: str | Path,
    out: str | Path,
    resolution: int = 256,
    camera_features: Sequence[str] | None = None,
    action_feature: str | None = None,
    rotate_180: bool | None = None,
    val_fraction: float = VAL_FRACTION,
    noop_threshold: float = NOOP_THRESHOLD,
) -> IngestReport:
    """Convert the LeRobot dataset directory ``src`` into one episode store at ``out``.

    ``camera_features`` default to the agent view (``observation.images.image`` or
    ``image``), ``action_feature`` to ``action`` or ``actions``. ``rotate_180=None`` keeps
    the frames of the known conversions as they are (already rotated) and refuses other
    features. ``noop_threshold=0`` disables the no-op filter.
    """
    from worldvla.data.episodes import Episode, write_episodes

    if resolution not in RESOLUTIONS:
        raise DataError(f"resolution must be one of {RESOLUTIONS} (the reference's), got {resolution}")
    ds = LeRobotDataset(src)
    cams = tuple(camera_features or (ds.first_feature(DEFAULT_CAMERAS, CAMERA_DTYPES, "camera"),))
    for name in cams:
        ds.feature(name, CAMERA_DTYPES)
    names = {feat: camera_name(feat) for feat in cams}
    if len(set(names.values())) != len(names):
        raise DataError(f"camera features {list(cams)} map to clashing camera names {list(names.values())}")
    action = action_feature or ds.first_feature(DEFAULT_ACTIONS, ("float32", "float64"), "action")
    shape = tuple(ds.feature(action).get("shape") or ())
    if shape != (ACTION_DIM,):
        raise DataError(
            f"{ds.info_path}: action feature {action!r} has shape {shape}; LIBERO actions are "
            f"({ACTION_DIM},): Δxyz, Δrotation, gripper"
        )
    if rotate_180 is None:
        unknown = [c for c in cams if c not in KNOWN_CAMERAS]
        if unknown:
            raise DataError(
                f"{ds.info_path}: camera feature(s) {unknown} are not from a known LIBERO conversion, so "
                "their orientation is unknown: say whether to rotate them by 180° (rotate_180=True for "
                "frames as LIBERO renders them, upside down; False for upright frames; on the command "
                "line --rotate-180 / --no-rotate-180)"
            )
        rotate_180 = False  # the known conversions store frames already rotated

    # Pass 1: actions, tasks and the no-op filter of every episode (cheap columns only), so a
    # bad action or task fails before any frame is decoded, and the split is known up front.
    report = IngestReport()
    planned: list[_Planned] = []
    for ep in ds.episodes:
        actions = ds.vectors(ep, action)  # (T, D)
        if actions.shape[1] != ACTION_DIM:
            raise DataError(
                f"{ds.root / ep.data_file}: episode {ep.index}: {action!r} has {actions.shape[1]} values "
                f"per frame; LIBERO actions have {ACTION_DIM}"
            )
        task_index, instruction = ds.task(ep)
        drop = noop_mask(actions, noop_threshold) if noop_threshold > 0 else np.zeros(len(actions), bool)
        report.demos_in += 1
        report.demos_success_unknown += 1
        report.steps_in += len(actions)
        report.noop_steps += int(drop.sum())
        if drop.all():
            report.demos_too_short += 1
            continue
        planned.append(_Planned(ep, actions, ~drop, task_index, instruction.strip()))
    report.files = len({ep.data_file for ep in ds.episodes})
    if not planned:
        raise DataError(f"{ds.root}: no episode left after filtering ({report.summary()})")

    by_task: dict[str, list[_Planned]] = {}
    for p in planned:  # episode_index order
        by_task.setdefault(task_name(p.instruction), []).append(p)
    split_of: dict[int, str] = {}
    for task, ps in by_task.items():
        report.split[task] = {"train": [], "val": []}
        for p, split in zip(ps, split_in_order(len(ps), val_fraction)):
            split_of[p.ep.index] = split
    for n, p in enumerate(planned):
        report.split[task_name(p.instruction)][split_of[p.ep.index]].append(f"demo_{n}")
    report.episodes_out = len(planned)
    report.steps_out = sum(int(p.keep.sum()) for p in planned)

    def episodes() -> Iterator[Episode]:
        # Pass 2: frames, one episode at a time, straight into the store.
        for n, p in enumerate(planned):
            frames = {}
            for feat in cams:
                f = ds.frames(p.ep, feat)[p.keep]  # (T', H, W, 3)
                frames[names[feat]] = resize_frames(
                    libero_benchmark.rotate_180(f) if rotate_180 else f, resolution
                )
            yield Episode(
                key=f"demo_{n}",
                actions=p.actions[p.keep],
                frames=frames,
                instruction=p.instruction,
                task=task_name(p.instruction),
                attrs={
                    "split": split_of[p.ep.index],
                    "source_file": p.ep.data_file,
                    "source_episode": p.ep.index,
                    "source_steps": len(p.actions),
                    "noop_steps": int((~p.keep).sum()),
                    "task_index": -1 if p.task_index is None else p.task_index,
                    "success": "unknown",
                },
            )

    file_attrs = {
        "env": "libero",
        "source": f"LeRobot dataset {ds.root.name} ({ds.version})",
        "resolution": resolution,
        "fps": ds.fps,
        "camera_features": json.dumps({names[c]: c for c in cams}),
        "action_feature": action,
        "rotate_180_applied": bool(rotate_180),
        # Whether the stored frames are in the evaluation orientation: the known conversions
        # already are; for other features the caller's rotate_180 asserts the source's.
        "rotated_180": all(c not in KNOWN_CAMERAS for c in cams) or not rotate_180,
        "noop_rule": (
            f"||a[:6]|| < {noop_threshold} and a[6] == previous a[6]" if noop_threshold > 0 else "off"
        ),
        "split_rule": f"per task, episodes by index, first ceil({1 - val_fraction:g}*n) train, rest val",
        "split": json.dumps(report.split),
        "ingest_report": json.dumps({k: v for k, v in report.__dict__.items() if k != "split"}),
    }
    write_episodes(out, episodes(), file_attrs)
    return report
