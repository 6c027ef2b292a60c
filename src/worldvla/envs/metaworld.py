"""Meta-World adapter (MuJoCo), rendering headless on CPU.

Rendering backend: ``MUJOCO_GL`` is chosen before MuJoCo's OpenGL bindings load, unless the
user already set it: ``egl`` when ``libEGL`` is installed, else ``osmesa`` when ``libOSMesa``
is, else ``egl`` (and the first render fails with a message naming the packages). On a
CPU-only machine both end in Mesa's llvmpipe rasterizer and cost the same per frame
(docs/metaworld.md); EGL is preferred because ``scripts/setup.sh`` installs it (``libegl1``,
``libegl-mesa0``, ``libgl1-mesa-dri``) and it uses a GPU driver when one exists, while
OSMesa (``libosmesa6``) is software-only.

Fast rendering (default for the embedded benchmark): shadows, multisampling and floor
reflections off. It changes the look (no shadows, aliased edges) and makes a frame about
10x cheaper on CPU; the model only ever sees frames rendered the same way, in training and
in evaluation.

Variations: Meta-World's MT1 benchmark draws 50 seeded goal/object placements per task
(``metaworld.MT1(task, seed=...)``); variation ``v`` is placement ``v % 50`` of
``MT1(task, seed=benchmark_seed + v // 50)``, so variations 0-49 are the benchmark's own
list, later blocks of 50 are further placements drawn the same way, and ``(task, v)``
always gives the same scene. Suites split variations into training ones (demonstrations)
and held-out ones (evaluation).

Images: the corner cameras of Meta-World's scenes render upside down (their ``xyaxes`` /
``euler`` put the image's up axis towards the floor); they are flipped upright here
(``UPSIDE_DOWN_CAMERAS``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import OrderedDict
from ctypes.util import find_library


def _default_gl_backend() -> str:
    """EGL if its library is installed, else OSMesa if that is, else EGL (fails with a hint)."""
    if find_library("EGL"):
        return "egl"
    if find_library("OSMesa"):
        return "osmesa"
    return "egl"


# Must happen before PyOpenGL is first imported (it fixes its platform at import time).
if "MUJOCO_GL" not in os.environ:
    os.environ["MUJOCO_GL"] = _default_gl_backend()

import warnings  # noqa: E402

import numpy as np  # noqa: E402

from worldvla.envs.base import Env, Observation  # noqa: E402
from worldvla.envs.instructions import METAWORLD_INSTRUCTIONS  # noqa: E402
from worldvla.errors import ConfigError  # noqa: E402
from worldvla.utils.registry import lookup  # noqa: E402

GL_PACKAGES = {
    "egl": "libegl1 libegl-mesa0 libgl1-mesa-dri (scripts/setup.sh installs them)",
    "osmesa": "libosmesa6",
}


def _gl_error(e: BaseException) -> ConfigError:
    backend = os.environ.get("MUJOCO_GL", "")
    return ConfigError(
        f"headless rendering with MUJOCO_GL={backend!r} is not available ({type(e).__name__}: {e}). "
        f"Install {GL_PACKAGES.get(backend, 'an OpenGL driver')}, or set MUJOCO_GL to 'egl' or 'osmesa'."
    )


def _import_metaworld():  # noqa: ANN202
    """Import Meta-World (and with it MuJoCo, which loads the GL backend named by MUJOCO_GL)."""
    try:
        import metaworld
    except ModuleNotFoundError as e:
        if e.name in ("metaworld", "mujoco"):
            raise ConfigError(
                f"{e.name} is not installed; install the simulator extra: pip install -e '.[metaworld]'"
            ) from e
        raise _gl_error(e) from e
    except Exception as e:  # noqa: BLE001 - PyOpenGL/ctypes raise many unrelated types
        raise _gl_error(e) from e
    return metaworld


PHYSICS_HZ = 80.0  # Meta-World: frame_skip 5 x 2.5 ms per env.step
VARIATIONS_PER_TASK = 50  # placements in one MT1 list (one block of variations)
UPSIDE_DOWN_CAMERAS = ("corner", "corner2", "corner3", "corner4")

# Every task's env owns an offscreen GL context, and only one context is current per thread.
# Gymnasium makes a context current only when it is created, so rendering task A after task
# B's context was created would draw A's scene with B's GPU buffers (a dark, garbled frame).
# The adapter switches the context itself whenever another viewer renders (process-wide).
_current_viewer: object | None = None


def _point_camera(model, camera: str, aim: tuple[float, float, float] | None, zoom: float) -> None:  # noqa: ANN001
    """Turn a world-fixed camera towards ``aim`` (smallest rotation) and zoom it by ``zoom``."""
    import mujoco

    cid = model.camera(camera).id
    if model.cam_bodyid[cid] != 0 or model.cam_mode[cid] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
        raise ConfigError(f"camera {camera!r} is not fixed in the world; it cannot be aimed or zoomed")
    if aim is not None:
        rot = np.empty(9)
        mujoco.mju_quat2Mat(rot, model.cam_quat[cid])
        rot = rot.reshape(3, 3)
        forward = -rot[:, 2]  # MuJoCo cameras look along their -z axis
        target = np.asarray(aim, dtype=np.float64) - model.cam_pos[cid]
        target /= np.linalg.norm(target)
        axis = np.cross(forward, target)
        sin, cos = np.linalg.norm(axis), float(forward @ target)
        if sin > 1e-12:
            k = axis / sin
            skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
            rot = (np.eye(3) + sin * skew + (1 - cos) * skew @ skew) @ rot
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, rot.reshape(-1))
            model.cam_quat[cid] = quat
    half = np.deg2rad(model.cam_fovy[cid]) / 2
    model.cam_fovy[cid] = np.rad2deg(2 * np.arctan(np.tan(half) / zoom))


@functools.cache
def _mt1(task: str, seed: int):  # noqa: ANN202
    """``metaworld.MT1(task, seed=seed)``, built once per process: it samples its 50 tasks
    through a whole env (seconds), and every env of an evaluation asks for the same ones.
    Read only here (``train_classes`` and ``train_tasks``), so sharing it is safe."""
    return _import_metaworld().MT1(task, seed=seed)


class MetaWorldEnv(Env):
    """One Meta-World scene at a time; switches task on :meth:`reset`.

    The scenes of the last ``max_scenes`` tasks stay built (each holds a MuJoCo model and an
    offscreen GL context, ~50 MB): a suite of a few tasks switches without rebuilding, and a
    long evaluation over MT50's 50 tasks with several envs keeps its memory bounded (every
    env of a lockstep evaluation visits every task).

    Observations carry the proprioceptive state beside the frames: Meta-World's ``obs[:4]``
    (hand x, y, z in metres and the gripper opening, the fingers' distance / 0.1 m clipped to
    [0, 1]), the ``agent_pos`` / ``observation.state`` of LeRobot's Meta-World environment.
    """

    action_dim = 4  # Δx, Δy, Δz, gripper effort, each in [-1, 1]
    state_dim = 4  # hand xyz + gripper opening (Meta-World obs[:4])
    instructions: dict[str, str] = METAWORLD_INSTRUCTIONS  # the prompt of every task

    def __init__(
        self,
        camera: str = "corner2",
        resolution: int = 64,
        action_repeat: int = 2,
        max_steps: int = 150,
        fast_render: bool = True,
        benchmark_seed: int = 0,
        cameras: tuple[str, ...] | None = None,
        camera_aim: tuple[float, float, float] | None = None,
        camera_zoom: float = 1.0,
        max_scenes: int = 4,
    ) -> None:
        """``cameras``: those rendered into every observation (default: just ``camera``); an
        empty tuple renders nothing, for state-only expert runs (benchmarks).

        ``camera_aim`` / ``camera_zoom`` re-point the primary camera: it turns (from where
        it stands, by the smallest rotation, so its roll is kept) to look at the world point
        ``camera_aim`` and narrows its field of view by ``camera_zoom`` (tan(fovy/2) / zoom),
        so that the workspace fills more of the image.
        """
        if action_repeat < 1 or resolution < 8 or max_steps < 1 or max_scenes < 1:
            raise ConfigError(
                "MetaWorldEnv needs action_repeat >= 1, resolution >= 8, max_steps >= 1 and max_scenes >= 1"
            )
        if not camera_zoom > 0 or not np.isfinite(camera_zoom):
            raise ConfigError(f"camera_zoom must be a positive number, got {camera_zoom}")
        if camera_aim is not None and (len(camera_aim) != 3 or not np.isfinite(camera_aim).all()):
            raise ConfigError(f"camera_aim must be a finite world point (x, y, z), got {camera_aim}")
        self.camera_aim = None if camera_aim is None else tuple(float(x) for x in camera_aim)
        self.camera_zoom = float(camera_zoom)
        self.camera = camera
        self.cameras = (camera,) if cameras is None else tuple(cameras)
        if self.cameras and camera not in self.cameras:
            raise ConfigError(f"primary camera {camera!r} must be one of the rendered cameras {self.cameras}")
        self.resolution = resolution
        self.action_repeat = action_repeat
        self.max_steps = max_steps
        self.control_hz = PHYSICS_HZ / action_repeat
        self.fast_render = fast_render
        self.benchmark_seed = benchmark_seed
        self._benchmarks: dict[str, object] = {}
        self._envs: OrderedDict[str, object] = OrderedDict()  # task -> scene, least recent first
        self.max_scenes = max_scenes
        self._task: str | None = None
        self._state: np.ndarray | None = None
        self._experts: dict[str, object] = {}
        # The action the last control step executed (the mean over its physics steps): what
        # a world model should be told happened, where expert_step's label is the clean action.
        self.last_executed: np.ndarray | None = None

    # ------------------------------------------------------------------ setup
    def _benchmark(self, task: str, block: int = 0):  # noqa: ANN202
        """``MT1(task)`` drawn with seed ``benchmark_seed + block`` (variations of that block)."""
        if (task, block) not in self._benchmarks:
            lookup(METAWORLD_INSTRUCTIONS, task, "Meta-World task")  # "did you mean" on a typo
            self._benchmarks[task, block] = _mt1(task, self.benchmark_seed + block)
        return self._benchmarks[task, block]

    def _env(self, task: str):  # noqa: ANN202
        if task in self._envs:
            self._envs.move_to_end(task)
        else:
            while len(self._envs) >= self.max_scenes:
                self._close_scene(next(iter(self._envs)))
            bench = self._benchmark(task)
            env = bench.train_classes[task](
                render_mode="rgb_array",
                camera_name=self.camera,
                width=self.resolution,
                height=self.resolution,
            )
            if self.fast_render:
                # Read when the render context is created (first render): no shadow map, no MSAA.
                env.model.vis.quality.shadowsize = 0
                env.model.vis.quality.offsamples = 0
            if self.camera_aim is not None or self.camera_zoom != 1.0:
                _point_camera(env.model, self.camera, self.camera_aim, self.camera_zoom)
            self._configure(env, task)
            self._envs[task] = env
        return self._envs[task]

    def _close_scene(self, task: str) -> None:
        """Free task ``task``'s scene and its GL context."""
        global _current_viewer
        env = self._envs.pop(task)
        if _current_viewer is not None and _current_viewer is env.mujoco_renderer.viewer:
            _current_viewer = None
        with contextlib.suppress(Exception):  # a renderer that fails to free its context
            env.close()

    def _configure(self, env, task: str) -> None:  # noqa: ANN001
        """Set up a freshly built task env (a protocol's hook)."""
        env.max_path_length = 10**9  # the adapter enforces the step limit itself

    def _place(self, env, task: str, variation: int) -> None:  # noqa: ANN001
        """Fix the scene of ``variation`` before ``env.reset()``: placement v % 50 of block v // 50."""
        block, index = divmod(variation, VARIATIONS_PER_TASK)
        env.set_task(self._benchmark(task, block).train_tasks[index])

    def _upright(self, img: np.ndarray, camera: str) -> np.ndarray:
        """The rendered frame turned upright (the corner cameras render upside down)."""
        return img[::-1] if camera in UPSIDE_DOWN_CAMERAS else img

    # ------------------------------------------------------------------ rendering
    def _viewer(self, env):  # noqa: ANN001, ANN202
        """The offscreen viewer, created on first use with a readable error if OpenGL is missing."""
        renderer = env.mujoco_renderer
        if renderer.viewer is None:
            try:
                viewer = renderer._get_viewer("rgb_array")
            except Exception as e:  # noqa: BLE001 - PyOpenGL/EGL raise many unrelated types
                raise _gl_error(e) from e
            if self.fast_render:
                import mujoco

                # The floor's mirror pass doubles the draw calls for a barely visible effect
                # (mean pixel change < 0.1/255 at 64x64); the skybox stays (it is the background).
                viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        global _current_viewer
        if _current_viewer is not renderer.viewer:
            renderer.viewer.make_context_current()
            _current_viewer = renderer.viewer
        return renderer.viewer

    def _render(self, env, camera: str) -> np.ndarray:  # noqa: ANN001
        renderer = env.mujoco_renderer
        self._viewer(env)
        if camera != self.camera:
            renderer.camera_id = env.model.camera(camera).id
        img = renderer.render("rgb_array")
        if camera != self.camera:
            renderer.camera_id = env.model.camera(self.camera).id
        img = np.ascontiguousarray(self._upright(img, camera))
        return img.astype(np.uint8, copy=False)

    def _observe(self) -> Observation:
        env = self._envs[self._task]
        return Observation(
            images={c: self._render(env, c) for c in self.cameras},
            instruction=self.instructions[self._task],
            state=np.asarray(self._state[: self.state_dim], dtype=np.float32),
        )

    # ------------------------------------------------------------------ Env API
    def reset(self, task: str, variation: int) -> Observation:
        if variation < 0:
            raise ConfigError(f"variation must be >= 0, got {variation}")
        env = self._env(task)
        self._place(env, task, variation)
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
        self.last_executed = a.astype(np.float32)
        for _ in range(self.action_repeat):
            self._state, _, _, _, info = env.step(a)
            success = success or bool(info["success"])
        self._t += 1
        return self._observe(), success

    def expert_step(
        self, noise: np.ndarray | None = None, rate: str = "physics"
    ) -> tuple[Observation, bool, np.ndarray]:
        """One control step driven by the scripted expert (``rate``: a suite's ``expert_rate``).

        ``rate="control"`` asks the expert once and executes its action (plus ``noise``) for
        the whole control step; the label is that action. With ``"physics"`` the expert is
        asked before each of the ``action_repeat`` physics steps (the rate
        its gains are tuned for; asked once per control step and held, its high gains
        overshoot and the labels oscillate between ±1) and ``noise`` (one draw per control
        step) is added to what is executed. Returns the new observation, the success flag
        and the control-rate label: the mean of the expert's clean actions (what was executed,
        noise included, is ``last_executed``). Meta-World moves
        the end effector's mocap target by ``action × action_scale`` per physics step, so a
        policy repeating that mean for ``action_repeat`` steps moves it exactly as far as the
        expert did (the gripper effort is averaged).
        """
        if self._task is None:
            raise RuntimeError("call reset() before expert_step()")
        if rate == "control":
            label = self.expert_action()
            executed = label if noise is None else np.clip(label + noise, -1.0, 1.0)
            obs, success = self.step(executed)
            return obs, success, label
        if rate != "physics":
            raise ConfigError(f"expert rate must be 'physics' or 'control', got {rate!r}")
        env = self._envs[self._task]
        labels, executed_all = [], []
        success = False
        for _ in range(self.action_repeat):
            a = self.expert_action()
            labels.append(a)
            executed = a if noise is None else np.clip(a + noise, -1.0, 1.0)
            executed_all.append(executed)
            self._state, _, _, _, info = env.step(executed.astype(np.float64))
            success = success or bool(info["success"])
        self._t += 1
        self.last_executed = np.mean(executed_all, axis=0).astype(np.float32)
        return self._observe(), success, np.mean(labels, axis=0).astype(np.float32)

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
        global _current_viewer
        _current_viewer = None
        for env in self._envs.values():
            # A renderer that fails to free its context must not mask the results.
            with contextlib.suppress(Exception):
                env.close()
        self._envs.clear()
