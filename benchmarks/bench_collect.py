"""Embedded-benchmark facts behind the suite choice and the collection speed target.

    python benchmarks/bench_collect.py [--suite mw-quick] [--episodes 10] [--collect]

For each task of the suite: expert success and episode length on training variations,
the open-loop replay baseline on held-out variations (replaying one of five training
demonstrations), and simulator+render time per policy step. With ``--collect``, also the
wall time of ``worldvla collect`` for the whole suite (the target is <= 5 minutes for
mw-quick on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from worldvla.envs.suites import suite_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="mw-quick")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    suite = suite_preset(args.suite)
    env = suite.make_env()
    print(
        f"# bench_collect: suite={suite.name} camera={suite.camera} {suite.resolution}px "
        f"action_repeat={suite.action_repeat} max_steps={suite.max_steps}"
    )
    print(
        "| task | expert success (train vars) | mean / max length | replay success (held-out) | ms/step |"
    )
    print("|---|---|---|---|---|")
    for task in suite.tasks:
        demos, lengths, wins, steps = [], [], 0, 0
        t0 = time.perf_counter()
        for i in range(args.episodes):
            env.reset(task, suite.train_variations[i % len(suite.train_variations)])
            acts, ok = [], False
            for _ in range(suite.max_steps):
                a = env.expert_action()
                acts.append(a)
                _, ok = env.step(a)
                if ok:
                    break
            wins += ok
            steps += len(acts)
            lengths.append(len(acts))
            demos.append(np.array(acts))
        ms = 1000 * (time.perf_counter() - t0) / steps
        replay = 0
        held_out = suite.test_variations
        for i in range(args.episodes):
            d = demos[i % min(5, len(demos))]
            env.reset(task, held_out[i % len(held_out)])
            for t in range(suite.max_steps):
                _, ok = env.step(d[min(t, len(d) - 1)])
                if ok:
                    break
            replay += ok
        print(
            f"| {task} | {wins}/{args.episodes} | {np.mean(lengths):.0f} / {max(lengths)} | "
            f"{replay}/{args.episodes} | {ms:.1f} |"
        )
    env.close()
    if args.collect:
        from worldvla.data.collect import collect

        with tempfile.TemporaryDirectory() as d:
            r = collect(suite, Path(d) / "demos.hdf5", seed=0, action_noise=0.1, workers=2, progress=False)
        print(
            f"\ncollect {suite.name}: {sum(r.kept.values())} episodes kept, "
            f"{sum(r.dropped.values())} dropped, {r.steps} steps, {r.seconds:.0f} s wall (2 workers)"
        )


if __name__ == "__main__":
    main()
