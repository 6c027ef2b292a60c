"""``worldvla ingest-libero``: LIBERO demonstrations -> our episode store.

Official HDF5 demos (:mod:`worldvla.data.libero_ingest`): drops failed demos and no-op
steps, rotates frames by 180°, resizes to 256 or 512 and records the reference's per-task
90/10 split (SPEC §7). A LeRobot dataset directory (:mod:`worldvla.data.lerobot_ingest`,
picked automatically when ``--src`` holds ``meta/info.json``): the same no-op filter,
resize and split; rotation per layout (the known conversions are already rotated).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from worldvla.data.libero_ingest import CAMERAS, NOOP_THRESHOLD, VAL_FRACTION, ingest_libero
from worldvla.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla ingest-libero", description=__doc__.split("\n")[0])
    p.add_argument(
        "--src",
        required=True,
        help="an official LIBERO .hdf5 file, a directory of them, or a LeRobot dataset",
    )
    p.add_argument("--out", required=True, help="output episode store (.hdf5)")
    p.add_argument(
        "--format",
        choices=("auto", "hdf5", "lerobot"),
        default="auto",
        help="auto: lerobot when SRC is a directory with meta/info.json, else hdf5",
    )
    p.add_argument("--resolution", type=int, choices=(256, 512), default=256)
    p.add_argument(
        "--cameras", default=None, help=f"hdf5: comma list of {', '.join(CAMERAS)} (default agentview)"
    )
    p.add_argument(
        "--camera-feature",
        default=None,
        help="lerobot: comma list of camera features (default observation.images.image or image)",
    )
    p.add_argument(
        "--action-feature", default=None, help="lerobot: action feature (default action or actions)"
    )
    p.add_argument(
        "--rotate-180",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="lerobot: rotate frames by 180° (default: no for the known LIBERO conversions, "
        "which are already rotated; required for other camera features)",
    )
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument(
        "--noop-threshold", type=float, default=NOOP_THRESHOLD, help="0 turns the no-op filter off"
    )
    a = p.parse_args(argv)

    fmt = a.format
    if fmt == "auto":
        fmt = "lerobot" if (Path(a.src) / "meta" / "info.json").is_file() else "hdf5"
    if fmt == "lerobot":
        from worldvla.data.lerobot_ingest import ingest_lerobot

        if a.cameras is not None:
            raise ConfigError("--cameras is for HDF5 sources; use --camera-feature for a LeRobot dataset")
        cams = _split(a.camera_feature) if a.camera_feature else None
        report = ingest_lerobot(
            a.src, a.out, a.resolution, cams, a.action_feature, a.rotate_180, a.val_fraction, a.noop_threshold
        )
    else:
        given = [
            f"--{n}"
            for n in ("camera-feature", "action-feature", "rotate-180")
            if getattr(a, n.replace("-", "_")) is not None
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to LeRobot datasets only (--format lerobot)")
        cameras = tuple(_split(a.cameras or "agentview"))
        report = ingest_libero(a.src, a.out, a.resolution, cameras, a.val_fraction, a.noop_threshold)
    print(f"[ingest-libero] {fmt}: {report.summary()}")
    print(f"[ingest-libero] wrote {a.out}")
    return 0


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]
