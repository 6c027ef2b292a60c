"""Scripted-expert demonstrations for the embedded benchmark.

For every task of a suite, ``episodes_per_task`` episodes cycle over the suite's *training*
variations; each runs Meta-World's hand-written expert until success or the step limit.
Only successful episodes are kept (the drop count per task is reported).

Action noise (``action_noise`` = σ > 0): the *executed* action is the expert's plus
N(0, σ²) noise (clipped to [-1, 1]) while the *stored* label is the expert's clean action
for the visited state — DART-style noise injection (Laskey et al., 2017). It widens the
states the demonstrations cover, so a cloned policy sees how the expert recovers from
small errors, without teaching it the noise.

Deterministic by seed: episode ``i`` of task ``k`` draws its noise from
``numpy.random.default_rng([seed, k, i])`` and results are ordered by (task, i) whatever
the number of worker processes. Written with :func:`worldvla.data.episodes.write_episodes`
(temporary name, then rename).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from worldvla.data.episodes import Episode, write_episodes
from worldvla.envs.suites import SuiteConfig
from worldvla.errors import DataError

_ENV = None  # one simulator per worker process


@dataclass(frozen=True)
class Job:
    task_index: int
    task: str
    index: int  # episode number within the task
    variation: int
    seed: int
    action_noise: float
    expert_rate: str = "control"


@dataclass
class CollectReport:
    path: Path
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"wrote {sum(self.kept.values())} successful episodes ({self.steps} steps) to {self.path} "
            f"in {self.seconds:.0f} s"
        ]
        for task in self.kept:
            lines.append(
                f"  {task}: kept {self.kept[task]}, dropped {self.dropped.get(task, 0)} unsuccessful"
            )
        return "\n".join(lines)


def _worker_init(suite: SuiteConfig) -> None:
    global _ENV
    _ENV = suite.make_env()


def _run(job: Job) -> tuple[Job, Episode | None, int]:
    env = _ENV
    rng = np.random.default_rng([job.seed, job.task_index, job.index])
    obs = env.reset(job.task, job.variation)
    frames, actions, states = [], [], []
    success = False
    for _ in range(env.max_steps):
        frames.append(obs.images[env.camera])
        states.append(obs.state)  # proprioception beside the frame (None if the env has none)
        noise = rng.normal(0.0, job.action_noise, env.action_dim) if job.action_noise > 0 else None
        obs, success, label = env.expert_step(noise, rate=job.expert_rate)
        actions.append(label)
        if success:
            break
    steps = len(actions)
    if not success:
        return job, None, steps
    ep = Episode(
        key=f"{job.task}/{job.index}",
        actions=np.stack(actions).astype(np.float32),
        frames={env.camera: np.stack(frames)},
        state=None if states[0] is None else np.stack(states).astype(np.float32),
        instruction=obs.instruction,
        task=job.task,
        attrs={
            "variation": job.variation,
            "seed": job.seed,
            "episode": job.index,
            "success": True,
            "action_noise": job.action_noise,
            "expert_rate": job.expert_rate,
        },
    )
    return job, ep, steps


def collect(
    suite: SuiteConfig,
    out: str | Path,
    episodes_per_task: int | None = None,
    seed: int = 0,
    action_noise: float = 0.0,
    workers: int = 2,
    progress: bool = True,
) -> CollectReport:
    """Run the experts and write the successful episodes to ``out`` (HDF5, atomically).

    ``episodes_per_task`` defaults to the suite's; episode ``i`` of a task runs on training
    variation ``train_variations[i % len]``. ``workers`` > 1 runs that many simulator
    processes (spawned, each with its own GL context); the file is identical for any
    ``workers``. Raises :class:`DataError` if no episode succeeds.
    """
    n = episodes_per_task or suite.episodes_per_task
    jobs = [
        Job(
            k,
            task,
            i,
            suite.train_variations[i % len(suite.train_variations)],
            seed,
            action_noise,
            suite.expert_rate,
        )
        for k, task in enumerate(suite.tasks)
        for i in range(n)
    ]
    report = CollectReport(path=Path(out))
    t0 = time.perf_counter()
    results: list[tuple[Job, Episode | None, int]] = []
    bar = tqdm(
        total=len(jobs), desc=f"collect {suite.name}", unit="ep", disable=not progress, dynamic_ncols=True
    )
    if workers <= 1:
        _worker_init(suite)
        try:
            for job in jobs:
                results.append(_run(job))
                bar.update(1)
        finally:
            _ENV.close()
    else:
        # spawn: every worker builds its own MuJoCo/EGL context from scratch.
        with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(suite,)) as pool:
            for r in pool.imap_unordered(_run, jobs, chunksize=2):
                results.append(r)
                bar.update(1)
    bar.close()
    results.sort(key=lambda r: (r[0].task_index, r[0].index))
    kept, dropped = Counter(), Counter()
    for job, ep, steps in results:
        report.steps += steps if ep is not None else 0
        (kept if ep is not None else dropped)[job.task] += 1
    report.kept = {t: kept[t] for t in suite.tasks}
    report.dropped = {t: dropped[t] for t in suite.tasks}
    episodes = [ep for _, ep, _ in results if ep is not None]
    if not episodes:
        raise DataError(
            f"{out}: no expert episode of suite {suite.name!r} succeeded within {suite.max_steps} steps "
            f"({len(jobs)} tried); nothing written"
        )
    write_episodes(
        out,
        episodes,
        {
            "env": "metaworld",
            "suite": suite.to_dict(),
            "seed": seed,
            "action_noise": action_noise,
            "episodes_per_task": n,
            "kept": report.kept,
            "dropped": report.dropped,
        },
    )
    report.seconds = time.perf_counter() - t0
    return report
