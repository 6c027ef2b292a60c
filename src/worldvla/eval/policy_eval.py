"""Closed-loop policy evaluation on held-out task variations, with baselines in the same run.

Several environments are stepped in lockstep and the policy answers them in one batched
call (:meth:`WorldVLAPolicy.select_action` with ``env_ids``), so evaluation cost is
dominated by one model call per chunk for the whole batch. An episode ends at success
(the environment's flag) or after the suite's step limit.

Agents compared in one run, on the same (task, variation) list:

- ``worldvla``: the checkpoint's policy (chunks executed open-loop, SPEC §6);
- ``random``: uniform actions inside the training actions' bounds;
- ``replay``: the actions of a training demonstration of the same task replayed open-loop
  (what a policy that ignores the image could at best do for a fixed task).

Success rates come with 95% Wilson intervals per task and for the mean.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from tqdm.auto import tqdm

from worldvla.errors import ConfigError
from worldvla.eval.stats import wilson_interval
from worldvla.tokenizers.action import Readout
from worldvla.utils.io import atomic_write_text

K = TypeVar("K")


class Agent(Protocol):
    """What the evaluator drives: the policy or a baseline, batched over env slots."""

    name: str

    def reset(self, env_ids: Sequence[int], tasks: Sequence[str]) -> None: ...

    def act(self, env_ids: Sequence[int], observations: Sequence[Any]) -> np.ndarray: ...


@dataclass
class EpisodeResult:
    agent: str
    task: str
    variation: int
    success: bool
    steps: int
    seconds: float


@dataclass
class AgentSummary:
    agent: str
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    success: float = 0.0
    ci95: tuple[float, float] = (0.0, 0.0)
    episodes: int = 0
    steps: int = 0
    seconds: float = 0.0


def summarize(results: Sequence[EpisodeResult]) -> dict[str, AgentSummary]:
    out: dict[str, AgentSummary] = {}
    for agent in dict.fromkeys(r.agent for r in results):
        rs = [r for r in results if r.agent == agent]
        s = AgentSummary(
            agent=agent, episodes=len(rs), steps=sum(r.steps for r in rs), seconds=sum(r.seconds for r in rs)
        )
        for task in dict.fromkeys(r.task for r in rs):
            tr = [r for r in rs if r.task == task]
            k = sum(r.success for r in tr)
            lo, hi = wilson_interval(k, len(tr))
            s.per_task[task] = {"success": k / len(tr), "ci_low": lo, "ci_high": hi, "episodes": len(tr)}
        k = sum(r.success for r in rs)
        s.success = k / len(rs)
        s.ci95 = wilson_interval(k, len(rs))
        out[agent] = s
    return out


# ---------------------------------------------------------------------------- agents
class PolicyAgent:
    """Wraps :class:`worldvla.policy.WorldVLAPolicy` (its ``num_envs`` must cover the slots)."""

    name = "worldvla"

    def __init__(self, policy: Any, camera: str, instructions: dict[str, str] | None = None) -> None:
        self.policy = policy
        self.camera = camera
        self._instruction: dict[int, str] = {}

    def reset(self, env_ids: Sequence[int], tasks: Sequence[str]) -> None:
        self.policy.reset(env_ids)

    def act(self, env_ids: Sequence[int], observations: Sequence[Any]) -> np.ndarray:
        obs = []
        for o in observations:
            d = {"image": o.images[self.camera], "instruction": o.instruction}
            # The env's proprioceptive state (a policy trained without it ignores it).
            if getattr(o, "state", None) is not None:
                d["state"] = o.state
            obs.append(d)
        return self.policy.select_action(obs, env_ids=env_ids)


class RandomAgent:
    name = "random"

    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int = 0) -> None:
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.rng = np.random.default_rng(seed)

    def reset(self, env_ids: Sequence[int], tasks: Sequence[str]) -> None:
        pass

    def act(self, env_ids: Sequence[int], observations: Sequence[Any]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, size=(len(env_ids), len(self.low))).astype(np.float32)


class ReplayAgent:
    """Replays a training demonstration of the same task open-loop (then holds the last action)."""

    name = "replay"

    def __init__(self, demos: dict[str, list[np.ndarray]], seed: int = 0) -> None:
        self.demos = demos
        self.rng = np.random.default_rng(seed)
        self._plan: dict[int, np.ndarray] = {}
        self._t: dict[int, int] = {}

    def reset(self, env_ids: Sequence[int], tasks: Sequence[str]) -> None:
        for i, task in zip(env_ids, tasks):
            options = self.demos[task]
            self._plan[i] = options[int(self.rng.integers(len(options)))]
            self._t[i] = 0

    def act(self, env_ids: Sequence[int], observations: Sequence[Any]) -> np.ndarray:
        out = []
        for i in env_ids:
            plan = self._plan[i]
            out.append(plan[min(self._t[i], len(plan) - 1)])
            self._t[i] += 1
        return np.stack(out).astype(np.float32)


# ---------------------------------------------------------------------------- loop
def run_agent(
    agent: Agent,
    make_env: Callable[[], Any],
    jobs: Sequence[tuple[str, int]],
    num_envs: int,
    max_steps: int,
    record: Callable[[str, str, int, np.ndarray], None] | None = None,
    record_jobs: Collection[int] = (),
    progress: bool = True,
) -> list[EpisodeResult]:
    """Run ``(task, variation)`` jobs with ``num_envs`` envs in lockstep; return one result per job.

    ``record(agent, task, variation, frames)`` receives the camera frames of the jobs whose
    indices are in ``record_jobs`` (for GIFs).
    """
    envs = [make_env() for _ in range(min(num_envs, len(jobs)))]
    queue = list(jobs)
    results: list[EpisodeResult] = []
    slots: dict[int, dict[str, Any]] = {}
    started = 0
    bar = tqdm(
        total=len(jobs), desc=f"eval {agent.name}", unit="ep", disable=not progress, dynamic_ncols=True
    )

    def start(i: int) -> None:
        nonlocal started
        task, variation = queue.pop(0)
        obs = envs[i].reset(task, variation)
        agent.reset([i], [task])
        frames = [obs.images[envs[i].camera]] if started in record_jobs else None
        slots[i] = {
            "task": task,
            "variation": variation,
            "obs": obs,
            "t": 0,
            "t0": time.perf_counter(),
            "frames": frames,
        }
        started += 1

    try:
        for i in range(len(envs)):
            if queue:
                start(i)
        while slots:
            ids = sorted(slots)
            actions = agent.act(ids, [slots[i]["obs"] for i in ids])
            for i, a in zip(ids, actions):
                s = slots[i]
                obs, success = envs[i].step(a)
                s["obs"], s["t"] = obs, s["t"] + 1
                if s["frames"] is not None:
                    s["frames"].append(obs.images[envs[i].camera])
                if success or s["t"] >= max_steps:
                    results.append(
                        EpisodeResult(
                            agent.name,
                            s["task"],
                            s["variation"],
                            bool(success),
                            s["t"],
                            time.perf_counter() - s["t0"],
                        )
                    )
                    if record is not None and s["frames"] is not None:
                        record(agent.name, s["task"], s["variation"], np.stack(s["frames"]))
                    del slots[i]
                    bar.update(1)
                    if queue:
                        start(i)
    finally:
        bar.close()
        for env in envs:
            env.close()
    return results


def write_results(path: str | Path, results: Sequence[EpisodeResult], meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(results)
    doc = {
        "meta": meta,
        "summary": {k: asdict(v) for k, v in summary.items()},
        "episodes": [asdict(r) for r in results],
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc


# ---------------------------------------------------------------------------- entry point
def save_gif(path: Path, frames: np.ndarray, scale: int = 3, fps: int = 15) -> None:
    import imageio.v2 as imageio

    from worldvla.utils.io import atomic_path

    big = np.asarray(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, list(big), format="GIF", duration=1000 / fps, loop=0)


def spread_over_tasks(keys: Sequence[K], tasks: Sequence[str], n: int) -> list[K]:
    """Up to ``n`` keys taken round-robin over tasks (in order of first appearance), each
    task's keys in their given order: a few episodes of a multi-task store cover every task
    instead of the first one or two in file order."""
    by_task: dict[str, list[K]] = {}
    for key, task in zip(keys, tasks, strict=True):
        by_task.setdefault(task, []).append(key)
    out: list[K] = []
    queues = list(by_task.values())
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:n]


def fresh_gif_dir(path: Path) -> Path:
    """``path`` created and emptied of GIFs: a re-run's report must not show the last run's."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.gif"):
        old.unlink()
    return path


