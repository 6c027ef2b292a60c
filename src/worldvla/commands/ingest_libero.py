"""``worldvla ingest-libero``: official LIBERO demonstrations -> our episode store.

Drops failed demos and no-op steps, rotates frames by 180°, resizes to 256 or 512 and
records the reference's per-task 90/10 split (:mod:`worldvla.data.libero_ingest`, SPEC §7).
"""

from __future__ import annotations

import argparse

from worldvla.data.libero_ingest import CAMERAS, NOOP_THRESHOLD, VAL_FRACTION, ingest_libero


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worldvla ingest-libero", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="an official LIBERO .hdf5 file or a directory of them")
    p.add_argument("--out", required=True, help="output episode store (.hdf5)")
    p.add_argument("--resolution", type=int, choices=(256, 512), default=256)
    p.add_argument("--cameras", default="agentview", help=f"comma list of {', '.join(CAMERAS)}")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--noop-threshold", type=float, default=NOOP_THRESHOLD)
    a = p.parse_args(argv)
    cameras = tuple(c.strip() for c in a.cameras.split(",") if c.strip())
    report = ingest_libero(a.src, a.out, a.resolution, cameras, a.val_fraction, a.noop_threshold)
    print(f"[ingest-libero] {report.summary()}")
    print(f"[ingest-libero] wrote {a.out}")
    return 0
