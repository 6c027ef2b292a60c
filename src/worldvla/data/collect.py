"""Scripted-expert demonstrations for the embedded benchmark.

For every task of a suite, ``episodes_per_task`` episodes cycle over the suite's *training*
variations; each runs Meta-World's hand-written expert until success or the step limit.
Only successful episodes are kept (the drop count per task is reported).

Action noise (``action_noise`` = σ > 0): the *executed* action is the expert's plus
N(0, σ²) noise (clipped to [-1, 1]) while the *stored* label is the expert's clean action
for the visited state — DART-style noise injection (Laskey et al., 2017). It widens the
states the demonstrations cover, so a cloned policy sees how the expert recovers from
small errors, without teaching it the noise.

Exploratory segments (``exploration``, :mod:`worldvla.data.exploration`): after the
demonstrations, ``exploration.per_task`` segments per task whose actions vary
independently of the scene, for the world model; stored in the same file with
``kind="explore"`` and their executed actions. Demonstrations carry ``kind="demo"`` and,
besides their clean labels, the actions really executed (``executed_actions``).

Deterministic by seed: episode ``i`` of task ``k`` draws its noise from
``numpy.random.default_rng([seed, k, i])`` and results are ordered by (task, i) whatever
the number of worker processes. Written with :func:`worldvla.data.episodes.write_episodes`
(temporary name, then rename).

Resumable: each task's demonstrations (and each task's exploratory segments) are stored as
soon as they are all done (:mod:`worldvla.data.collect_parts`), so a collection killed
midway and started again with the same settings runs only the task groups it had not
finished, and writes the same file.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from worldvla.data.collect_parts import CollectParts, Group
from worldvla.data.episodes import Episode, EpisodeReader, write_episodes
from worldvla.data.exploration import DEMO, EXPLORE, ActionProcess, ExplorationConfig, segment_rng
from worldvla.envs.suites import SuiteConfig
from worldvla.errors import DataError
from worldvla.utils.io import atomic_path
from worldvla.utils.paths import check_output_file

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
    kind: str = DEMO
    exploration: ExplorationConfig | None = None


@dataclass
class CollectReport:
    path: Path
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    explore_segments: int = 0
    explore_steps: int = 0
    seconds: float = 0.0
    reused_from: Path | None = None  # copied from this file (reuse_collected), not collected

    def summary(self) -> str:
        if self.reused_from is not None:
            what = f"copied {sum(self.kept.values())} successful episodes from {self.reused_from}"
        else:
            what = f"wrote {sum(self.kept.values())} successful episodes ({self.steps} steps)"
        lines = [f"{what} to {self.path} in {self.seconds:.0f} s"]
        for task in self.kept:
            lines.append(
                f"  {task}: kept {self.kept[task]}, dropped {self.dropped.get(task, 0)} unsuccessful"
            )
        if self.explore_segments:
            lines.append(
                f"  plus {self.explore_segments} exploratory segments ({self.explore_steps} steps) "
                "for the world model"
            )
        return "\n".join(lines)


def _worker_init(suite: SuiteConfig) -> None:
    global _ENV
    _ENV = suite.make_env()


def _run(job: Job) -> tuple[Job, Episode | None, int]:
    return _explore(job) if job.kind == EXPLORE else _demonstrate(job)


def _demonstrate(job: Job) -> tuple[Job, Episode | None, int]:
    env = _ENV
    rng = np.random.default_rng([job.seed, job.task_index, job.index])
    obs = env.reset(job.task, job.variation)
    frames, actions, executed, states = [], [], [], []
    success = False
    for _ in range(env.max_steps):
        frames.append(obs.images[env.camera])
        states.append(obs.state)  # proprioception beside the frame (None if the env has none)
        noise = rng.normal(0.0, job.action_noise, env.action_dim) if job.action_noise > 0 else None
        obs, success, label = env.expert_step(noise, rate=job.expert_rate)
        actions.append(label)
        executed.append(env.last_executed)
        if success:
            break
    steps = len(actions)
    if not success:
        return job, None, steps
    ep = _episode(
        job,
        env.camera,
        obs.instruction,
        frames,
        actions,
        states,
        {"success": True, "action_noise": job.action_noise, "expert_rate": job.expert_rate},
        executed=executed if job.action_noise > 0 else None,
    )
    return job, ep, steps


def _explore(job: Job) -> tuple[Job, Episode | None, int]:
    """One exploratory segment (:mod:`worldvla.data.exploration`); never dropped."""
    env, cfg = _ENV, job.exploration
    rng = segment_rng(job.seed, job.task_index, job.index)
    obs = env.reset(job.task, job.variation)
    t0 = int(rng.integers(0, cfg.prefix_max + 1))
    for _ in range(t0):  # reach a state that demonstrations visit
        obs, _, _ = env.expert_step(None, rate=job.expert_rate)
    process = ActionProcess(cfg, rng, env.action_dim)
    frames, actions, modes, states = [], [], [], []
    for _ in range(cfg.steps):
        frames.append(obs.images[env.camera])
        states.append(obs.state)
        action, mode = process(env.expert_action())
        obs, _ = env.step(action)
        actions.append(env.last_executed)
        modes.append(mode)
    modes_str = "".join(m[0] for m in modes)  # z / r / e per step
    attrs = {"prefix_steps": t0, "modes": modes_str, "exploration": cfg.to_dict()}
    return job, _episode(job, env.camera, obs.instruction, frames, actions, states, attrs), cfg.steps


def _episode(
    job: Job,
    camera: str,
    instruction: str,
    frames: list,
    actions: list,
    states: list,
    attrs: dict,
    executed: list | None = None,
) -> Episode:
    """The recorded steps of ``job`` as an Episode (kind, variation, seed and index in attrs)."""
    key = f"{job.task}/{job.index}" if job.kind == DEMO else f"{job.task}/{job.kind}/{job.index}"
    return Episode(
        key=key,
        actions=np.stack(actions).astype(np.float32),
        frames={camera: np.stack(frames)},
        state=None if states[0] is None else np.stack(states).astype(np.float32),
        instruction=instruction,
        task=job.task,
        attrs={"kind": job.kind, "variation": job.variation, "seed": job.seed, "episode": job.index, **attrs},
        executed_actions=None if executed is None else np.stack(executed).astype(np.float32),
    )


def collect(
    suite: SuiteConfig,
    out: str | Path,
    episodes_per_task: int | None = None,
    seed: int = 0,
    action_noise: float = 0.0,
    workers: int = 2,
    progress: bool = True,
    exploration: ExplorationConfig | None = None,
    overwrite: bool = False,
) -> CollectReport:
    """Run the experts and write the successful episodes to ``out`` (HDF5, atomically).

    An existing ``out`` is refused unless ``overwrite`` (then replaced only once the new
    file is complete); a folder or an unwritable location is refused before any simulator starts.
    The task groups an interrupted collection of ``out`` with the same settings finished are
    reused (module docstring); an interrupted one with other settings is refused, or with
    ``overwrite`` discarded.

    ``episodes_per_task`` defaults to the suite's; episode ``i`` of a task runs on training
    variation ``train_variations[i % len]``. ``workers`` > 1 runs that many simulator
    processes (spawned, each with its own GL context); the file is identical for any
    ``workers``. ``exploration`` adds exploratory segments after the demonstrations, on
    the same training variations (segment ``i`` on ``train_variations[i % len]``).
    Raises :class:`DataError` if no episode succeeds.
    """
    check_output_file(out, overwrite, what="episode file")
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
    n_explore = exploration.per_task if exploration is not None else 0
    jobs += [
        Job(
            k,
            task,
            i,
            suite.train_variations[i % len(suite.train_variations)],
            seed,
            0.0,
            suite.expert_rate,
            kind=EXPLORE,
            exploration=exploration,
        )
        for k, task in enumerate(suite.tasks)
        for i in range(n_explore)
    ]
    report = CollectReport(path=Path(out))
    t0 = time.perf_counter()
    attrs = _identity(suite, n, seed, action_noise, exploration if n_explore else None)
    parts = CollectParts(out, attrs, restart=overwrite)
    # Demonstrations first, then exploratory segments, each by task.
    groups = sorted({(j.kind, j.task_index) for j in jobs}, key=lambda g: (g[0] == EXPLORE, g[1]))
    done = parts.finished(groups)
    todo = [j for j in jobs if (j.kind, j.task_index) not in done]
    if done and progress:
        print(f"resuming the collection of {out}: {len(done)} of {len(groups)} task groups done earlier")
    _run_jobs(suite, todo, parts, workers, progress)
    kept, dropped = Counter(), Counter()
    for kind, k in groups:
        for _, steps, ok in parts.record((kind, k))["jobs"]:
            if kind == EXPLORE:
                report.explore_segments += 1
                report.explore_steps += steps
                continue
            report.steps += steps if ok else 0
            (kept if ok else dropped)[suite.tasks[k]] += 1
    report.kept = {t: kept[t] for t in suite.tasks}
    report.dropped = {t: dropped[t] for t in suite.tasks}
    if not sum(report.kept.values()):
        parts.remove()
        raise DataError(
            f"{out}: no expert episode of suite {suite.name!r} succeeded within {suite.max_steps} steps "
            f"({len(jobs)} tried); nothing written"
        )
    write_episodes(out, parts.episodes(groups), {**attrs, "kept": report.kept, "dropped": report.dropped})
    parts.remove()
    report.seconds = time.perf_counter() - t0
    return report


def _run_jobs(suite: SuiteConfig, jobs: list[Job], parts: CollectParts, workers: int, progress: bool) -> None:
    """Run ``jobs`` and store each task group in ``parts`` as soon as its last job returns."""
    pending = Counter((j.kind, j.task_index) for j in jobs)
    results: dict[Group, list[tuple[Job, Episode | None, int]]] = defaultdict(list)

    def finish(r: tuple[Job, Episode | None, int]) -> None:
        group = (r[0].kind, r[0].task_index)
        results[group].append(r)
        pending[group] -= 1
        if not pending[group]:
            rs = sorted(results.pop(group), key=lambda x: x[0].index)
            parts.write(
                group,
                [(j.index, steps, ep is not None) for j, ep, steps in rs],
                [ep for _, ep, _ in rs if ep is not None],
            )

    bar = tqdm(
        total=len(jobs), desc=f"collect {suite.name}", unit="ep", disable=not progress, dynamic_ncols=True
    )
    if jobs and workers <= 1:
        _worker_init(suite)
        try:
            for job in jobs:
                finish(_run(job))
                bar.update(1)
        finally:
            _ENV.close()
    elif jobs:
        # spawn: every worker builds its own MuJoCo/EGL context from scratch.
        with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(suite,)) as pool:
            for r in pool.imap_unordered(_run, jobs, chunksize=2):
                finish(r)
                bar.update(1)
    bar.close()


def _identity(
    suite: SuiteConfig,
    episodes_per_task: int,
    seed: int,
    action_noise: float,
    exploration: ExplorationConfig | None,
) -> dict:
    """What decides a collected file's content, as its file attributes record it."""
    return {
        "env": "metaworld",
        "suite": suite.to_dict(),
        "seed": seed,
        "action_noise": action_noise,
        "episodes_per_task": episodes_per_task,
        "exploration": exploration.to_dict() if exploration is not None and exploration.per_task else None,
    }