def check_rendering(layout: Any, suite: Any, checkpoint: str | Path) -> None:
    """Refuse a suite whose frames differ from the training data's (camera, size, view).

    Fields the checkpoint did not record (older checkpoints) are not compared; view fields
    added since it was written count at their defaults (``suite_view``).
    """
    from worldvla.envs.view import suite_view

    problems = []
    if layout.camera is not None and layout.camera != suite.camera:
        problems.append(f"camera {layout.camera!r}, the suite's {suite.camera!r}")
    if layout.image_size is not None and layout.image_size != suite.resolution:
        problems.append(f"{layout.image_size}x{layout.image_size} frames, the suite's {suite.resolution}")
    if layout.view is not None and suite_view(layout.view) != suite.view():
        problems.append(f"view {suite_view(layout.view)}, the suite's {suite.view()}")
    if problems:
        raise ConfigError(
            f"{checkpoint}: trained on frames rendered differently from suite {suite.name!r} ("
            + "; ".join(problems)
            + "); evaluate on the suite its data was collected with (--suite)"
        )


def evaluate_policy(
    checkpoint: str | Path,
    suite: Any,
    out_dir: str | Path,
    episodes_per_task: int = 10,
    num_envs: int = 8,
    episodes_path: str | Path | None = None,
    gifs: int = 2,
    seed: int = 0,
    baselines: bool = True,
    progress: bool = True,
    replan_every: int | None = None,
    model: bool = True,
    action_readout: Readout | None = None,
    blind_baselines: bool = False,
) -> dict[str, Any]:
    """Closed-loop success of a checkpoint on the suite's held-out variations, plus baselines.

    Writes ``results.json`` and GIFs into ``out_dir``; returns the results document.
    ``replan_every=None`` executes each chunk open-loop (reference); ``n`` asks the model
    for a new chunk every ``n`` steps (receding horizon). ``action_readout`` overrides the
    checkpoint's (:class:`worldvla.policy.PolicyConfig`). ``model=False`` runs only the
    baselines (the checkpoint then only supplies the action statistics).
    ``blind_baselines`` runs the baselines, which never look at a frame, in envs that render
    none (several times faster; no GIFs of them): for long protocols such as MT50's 500 steps.
    """
    from worldvla.data.episodes import EpisodeReader
    from worldvla.policy import PolicyConfig, WorldVLAPolicy
    from worldvla.utils.provenance import provenance

    out = Path(out_dir)
    fresh_gif_dir(out / "gifs")
    variations = suite.test_variations
    jobs = [(task, variations[i % len(variations)]) for task in suite.tasks for i in range(episodes_per_task)]
    # GIFs of the first episodes of every task in turn, not of the first task only.
    gif_jobs = set(spread_over_tasks(range(len(jobs)), [task for task, _ in jobs], gifs))
    policy = WorldVLAPolicy.from_pretrained(
        checkpoint,
        PolicyConfig(seed=seed, replan_every=replan_every, action_readout=action_readout),
        num_envs=min(num_envs, len(jobs)),
    )
    check_rendering(policy.layout, suite, checkpoint)
    stats = policy.bundle.action_stats
    agents: list[Any] = [PolicyAgent(policy, suite.camera)] if model else []
    if baselines:
        agents.append(RandomAgent(np.array(stats.low), np.array(stats.high), seed=seed))
        if episodes_path is not None:
            demos: dict[str, list[np.ndarray]] = {}
            with EpisodeReader(episodes_path) as reader:
                for key in reader.keys:
                    demos.setdefault(str(reader.attrs(key).get("task")), []).append(reader.actions(key))
            missing = [t for t in suite.tasks if t not in demos]
            if not missing:
                agents.append(ReplayAgent(demos, seed=seed))

    def record(agent: str, task: str, variation: int, frames: np.ndarray) -> None:
        save_gif(out / "gifs" / f"{agent}_{task}_v{variation}.gif", frames)

    results: list[EpisodeResult] = []
    t0 = time.perf_counter()
    for agent in agents:
        blind = blind_baselines and not isinstance(agent, PolicyAgent)
        results += run_agent(
            agent,
            partial(suite.make_env, cameras=()) if blind else suite.make_env,
            jobs,
            num_envs,
            suite.max_steps,
            record=record,
            record_jobs=() if blind else gif_jobs,
            progress=progress,
        )
    meta = provenance(
        checkpoint=str(checkpoint),
        suite=suite.to_dict(),
        episodes_per_task=episodes_per_task,
        num_envs=num_envs,
        seed=seed,
        blind_baselines=blind_baselines,
        wall_seconds=time.perf_counter() - t0,
        policy={
            "chunk_len": policy.chunk_len,
            "history": policy.layout.history,
            "chunk_mask": policy.chunk_mask,
            "replan_every": policy.config.replan_every,
            "temperature": policy.config.temperature,
            "action_readout": policy.action_readout,
            "reads_state": bool(policy.state_dim),
        },
    )
    return write_results(out / "results.json", results, meta)
