"""The LIBERO evaluation loop (SPEC §7): a run's settings, one episode, the summary.

What the loop does, following the reference evaluation:

=================  =================================================================
suites             libero_spatial, libero_object, libero_goal, libero_10 (10 tasks each)
episodes           50 per task; episode i starts from the benchmark's initial state i
seed               ``env.seed(seed)`` once per task before its episodes (the reference
                   uses 0: the seed moves objects even with fixed initial states)
wait               the first 10 steps send the no-op ``[0, 0, 0, 0, 0, 0, -1]`` (objects
                   settle; gripper -1 = open); they do not count towards max steps
max steps          220 / 280 / 300 / 520 policy steps (spatial / object / goal / 10)
observation        agent-view camera rendered at the training resolution, rotated 180°
action             7-D: Δxyz, Δrotation(3), gripper (+1 close, -1 open), sent as is
success           the env's ``done`` flag (LIBERO sets it when the goal predicates hold)
=================  =================================================================

The benchmark's constants (suites, step limits, camera, no-op action, the 180° rotation)
live in :mod:`worldvla.envs.libero_benchmark`; :class:`LiberoEvalConfig` records how a run
deviates from them. The client that drives the loop against a policy server is
:mod:`worldvla.eval.libero_client`.

This module imports only numpy: the evaluation client runs in LIBERO's own environment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from worldvla.envs.libero_benchmark import (
    ACTION_DIM,
    CAMERA,
    EPISODES_PER_TASK,
    MAX_STEPS,
    NOOP_ACTION,
    NUM_WAIT_STEPS,
    SUITES,
    TASKS_PER_SUITE,
    rotate_180,
    suite_name,
)


@dataclass(frozen=True)
class LiberoEvalConfig:
    """One evaluation run. Defaults are the reference protocol; deviations are recorded in results."""

    suites: tuple[str, ...] = SUITES
    task_ids: tuple[int, ...] | None = None  # None = all 10 tasks of each suite
    episodes_per_task: int = EPISODES_PER_TASK
    resolution: int = 256
    seed: int = 0
    num_wait_steps: int = NUM_WAIT_STEPS
    max_steps: dict[str, int] = field(default_factory=lambda: dict(MAX_STEPS))
    camera: str = CAMERA
    mode: str = "act"  # "act": server-side action queue, every frame observed; "chunk": client-side queue

    def __post_init__(self) -> None:
        object.__setattr__(self, "suites", tuple(suite_name(s) for s in self.suites))
        if not self.suites:
            raise ValueError("no LIBERO suite to evaluate")
        if self.task_ids is not None and any(not 0 <= t < TASKS_PER_SUITE for t in self.task_ids):
            raise ValueError(f"task ids must be in [0, {TASKS_PER_SUITE}), got {self.task_ids}")
        if not 1 <= self.episodes_per_task <= EPISODES_PER_TASK:
            raise ValueError(f"episodes per task must be in [1, {EPISODES_PER_TASK}] (one per initial state)")
        if self.resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {self.resolution}")
        if self.mode not in ("act", "chunk"):
            raise ValueError(f"mode must be 'act' or 'chunk', got {self.mode!r}")
        if self.num_wait_steps < 0 or any(v < 1 for v in self.max_steps.values()):
            raise ValueError("wait steps must be >= 0 and max steps >= 1")

    def steps_for(self, suite: str) -> int:
        return self.max_steps.get(suite, MAX_STEPS[suite])

    def deviations(self) -> list[str]:
        """How this run differs from the reference protocol (empty for a reference run)."""
        ref = LiberoEvalConfig()
        out = []
        for key in ("suites", "task_ids", "episodes_per_task", "num_wait_steps", "camera", "seed"):
            if getattr(self, key) != getattr(ref, key):
                out.append(f"{key}={getattr(self, key)!r} (reference {getattr(ref, key)!r})")
        for s in self.suites:
            if self.steps_for(s) != MAX_STEPS[s]:
                out.append(f"max_steps[{s}]={self.steps_for(s)} (reference {MAX_STEPS[s]})")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["suites"], d["task_ids"] = list(self.suites), None if self.task_ids is None else list(self.task_ids)
        d["max_steps"] = {s: self.steps_for(s) for s in self.suites}
        d["no_op_action"] = list(NOOP_ACTION)
        d["rotate_180"] = True
        d["success"] = "env done flag"
        d["init_state"] = "episode i uses the benchmark's initial state i"
        d["deviations_from_reference"] = self.deviations()
        return d


@dataclass
class EpisodeResult:
    success: bool
    steps: int  # policy steps taken (wait steps excluded)
    policy_calls: int
    seconds: float = 0.0


def run_episode(
    env: Any,
    init_state: np.ndarray,
    act: Callable[[dict[str, Any]], np.ndarray],
    instruction: str,
    max_steps: int,
    num_wait_steps: int = NUM_WAIT_STEPS,
    camera: str = CAMERA,
    reset_policy: Callable[[], None] | None = None,
) -> EpisodeResult:
    """Run one episode of the reference protocol on a LIBERO ``ControlEnv``-like ``env``.

    ``env`` needs ``reset()``, ``set_init_state(state) -> obs`` and ``step(action) ->
    (obs, reward, done, info)`` with ``obs[f"{camera}_image"]`` uint8 (H, W, 3). ``act`` maps
    ``{"image", "instruction"}`` to one 7-D action.
    """
    import time

    t0 = time.perf_counter()
    if reset_policy is not None:
        reset_policy()
    env.reset()
    obs = env.set_init_state(init_state)
    noop = np.asarray(NOOP_ACTION, dtype=np.float64)
    for _ in range(num_wait_steps):  # let objects settle; done is not checked (reference)
        obs, _, _, _ = env.step(noop.tolist())
    calls = 0
    for t in range(max_steps):
        image = rotate_180(np.asarray(obs[f"{camera}_image"]))
        action = np.asarray(act({"image": image, "instruction": instruction}), dtype=np.float64).reshape(-1)
        calls += 1
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"policy returned an action of shape {action.shape} (need {ACTION_DIM} finite values)"
            )
        obs, _, done, _ = env.step(action.tolist())
        if done:
            return EpisodeResult(True, t + 1, calls, time.perf_counter() - t0)
    return EpisodeResult(False, max_steps, calls, time.perf_counter() - t0)


def chunk_actor(predict_chunk: Callable[[dict[str, Any]], np.ndarray]) -> tuple[Callable, Callable]:
    """Client-side open-loop chunk execution: returns ``(act, reset)`` over a chunk predictor."""
    queue: list[np.ndarray] = []

    def act(obs: dict[str, Any]) -> np.ndarray:
        if not queue:
            queue.extend(np.asarray(predict_chunk(obs)).reshape(-1, ACTION_DIM))  # (K, D) -> K actions
        return queue.pop(0)

    return act, queue.clear


def summarize(per_task: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Success rates per suite and overall from per-task records (``suite``, ``successes``, ``episodes``)."""
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for rec in per_task:
        by_suite.setdefault(rec["suite"], []).append(rec)
    suites = {
        s: {
            "success_rate": sum(r["successes"] for r in recs) / max(1, sum(r["episodes"] for r in recs)),
            "episodes": sum(r["episodes"] for r in recs),
            "tasks": len(recs),
        }
        for s, recs in by_suite.items()
    }
    rates = [v["success_rate"] for v in suites.values()]
    return {"suites": suites, "average_success_rate": float(np.mean(rates)) if rates else None}
