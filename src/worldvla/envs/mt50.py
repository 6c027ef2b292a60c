"""Meta-World MT50 under LeRobot's evaluation protocol (``lerobot-eval --env.type=metaworld``).

The constants and the scene set-up of huggingface/lerobot ``src/lerobot/envs/metaworld.py``
and ``metaworld_config.json`` (read at commit ``7427f318``), reproduced on the project's
Meta-World adapter:

- per task, ``metaworld.MT1(task, seed=42)``, its train class, ``set_task(train_tasks[0])``,
  one ``reset()``, then ``_freeze_rand_vec = False`` and ``seeded_rand_vec = True``: every
  later ``env.seed(s); env.reset()`` draws the object/goal placement from seed ``s`` alone.
  A *variation* of this protocol is that seed;
- one ``env.step`` (5 physics steps, 80 Hz) per action, at most 500 actions (Meta-World's
  ``max_path_length``); success is ``info["success"]`` at any step and ends the episode;
- the ``corner2`` camera moved to (0.75, 0.075, 0.7) (LeRobot: "similar to" Seo et al. 2022,
  arXiv 2206.14244) and its frame flipped on both axes (a 180° turn; the project's own
  protocol flips only the rows, which mirrors the picture);
- 10 episodes per task, episode ``i`` on seed ``1000 + i`` (``lerobot-eval``'s default
  ``--seed=1000``; every task of a group starts from the same seed);
- LeRobot's four difficulty groups (28 / 11 / 6 / 5 tasks) and task descriptions.

Where the project's runs differ from LeRobot's (image size, rendering, Meta-World version,
training data) is listed in docs/metaworld.md, and ``worldvla eval-policy --protocol
lerobot-mt50`` prints those differences beside its numbers.
"""

from __future__ import annotations

from worldvla.envs.instructions import LEROBOT_METAWORLD_DESCRIPTIONS
from worldvla.envs.metaworld import MetaWorldEnv
from worldvla.errors import ConfigError

# Where the protocol was read (repository, files, commit).
LEROBOT_SOURCE = "huggingface/lerobot src/lerobot/envs/metaworld.py + metaworld_config.json, commit 7427f318"
LEROBOT_METAWORLD_PIN = "3.0.0"  # lerobot[metaworld] pins metaworld==3.0.0 (pyproject.toml)

MT1_SEED = 42  # metaworld.MT1(task, seed=42): fixes the task's train_tasks[0]
MAX_STEPS = 500  # MT1 envs' max_path_length; LeRobot's _max_episode_steps
EVAL_START_SEED = 1000  # lerobot-eval --seed default; episode i of every task: seed 1000 + i
EPISODES_PER_TASK = 10  # LeRobot docs: "use 10 episodes per task" (500 for MT50)
CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)  # LeRobot moves corner2 here (model.cam_pos[2])
RENDER_SIZE = 480  # LeRobot renders 480x480 (Meta-World's default) and feeds that to the policy

# metaworld_config.json DIFFICULTY_TO_TASKS, in its order.
DIFFICULTY_GROUPS: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ),
    "very_hard": (
        "shelf-place-v3",
        "disassemble-v3",
        "stick-pull-v3",
        "stick-push-v3",
        "pick-place-wall-v3",
    ),
}
MT50_TASKS: tuple[str, ...] = tuple(t for tasks in DIFFICULTY_GROUPS.values() for t in tasks)


def difficulty(task: str) -> str:
    """The LeRobot difficulty group of ``task`` (``easy`` … ``very_hard``)."""
    for group, tasks in DIFFICULTY_GROUPS.items():
        if task in tasks:
            return group
    raise ConfigError(f"{task!r} is in none of LeRobot's Meta-World difficulty groups")


def eval_seeds(episodes: int = EPISODES_PER_TASK, start: int = EVAL_START_SEED) -> tuple[int, ...]:
    """The reset seeds of a task's evaluation episodes: ``start, start + 1, …`` (lerobot-eval)."""
    return tuple(range(start, start + episodes))


class LeRobotMetaWorldEnv(MetaWorldEnv):
    """Meta-World as LeRobot's ``MetaworldEnv`` sets it up; ``reset(task, seed)``.

    Frames are rendered at ``resolution`` (LeRobot: 480) from the moved ``corner2`` camera
    and turned 180°. Actions are clipped to [-1, 1] like the project's adapter does;
    LeRobot passes them on unclipped, and Meta-World clips the xyz part itself while MuJoCo
    clamps the gripper to its actuator range [-1, 1], so the executed motion is the same.
    """

    instructions = LEROBOT_METAWORLD_DESCRIPTIONS

    def __init__(
        self,
        resolution: int = 64,
        max_steps: int = MAX_STEPS,
        fast_render: bool = True,
        cameras: tuple[str, ...] | None = None,
    ) -> None:
        """``cameras=()`` renders nothing (state-only expert runs); see :class:`MetaWorldEnv`."""
        if not 1 <= max_steps <= MAX_STEPS:
            raise ConfigError(f"the LeRobot Meta-World protocol allows 1..{MAX_STEPS} steps, got {max_steps}")
        super().__init__(
            camera=CAMERA,
            resolution=resolution,
            action_repeat=1,
            max_steps=max_steps,
            fast_render=fast_render,
            benchmark_seed=MT1_SEED,
            cameras=cameras,
        )

    def _configure(self, env, task: str) -> None:  # noqa: ANN001
        mt1 = self._benchmark(task)  # MT1(task, seed=42)
        env.set_task(mt1.train_tasks[0])
        cam = env.model.camera(CAMERA).id  # 2 in every v3 scene, where LeRobot writes it
        env.model.cam_pos[cam] = CAMERA_POS
        env.reset()
        env._freeze_rand_vec = False  # LeRobot: "otherwise no randomization"
        env.seeded_rand_vec = True  # placements from env.np_random, seeded per episode
        # max_path_length stays Meta-World's 500: stepping past it raises, as in LeRobot.

    def _place(self, env, task: str, variation: int) -> None:  # noqa: ANN001
        env.seed(int(variation))  # LeRobot's reset(seed): env.seed(seed), then env.reset()

    def _upright(self, img, camera: str):  # noqa: ANN001, ANN202
        # LeRobot: np.flip(image, (0, 1)) for corner2 (a 180° turn, not a mirror).
        return img[::-1, ::-1] if camera == CAMERA else img
