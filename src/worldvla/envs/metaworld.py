"""Meta-World adapter (MuJoCo), rendering headless on CPU.

Rendering: ``MUJOCO_GL=egl`` unless the user chose otherwise. EGL through Mesa's llvmpipe
needs no display and no GPU, is what ``scripts/setup.sh`` installs (``libegl1``,
``libegl-mesa0``), and also picks up a GPU driver when one exists; OSMesa works too
(``MUJOCO_GL=osmesa`` with ``libosmesa6``) but is a software-only path.

Fast rendering (default for the embedded benchmark): shadows and multisampling off. It
changes the look (no shadows, aliased edges) and makes a frame ~10x cheaper on CPU; the
model only ever sees frames rendered the same way, in training and in evaluation.

Variations: Meta-World's MT1 benchmark draws 50 seeded goal/object placements per task
(``metaworld.MT1(task, seed=...)``); variation ``v`` is placement ``v`` of that list, so
``(task, v)`` always gives the same scene. Suites split variations into training ones
(demonstrations) and held-out ones (evaluation).

Images: the corner cameras render upside down and are flipped upright here.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings  # noqa: E402

import numpy as np  # noqa: E402

from worldvla.envs.base import Env, Observation  # noqa: E402
from worldvla.envs.instructions import METAWORLD_INSTRUCTIONS  # noqa: E402
from worldvla.errors import ConfigError  # noqa: E402

PHYSICS_HZ = 80.0  # Meta-World: frame_skip 5 x 2.5 ms per env.step
VARIATIONS_PER_TASK = 50
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")


class MetaWorldEnv(Env):
    """One Meta-World scene at a time; switches task on :meth:`reset` (envs are cached per task)."""

    action_dim = 4  # Δx, Δy, Δz, gripper effort, each in [-1, 1]

    def __init__(
        self,
        camera: str = "corner2",
        resolution: int = 64,
        action_repeat: int = 2,
        max_steps: int = 150,
        fast_render: bool = True,
        benchmark_seed: int = 0,
        cameras: tuple[str, ...] | None = None,
    ) -> None:
        if action_repeat < 1 or resolution < 8 or max_steps < 1:
            raise ConfigError("MetaWorldEnv needs action_repeat >= 1, resolution >= 8 and max_steps >= 1")
        self.camera = camera
        self.cameras = tuple(cameras or (camera,))
        if camera not in self.cameras:
            raise ConfigError(f"primary camera {camera!r} must be one of the rendered cameras {self.cameras}")
        self.resolution = resolution
        self.action_repeat = action_repeat
        self.max_steps = max_steps
        self.control_hz = PHYSICS_HZ / action_repeat
        self.fast_render = fast_render
        self.benchmark_seed = benchmark_seed
        self._benchmarks: dict[str, object] = {}
        self._envs: dict[str, object] = {}
        self._task: str | None = None
        self._state: np.ndarray | None = None
        self._experts: dict[str, object] = {}

    # ------------------------------------------------------------------ setup
    def _benchmark(self, task: str):  # noqa: ANN202
        if task not in self._benchmarks:
            import metaworld

            if task not in METAWORLD_INSTRUCTIONS:
                import difflib

                close = difflib.get_close_matches(task, list(METAWORLD_INSTRUCTIONS), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown Meta-World task {task!r}.{hint}")
            self._benchmarks[task] = metaworld.MT1(task, seed=self.benchmark_seed)
        return self._benchmarks[task]

    def _env(self, task: str):  # noqa: ANN202
        if task not in self._envs:
            bench = self._benchmark(task)
            env = bench.train_classes[task](
                render_mode="rgb_array",
                camera_name=self.camera,
                width=self.resolution,
                height=self.resolution,
            )
            if self.fast_render:
                env.model.vis.quality.shadowsize = 0
                env.model.vis.quality.offsamples = 0
            env.max_path_length = 10**9  # the adapter enforces the step limit itself
            self._envs[task] = env
        return self._envs[task]

    # ------------------------------------------------------------------ rendering
    def _render(self, env, camera: str) -> np.ndarray:  # noqa: ANN001
        renderer = env.mujoco_renderer
        if camera != self.camera:
            renderer.camera_id = env.model.camera(camera).id
        img = renderer.render("rgb_array")
        if camera != self.camera:
            renderer.camera_id = env.model.camera(self.camera).id
        img = np.ascontiguousarray(img[::-1] if camera in UPSIDE_DOWN_CAMERAS else img)
        return img.astype(np.uint8, copy=False)

    def _observe(self) -> Observation:
        env = self._envs[self._task]
        return Observation(
            images={c: self._render(env, c) for c in self.cameras},
            instruction=METAWORLD_INSTRUCTIONS[self._task],
        )

    # ------------------------------------------------------------------ Env API
    def reset(self, task: str, variation: int) -> Observation:
        if not 0 <= variation < VARIATIONS_PER_TASK:
            raise ConfigError(f"variation must be in [0, {VARIATIONS_PER_TASK}), got {variation}")
        env = self._env(task)
        env.set_task(self._benchmark(task).train_tasks[variation])
        self._task = task
        self._state, _ = env.reset()
        self._t = 0
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[Observation, bool]:
        if self._task is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            raise ConfigError(f"Meta-World actions have {self.action_dim} dims, got shape {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ConfigError(f"action contains NaN or inf: {a}")
        a = np.clip(a, -1.0, 1.0)
        env = self._envs[self._task]
        success = False
        for _ in range(self.action_repeat):
            self._state, _, _, _, info = env.step(a)
            success = success or bool(info["success"])
        self._t += 1
        return self._observe(), success

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (Meta-World's hand-written policies)."""
        if self._task is None:
            raise RuntimeError("call reset() before expert_action()")
        if self._task not in self._experts:
            from metaworld.policies import ENV_POLICY_MAP

            self._experts[self._task] = ENV_POLICY_MAP[self._task]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            a = self._experts[self._task].get_action(self._state)
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    def close(self) -> None:
        for env in self._envs.values():
            # A renderer that fails to free its context must not mask the results.
            with contextlib.suppress(Exception):
                env.close()
        self._envs.clear()
