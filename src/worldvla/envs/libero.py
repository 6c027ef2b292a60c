"""LIBERO task as an environment with the project's env interface (reset / step / close).

Wraps one LIBERO task (``OffScreenRenderEnv``) under the reference evaluation protocol
(SPEC §7, :mod:`worldvla.eval.libero_protocol`): ``reset(i)`` restores the benchmark's
initial state i and runs the 10 no-op wait steps; observations carry the agent-view frame
at the training resolution rotated 180° and the task instruction; an episode ends on the
env's done flag (success) or after the suite's max steps.

LIBERO needs its own Python environment (robosuite 1.4 pins an older MuJoCo; see
docs/libero.md), so this module imports LIBERO only when an env is created. For benchmark
numbers use the evaluation client (``worldvla.eval.libero_client``), which runs in that
environment and queries ``worldvla serve``; this adapter is for code that runs where LIBERO
is importable (e.g. rollouts of a world model against the simulator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.eval.libero_protocol import (
    ACTION_DIM,
    CAMERA,
    MAX_STEPS,
    NOOP_ACTION,
    NUM_WAIT_STEPS,
    rotate_180,
    suite_name,
)


class LiberoEnv:
    """One LIBERO task. ``obs = {"image": uint8 (R, R, 3), "images": {camera: ...}, "instruction": str}``."""

    action_dim = ACTION_DIM

    def __init__(
        self,
        suite: str,
        task_id: int,
        resolution: int = 256,
        seed: int = 0,
        num_wait_steps: int = NUM_WAIT_STEPS,
        max_steps: int | None = None,
        cameras: tuple[str, ...] = (CAMERA,),
    ) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
        except ImportError as e:
            raise ImportError(
                f"LIBERO is not importable here ({e}); run scripts/setup_libero.sh and use "
                ".venv-libero (docs/libero.md)"
            ) from None
        self.suite = suite_name(suite)
        bench = benchmark.get_benchmark_dict()[self.suite]()
        self.task = bench.get_task(task_id)
        self.instruction: str = self.task.language
        self.init_states = np.asarray(bench.get_task_init_states(task_id))
        self.resolution, self.cameras = resolution, tuple(cameras)
        self.num_wait_steps = num_wait_steps
        self.max_steps = MAX_STEPS[self.suite] if max_steps is None else max_steps
        bddl = Path(get_libero_path("bddl_files")) / self.task.problem_folder / self.task.bddl_file
        self._env = OffScreenRenderEnv(
            bddl_file_name=str(bddl),
            camera_heights=resolution,
            camera_widths=resolution,
            camera_names=list(self.cameras),
        )
        self._env.seed(seed)  # once per task, as the reference does
        self._t = 0

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        images = {cam: rotate_180(np.asarray(raw[f"{cam}_image"])) for cam in self.cameras}
        return {"image": images[self.cameras[0]], "images": images, "instruction": self.instruction}

    def reset(self, init_state: int = 0) -> dict[str, Any]:
        """Restore initial state ``init_state`` (0..49) and let objects settle for the wait steps."""
        if not 0 <= init_state < len(self.init_states):
            raise ValueError(f"init_state must be in [0, {len(self.init_states)}), got {init_state}")
        self._env.reset()
        raw = self._env.set_init_state(self.init_states[init_state])
        for _ in range(self.num_wait_steps):
            raw, _, _, _ = self._env.step(list(NOOP_ACTION))
        self._t = 0
        return self._obs(raw)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """``(obs, reward, terminated, truncated, info)``; terminated = success (the env's done flag)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"LIBERO actions are {ACTION_DIM}-D, got shape {action.shape}")
        raw, reward, done, info = self._env.step(action.tolist())
        self._t += 1
        truncated = not done and self._t >= self.max_steps
        return self._obs(raw), float(reward), bool(done), truncated, {**info, "success": bool(done)}

    def close(self) -> None:
        self._env.close()
