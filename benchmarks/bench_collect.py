"""Embedded-benchmark measurements behind the defaults in docs/metaworld.md.

    python benchmarks/bench_collect.py --render              # ms per frame: EGL vs OSMesa, fast vs full
    python benchmarks/bench_collect.py --repeat-sweep        # expert success vs action_repeat (no rendering)
    python benchmarks/bench_collect.py [--suite mw-quick] [--tasks a,b]  # expert, label jitter, replay
    python benchmarks/bench_collect.py --suite mt50 --episodes 20 --state-only   # the same, no frames
    python benchmarks/bench_collect.py --collect [--workers 2] [--episodes-per-task 50]
    python benchmarks/bench_collect.py --sample-frames docs/images   # the README/docs frames

``--render`` runs one subprocess per ``MUJOCO_GL`` backend (the backend is fixed when MuJoCo
is imported). The suite table gives, per task, expert success and episode length on
training variations, the open-loop replay baseline on held-out variations (replaying one of
five training demonstrations: a policy that ignores the image) and simulator+render time
per policy step. ``--collect`` times ``worldvla.data.collect.collect`` for the whole suite
(target: <= 5 minutes for mw-quick, 50 episodes per task, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from worldvla.envs.suites import MT10, suite_preset

_RENDER_PROBE = """
import json, sys, time
from worldvla.envs.metaworld import MetaWorldEnv
out = []
for fast in (True, False):
    for res in (64, 128, 256):
        env = MetaWorldEnv(camera="corner", resolution=res, fast_render=fast)
        env.reset("button-press-topdown-v3", 0)
        for _ in range(5):
            env.step(env.expert_action())
        t = time.perf_counter()
        for _ in range(40):
            env.step(env.expert_action())
        out.append({"fast": fast, "res": res, "ms": 1000 * (time.perf_counter() - t) / 40})
        env.close()
