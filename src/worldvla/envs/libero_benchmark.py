"""The LIBERO benchmark's constants: suites, step limits, camera, no-op action, orientation.

What the benchmark fixes (SPEC §7) rather than what an evaluation chooses, so it lives with
the simulators: the env adapter (:mod:`worldvla.envs.libero`), the demonstration ingest
(:mod:`worldvla.data.libero_ingest`, :mod:`worldvla.data.lerobot_ingest`), the LIBERO
training presets and the evaluation loop (:mod:`worldvla.eval.libero_loop`) all read them
here.

The 180° rotation (``img[::-1, ::-1]``) is applied identically to the training frames by the
ingest and to the evaluation frames (LIBERO renders images upside down), so training and
evaluation see the same orientation.

This module imports only numpy: the evaluation client runs in LIBERO's own environment.
"""

from __future__ import annotations

import numpy as np

SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
SUITE_ALIASES = {
    "spatial": "libero_spatial",
    "object": "libero_object",
    "goal": "libero_goal",
    "10": "libero_10",
    "long": "libero_10",
}
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
}
TASKS_PER_SUITE = 10
EPISODES_PER_TASK = 50
NUM_WAIT_STEPS = 10
NOOP_ACTION: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
ACTION_DIM = 7
CAMERA = "agentview"
RESOLUTIONS = (256, 512)


def suite_name(name: str) -> str:
    """``"spatial"`` / ``"libero_spatial"`` -> ``"libero_spatial"``; unknown names raise ValueError."""
    full = SUITE_ALIASES.get(name, name)
    if full not in MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {name!r}; expected one of {', '.join(SUITES)}")
    return full


def rotate_180(images: np.ndarray) -> np.ndarray:
    """Rotate ``(..., H, W, C)`` images by 180° (flip rows and columns), as the reference does."""
    if images.ndim < 3:
        raise ValueError(f"expected (..., H, W, C) images, got shape {images.shape}")
    return np.ascontiguousarray(images[..., ::-1, ::-1, :])