def reuse_collected(
    source: str | Path,
    out: str | Path,
    suite: SuiteConfig,
    episodes_per_task: int | None = None,
    seed: int = 0,
    action_noise: float = 0.0,
    exploration: ExplorationConfig | None = None,
) -> CollectReport:
    """Copy an episode file that :func:`collect` made with exactly these arguments to ``out``.

    Collection is deterministic per seed, so such a file is the one :func:`collect` would
    write again (MT50's took 26 minutes on a shared 2-core machine). The file's recorded suite
    definition, seed, action noise, episodes per task and exploration must equal the
    arguments; the first field that differs is a :class:`DataError` naming both values, and
    nothing is written. ``out`` appears complete or not at all.
    """
    source = Path(source)
    with EpisodeReader(source) as reader:
        stored = dict(reader.file_attrs)
    n = episodes_per_task or suite.episodes_per_task
    wanted = json.loads(json.dumps(_identity(suite, n, seed, action_noise, exploration)))
    for key, value in wanted.items():
        have = stored.get(key)
        if isinstance(have, str) and isinstance(value, (dict, type(None))):
            with contextlib.suppress(json.JSONDecodeError):
                have = json.loads(have)
        if have != value:
            raise DataError(
                f"{source}: was not collected with this experiment's {key} (the file has {have!r}, the "
                f"experiment needs {value!r}); collect it again or drop the option that reuses it"
            )
    report = CollectReport(path=Path(out))
    t0 = time.perf_counter()
    with atomic_path(out, suffix=".hdf5") as tmp:
        shutil.copyfile(source, tmp)
    kept, dropped = recorded_counts(stored)
    report.kept, report.dropped, report.reused_from = kept, dropped, source
    report.seconds = time.perf_counter() - t0
    return report


def recorded_counts(file_attrs: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """``(kept, dropped)`` demonstrations per task as :func:`collect` records them in an episode
    file's attributes (``EpisodeReader.file_attrs``); empty dicts where the file records none."""
    out = []
    for key in ("kept", "dropped"):
        value = file_attrs.get(key)
        if isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        out.append({str(t): int(n) for t, n in value.items()} if isinstance(value, dict) else {})
    return out[0], out[1]