print(json.dumps(out))
"""


def bench_render() -> None:
    print("| MUJOCO_GL | render | 64 px | 128 px | 256 px |  (ms per policy step, incl. 2 physics steps)")
    print("|---|---|---|---|---|")
    for backend in ("egl", "osmesa"):
        env = {**os.environ, "MUJOCO_GL": backend}
        r = subprocess.run([sys.executable, "-c", _RENDER_PROBE], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"| {backend} | unavailable: {r.stderr.strip().splitlines()[-1]} | | | |")
            continue
        rows = json.loads(r.stdout.strip().splitlines()[-1])
        for fast in (True, False):
            ms = [f"{x['ms']:.1f}" for x in rows if x["fast"] == fast]
            print(f"| {backend} | {'fast' if fast else 'full'} | {' | '.join(ms)} |")


def _expert(env, task: str, variation: int, rate: str = "control") -> tuple[bool, list[np.ndarray]]:  # noqa: ANN001
    """One noiseless expert episode as a suite with ``expert_rate=rate`` collects it: its labels."""
    env.reset(task, variation)
    labels, ok = [], False
    for _ in range(env.max_steps):
        _, ok, label = env.expert_step(rate=rate)
        labels.append(label)
        if ok:
            break
    return ok, labels


def bench_repeat_sweep(tasks: tuple[str, ...], variations: int, physics_steps: int) -> None:
    """Expert success and policy steps per episode vs. action_repeat at a fixed physics-time budget."""
    from worldvla.envs.metaworld import MetaWorldEnv

    repeats = (1, 2, 3, 4)
    print(f"expert success, mean policy steps; variations 0..{variations - 1}; {physics_steps} physics steps")
    print("| task | " + " | ".join(f"action_repeat={r}" for r in repeats) + " |")
    print("|---|" + "---|" * len(repeats))
    for task in tasks:
        cells = []
        for r in repeats:
            env = MetaWorldEnv(action_repeat=r, max_steps=physics_steps // r, cameras=())
            runs = [_expert(env, task, v) for v in range(variations)]
            env.close()
            wins = sum(ok for ok, _ in runs)
            cells.append(f"{wins}/{variations}, {np.mean([len(a) for _, a in runs]):.0f}")
        print(f"| {task} | " + " | ".join(cells) + " |")


def bench_suite(
    suite_name: str, episodes: int, tasks: tuple[str, ...] | None = None, state_only: bool = False
) -> None:
    """Per task: expert success and length, label jitter, open-loop replay on held-out variations.

    Jitter is the mean |change| of the xyz label between consecutive steps (actions in
    [-1, 1]): an expert that switches between targets makes labels a policy cannot read off
    the image. ``tasks`` screens candidates with the suite's rates and splits. ``state_only``
    renders no frame (the experts and the replay read only the simulator state), so ms/step
    is then the simulator's alone.
    """
    suite = suite_preset(suite_name)
    env = suite.make_env(cameras=()) if state_only else suite.make_env()
    print(
        f"suite={suite.name} protocol={suite.protocol} camera={suite.camera} {suite.resolution}px "
        f"action_repeat={suite.action_repeat} max_steps={suite.max_steps} expert_rate={suite.expert_rate} "
        f"episodes={episodes}{' state-only' if state_only else ''}"
    )
    print(
        "| task | expert success (train vars) | mean / max length | label jitter | "
        "replay success (held-out) | ms/step |"
    )
    print("|---|---|---|---|---|---|")
    for task in tasks or suite.tasks:
        t0 = time.perf_counter()
        train = suite.train_variations
        runs = [_expert(env, task, train[i % len(train)], suite.expert_rate) for i in range(episodes)]
        steps = sum(len(a) for _, a in runs)
        ms = 1000 * (time.perf_counter() - t0) / steps
        demos = [np.array(a) for _, a in runs]
        jitter = np.mean([np.abs(np.diff(d[:, :3], axis=0)).mean() for d in demos if len(d) > 1])
        replay = 0
        for i in range(episodes):
            d = demos[i % min(5, len(demos))]
            env.reset(task, suite.test_variations[i % len(suite.test_variations)])
            for t in range(suite.max_steps):
                _, ok = env.step(d[min(t, len(d) - 1)])
                if ok:
                    break
            replay += ok
        lengths = [len(a) for a in demos]
        print(
            f"| {task} | {sum(ok for ok, _ in runs)}/{episodes} | {np.mean(lengths):.0f} / {max(lengths)} | "
            f"{jitter:.2f} | {replay}/{episodes} | {ms:.1f} |"
        )
    env.close()


def bench_collect(suite_name: str, workers: int, episodes_per_task: int | None, noise: float) -> None:
    from worldvla.data.collect import collect

    suite = suite_preset(suite_name)
    with tempfile.TemporaryDirectory() as d:
        r = collect(
            suite,
            Path(d) / "demos.hdf5",
            episodes_per_task=episodes_per_task,
            seed=0,
            action_noise=noise,
            workers=workers,
            progress=False,
        )
        size = (Path(d) / "demos.hdf5").stat().st_size
    print(r.summary())
    print(
        f"collect {suite.name}: {sum(r.kept.values())} kept, {sum(r.dropped.values())} dropped, "
        f"{r.steps} steps, {r.seconds:.0f} s wall, {workers} workers, noise {noise}, {size / 2**20:.1f} MiB"
    )


def save_sample_frames(suite_name: str, out_dir: Path, scale: int = 4) -> None:
    """First frame of the first held-out variation of each task, side by side: at the stored
    resolution and enlarged ``scale``x (nearest neighbour, so the pixels stay honest)."""
    from PIL import Image

    suite = suite_preset(suite_name)
    env = suite.make_env()
    frames = [env.reset(task, suite.test_variations[0]).images[suite.camera] for task in suite.tasks]
    env.close()
    strip = Image.fromarray(np.concatenate(frames, axis=1))  # (H, n_tasks * W, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    strip.save(out_dir / f"{suite.name}-frames-native.png")
    strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST).save(
        out_dir / f"{suite.name}-frames.png"
    )
    print(f"wrote {out_dir}/{suite.name}-frames.png and -frames-native.png ({', '.join(suite.tasks)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="mw-quick")
    ap.add_argument("--episodes", type=int, default=10, help="episodes per task for the suite table")
    ap.add_argument("--tasks", default=None, help="tasks for the suite table, comma-separated")
    ap.add_argument("--state-only", action="store_true", help="suite table without rendering frames")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--repeat-sweep", action="store_true")
    ap.add_argument("--variations", type=int, default=20, help="for --repeat-sweep")
    ap.add_argument("--collect", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--episodes-per-task", type=int, default=None)
    ap.add_argument("--action-noise", type=float, default=0.1)
    ap.add_argument("--sample-frames", type=Path, default=None, metavar="DIR")
    args = ap.parse_args()
    if args.sample_frames is not None:
        save_sample_frames(args.suite, args.sample_frames)
    elif args.render:
        bench_render()
    elif args.repeat_sweep:
        suite = suite_preset(args.suite)
        tasks = tuple(dict.fromkeys(suite.tasks + MT10))
        bench_repeat_sweep(tasks, args.variations, physics_steps=400)
    elif args.collect:
        bench_collect(args.suite, args.workers, args.episodes_per_task, args.action_noise)
    else:
        tasks = tuple(args.tasks.split(",")) if args.tasks else None
        bench_suite(args.suite, args.episodes, tasks, state_only=args.state_only)


if __name__ == "__main__":
    main()
