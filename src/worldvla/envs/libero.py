"""LIBERO behind the project's environment interface (:class:`worldvla.envs.base.Env`).

One adapter serves one LIBERO suite; ``reset(task, variation)`` picks the task (its index
in the suite or its name) and the benchmark's initial state ``variation``, under the
reference evaluation protocol (SPEC §7, constants in :mod:`worldvla.envs.libero_benchmark`):

- the underlying ``OffScreenRenderEnv`` is built when the task changes (not on every
  reset) and seeded once at that point, as the reference seeds once per task (the seed
  moves objects even with fixed initial states);
- ``reset`` restores initial state ``variation`` and runs the 10 no-op wait steps
  (``[0, 0, 0, 0, 0, 0, -1]``) that let objects settle; they are not counted as steps;
- observations carry the cameras at the training resolution, rotated 180° (LIBERO renders
  them upside down), and the task's instruction;
- ``step`` returns the env's done flag as the success flag. ``max_steps`` is the suite's
  step limit; like every adapter, enforcing it is the caller's loop's job.

LIBERO needs its own Python environment (robosuite 1.4 pins an older MuJoCo; see
docs/libero.md), so LIBERO is imported only when an adapter is created. For benchmark
numbers use the evaluation client (``worldvla.eval.libero_client``), which runs in that
environment and queries ``worldvla serve``; this adapter is for code that runs where LIBERO
is importable (e.g. rollouts of a world model against the simulator).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.envs.base import Env, Observation
from worldvla.envs.libero_benchmark import (
    ACTION_DIM,
    CAMERA,
    MAX_STEPS,
    NOOP_ACTION,
    NUM_WAIT_STEPS,
    rotate_180,
    suite_name,
)
from worldvla.errors import ConfigError
from worldvla.utils.registry import lookup

CONTROL_HZ = 20.0  # LIBERO's control_freq (robosuite's default, unchanged by LIBERO)


class LiberoEnv(Env):
    """The tasks of one LIBERO suite; the simulator of the current task is kept between resets."""

    action_dim = ACTION_DIM  # Δxyz, Δrotation (axis-angle), gripper (+1 close, -1 open)
    control_hz = CONTROL_HZ

    def __init__(
        self,
        suite: str,
        *,
        resolution: int = 256,
        seed: int = 0,
        num_wait_steps: int = NUM_WAIT_STEPS,
        max_steps: int | None = None,
        cameras: tuple[str, ...] = (CAMERA,),
    ) -> None:
        """``cameras``: rendered into every observation; the first is the primary ``camera``."""
        if not cameras or resolution < 16:
            raise ConfigError(f"LiberoEnv needs a camera and resolution >= 16, got {cameras}, {resolution}")
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
        except ImportError as e:
            raise ImportError(
                f"LIBERO is not importable here ({e}); run scripts/setup_libero.sh and use "
                ".venv-libero (docs/libero.md)"
            ) from None
        self._make_env, self._bddl_root = OffScreenRenderEnv, Path(get_libero_path("bddl_files"))
        self.suite = suite_name(suite)
        self._bench = benchmark.get_benchmark_dict()[self.suite]()
        self.task_names: tuple[str, ...] = tuple(self._bench.get_task_names())
        self.resolution, self.seed, self.num_wait_steps = resolution, seed, num_wait_steps
        self.cameras, self.camera = tuple(cameras), cameras[0]
        self.max_steps = MAX_STEPS[self.suite] if max_steps is None else max_steps
        self._env: Any = None
        self._task_id: int | None = None
        self._init_states = np.empty(0)
        self.instruction = ""

    # ------------------------------------------------------------------ tasks
    def task_id(self, task: int | str) -> int:
        """The index of ``task`` in the suite: an index (int or digits) or a task name."""
        if isinstance(task, str) and not task.isdigit():
            return lookup({n: i for i, n in enumerate(self.task_names)}, task, f"{self.suite} task")
        i = int(task)
        if not 0 <= i < len(self.task_names):
            raise ConfigError(f"{self.suite} has tasks 0..{len(self.task_names) - 1}, got {task!r}")
        return i

    def _open(self, task_id: int) -> None:
        """Build (and seed) the simulator of ``task_id``, closing the previous task's."""
        self.close()
        task = self._bench.get_task(task_id)
        self._env = self._make_env(
            bddl_file_name=str(self._bddl_root / task.problem_folder / task.bddl_file),
            camera_heights=self.resolution,
            camera_widths=self.resolution,
            camera_names=list(self.cameras),
        )
        self._env.seed(self.seed)  # once per task, as the reference does
        self._init_states = np.asarray(self._bench.get_task_init_states(task_id))
        self._task_id, self.instruction = task_id, task.language

    def _observe(self, raw: dict[str, Any]) -> Observation:
        images = {cam: rotate_180(np.asarray(raw[f"{cam}_image"])) for cam in self.cameras}
        return Observation(images=images, instruction=self.instruction)

    # ------------------------------------------------------------------ Env API
    def reset(self, task: int | str, variation: int = 0) -> Observation:
        """Start ``task`` from the benchmark's initial state ``variation`` (0..49), after the wait steps."""
        task_id = self.task_id(task)
        if task_id != self._task_id:
            self._open(task_id)
        if not 0 <= variation < len(self._init_states):
            raise ConfigError(f"variation must be in [0, {len(self._init_states)}), got {variation}")
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[variation])
        for _ in range(self.num_wait_steps):  # let objects settle; done is not checked (reference)
            raw, _, _, _ = self._env.step(list(NOOP_ACTION))
        return self._observe(raw)

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        """Send one 7-D action as is (no clipping, as the reference); success = the env's done flag."""
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ConfigError(f"LIBERO actions have {ACTION_DIM} dims, got shape {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ConfigError(f"action contains NaN or inf: {a}")
        raw, _, done, _ = self._env.step(a.tolist())
        return self._observe(raw), bool(done)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env, self._task_id = None, None
