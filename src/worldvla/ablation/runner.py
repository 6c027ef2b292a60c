"""Run an ablation: shared data once, then train and evaluate every (variant, seed), resumably.

Layout of an ablation directory::

    RUN/ablation.json          the budget (preset, steps, evaluation sizes) + provenance
    RUN/runs/<key>/            one distinct training config (key = hash of the config)
        train/                 checkpoints, metrics (resumes after a kill)
        eval_policy/           closed-loop success (skipped for world-only)
        eval_offline/          generated chunks vs. held-out demonstrations (action L1)
        eval_world/            rollout metrics (variants that need them)
        result.json            written last, atomically: the run is done
    RUN/baselines/results.json random actions and demonstration replay, once
    RUN/table.md, success_vs_chunk.png, runs.json   (worldvla.ablation.aggregate)

With early stopping (the claims study) a run's policy is evaluated at its best held-out
action loss (``train/best/action``) and its world model at its best world loss
(``train/best/world``). A run that starts from another run's weights (``init_from``) runs
after it, and is keyed by that run's key.

The data stages (episodes, image tokenizer, token cache) run once, in ``data_dir``
(default ``RUN/data``), or are reused from a quickstart of the same experiment preset.
Running the same command again skips every run whose ``result.json`` is complete, resumes
the interrupted one from its last checkpoint, and adds to finished runs any metric their
result lacks (computed from the saved checkpoint, without retraining). With a results
directory (``--results``), the tables there are rewritten after every finished run, and runs
that its ``runs.json`` records are restored instead of run again
(:mod:`worldvla.ablation.restore`): committed results carry an ablation to a new machine.
The stages of a run (train, eval_policy, eval_offline, eval_world) and their record follow
:mod:`worldvla.utils.stages`, as the quickstart's do.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from worldvla.ablation.config import AblationConfig
from worldvla.ablation.plan import Run, plan
from worldvla.ablation.schedule import POLL_S, RunLock, claim
from worldvla.errors import ConfigError, WorldVLAError
from worldvla.utils.stages import StageRecord, reuse, timed

# Fields of the ablation that decide what every run computes: a directory holds one budget.
BUDGET_FIELDS = (
    "experiment",
    "train",
    "steps",
    "warmup_steps",
    "eval_episodes_per_task",
    "eval_envs",
    "eval_world_episodes",
    "rollout_lengths",
    "counterfactual",
)
# Budget fields added later, with the value an ablation recorded before them meant.
_BUDGET_DEFAULTS = {"counterfactual": False}


def best_checkpoint(train_dir: Path, kind: str) -> Path:
    """The run's best checkpoint of ``kind`` ("action" or "world") if it kept one (early
    stopping), else the run itself (its last checkpoint)."""
    from worldvla.train.early_stop import BEST_DIR

    best = train_dir / BEST_DIR / kind
    return best if best.is_dir() else train_dir


def budget(cfg: AblationConfig) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg.to_dict()))
    return {k: d[k] for k in BUDGET_FIELDS}


def _ablation_record(run_dir: Path) -> StageRecord:
    return StageRecord(
        run_dir / "ablation.json", "ablation record", "move the directory away or repair the file"
    )


def _result_record(out: Path) -> StageRecord:
    return StageRecord(out / "result.json", "run result", "delete it to run this run again")


def _check_budget(record: StageRecord, cfg: AblationConfig) -> None:
    old = _BUDGET_DEFAULTS | record.doc.get("budget", {})
    diff = {k: (old.get(k), v) for k, v in budget(cfg).items() if old.get(k) != v}
    if record.path.exists() and diff:
        raise ConfigError(
            f"{record.path.parent} holds an ablation with another budget ({diff}: stored vs. asked); "
            "use another --out"
        )


def run_ablation(
    cfg: AblationConfig,
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    results_dir: str | Path | None = None,
) -> Path:
    """Prepare the data, run every missing (variant, seed), then aggregate; returns table.md.

    ``jobs`` > 1 runs that many worker processes, each with its share of the CPU threads
    (:mod:`worldvla.ablation.schedule` gives every run to one of them). ``results_dir``:
    restore the runs its runs.json records, and rewrite its tables after every run."""
    from worldvla.ablation.aggregate import aggregate
    from worldvla.ablation.restore import restore_results
    from worldvla.experiments import experiment_preset
    from worldvla.pipeline import DATA_STAGES, run_pipeline

    run = Path(run_dir)
    exp = experiment_preset(cfg.experiment)
    record = _ablation_record(run)
    _check_budget(record, cfg)
    run.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir is not None else run / "data"
    record.stamp(preset=cfg.name)
    record.doc.update(budget=budget(cfg), data_dir=str(data))
    record.doc.setdefault("requested", [])
    record.doc["requested"].append({"variants": list(cfg.variants), "seeds": list(cfg.seeds)})
    record.save()
    results = Path(results_dir) if results_dir is not None else None
    if results is not None:
        restore_results(run, cfg, results, budget(cfg), lambda r, doc: not _missing(r, doc), log)

    log(f"[data] {data}")
    run_pipeline(exp, data, progress=progress, log=log, stages=DATA_STAGES)
    runs = plan(cfg)
    todo = [r for r in runs if not _done(run, r)]
    steps = " or ".join(str(n) for n in sorted({r.train.steps for r in runs}))
    log(f"[runs] {len(runs)} distinct runs ({len(runs) - len(todo)} done earlier), {steps} steps each")
    if jobs > 1:
        _run_jobs(cfg, run, data, jobs, log, results)
    else:
        _work(cfg, run, data, progress, log, results=results)
    first_policy = next((r for r in runs if r.policy_eval), None)
    if first_policy is not None and not (run / "baselines" / "results.json").exists():
        _baselines(cfg, run, run / "runs" / first_policy.key / "train", data, exp.suite, progress)
    if results is not None:
        aggregate(run, cfg, out_dir=results)
    return aggregate(run, cfg)


def _done(run: Path, r: Run) -> bool:
    return not _missing(r, _result_record(run / "runs" / r.key).doc)


def _work(
    cfg: AblationConfig,
    run: Path,
    data: Path,
    progress: bool,
    log: Callable[[str], None],
    stop: Callable[[], bool] = lambda: False,
    results: Path | None = None,
) -> None:
    """Claim and run the plan's runs until none is left (or ``stop()``); returns when every
    run is done, waiting meanwhile for runs that other processes hold. After each run the
    tables in ``results`` (if given) are rewritten, so that finished runs can be kept."""
    from worldvla.ablation.aggregate import aggregate
    from worldvla.experiments import experiment_preset

    suite = experiment_preset(cfg.experiment).suite
    runs = plan(cfg)
    runs_dir = run / "runs"
    n_done = sum(_done(run, r) for r in runs)
    t_start = time.perf_counter()
    said_waiting = False
    while not stop():
        r, lock, waiting = claim(
            runs, runs_dir, lambda r: _done(run, r), lambda key: "step" in _result_record(runs_dir / key).doc
        )
        if r is None or lock is None:
            if not waiting:
                return
            if not said_waiting:
                log("[wait] the remaining runs are held by other processes or wait for theirs")
                said_waiting = True
            time.sleep(POLL_S)
            continue
        said_waiting = False
        with lock:
            now_done = sum(_done(run, x) for x in runs)
            eta = ""
            if now_done > n_done:
                per = (time.perf_counter() - t_start) / (now_done - n_done)
                eta = f", ETA {per * (len(runs) - now_done) / 60:.0f} min"
            log(f"[{now_done}/{len(runs)} runs done{eta}] {'+'.join(r.variants)} seed {r.seed} ({r.key})")
            _run_one(r, cfg, runs_dir, data, suite, progress, log)
        if r.policy_eval and not (run / "baselines" / "results.json").exists():
            with RunLock(run / "baselines.lock") as bl:
                if bl.acquire() and not (run / "baselines" / "results.json").exists():
                    _baselines(cfg, run, runs_dir / r.key / "train", data, suite, progress)
        if results is not None:
            aggregate(run, cfg, out_dir=results)
            log(f"[results] {results} updated")


def _worker(
    cfg: AblationConfig,
    run: Path,
    data: Path,
    threads: int,
    job: int,
    stop: Any,
    errors: Any,
    results: Path | None = None,
) -> None:
    """One ``--jobs`` worker process: its share of the threads, its log lines prefixed."""
    import torch

    torch.set_num_threads(threads)

    def log(line: str) -> None:
        print(f"[job {job}] {line}", flush=True)

    try:
        _work(cfg, run, data, progress=False, log=log, stop=stop.is_set, results=results)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the others
        stop.set()
        user = isinstance(e, WorldVLAError)
        errors.put((job, user, str(e) if user else "".join(traceback.format_exception(e))))
        raise SystemExit(1) from None


def _run_jobs(
    cfg: AblationConfig,
    run: Path,
    data: Path,
    jobs: int,
    log: Callable[[str], None],
    results: Path | None = None,
) -> None:
    """Run the plan with ``jobs`` worker processes; the first failure stops the others after
    their current run and is raised here (a user error as one line)."""
    import multiprocessing as mp
    import queue

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    log(f"[jobs] {jobs} worker processes, {threads} thread(s) each")
    ctx = mp.get_context("spawn")
    stop, errors = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, args=(cfg, run, data, threads, j + 1, stop, errors, results), daemon=False
        )
        for j in range(jobs)
    ]
    failed: list[tuple[int, bool, str]] = []

    def drain() -> None:  # read reports while joining: a child exits only once its report is read
        while True:
            try:
                failed.append(errors.get_nowait())
            except queue.Empty:
                return

    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            drain()
            for p in procs:
                p.join(timeout=1.0)
        drain()
    except BaseException:
        stop.set()
        for p in procs:
            p.terminate()
        raise
    if failed or any(p.exitcode for p in procs):
        job, user, text = failed[0] if failed else (0, False, "a worker process died")
        msg = f"ablation job {job} failed: {text}"
        raise WorldVLAError(msg) if user else RuntimeError(msg)


def _stages(r: Run) -> dict[str, str]:
    """The stages of run ``r``, in order -> the key of ``result.json`` that records each."""
    stages = {"train": "step"}
    if r.policy_eval:
        stages.update(eval_policy="policy", eval_offline="offline")
    if r.world_eval:
        stages["eval_world"] = "world"
    return stages


def _missing(r: Run, doc: dict[str, Any]) -> list[str]:
    """Stages of a run still to run (a result of an older version may lack newer metrics)."""
    return [name for name, key in _stages(r).items() if key not in doc]


def _run_one(
    r: Run,
    cfg: AblationConfig,
    runs_dir: Path,
    data: Path,
    suite: Any,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Run the missing stages of ``r`` into ``runs_dir/<key>``, then write its ``result.json``."""
    from worldvla.eval.offline_actions import evaluate_offline_actions
    from worldvla.eval.policy_eval import evaluate_policy
    from worldvla.eval.world_eval import evaluate_world
    from worldvla.train.checkpoint import latest_checkpoint
    from worldvla.train.loop import train

    out = runs_dir / r.key
    episodes = data / "data" / "episodes.hdf5"
    record = _result_record(out)
    doc = record.doc
    policy_ckpt = best_checkpoint(out / "train", "action")
    world_ckpt = best_checkpoint(out / "train", "world")

    def train_stage() -> None:
        nonlocal policy_ckpt, world_ckpt
        resume = latest_checkpoint(out / "train") is not None
        cfg_now = r.train
        if r.init is not None:
            init_doc = _result_record(runs_dir / r.init).doc
            if "step" not in init_doc:
                raise ConfigError(f"run {r.key} starts from run {r.init}, which has not finished training")
            cfg_now = replace(cfg_now, init_from=str(best_checkpoint(runs_dir / r.init / "train", "world")))
        result = train(
            cfg_now, data / "cache", out / "train", resume=resume, progress=progress, inference=cfg.inference
        )
        doc.update(
            key=r.key,
            variants=list(r.variants),
            seed=r.seed,
            train=cfg_now.to_dict(),
            step=result.step,
            tokens_per_s=result.tokens_per_s,
            last_val=result.last_val,
            wall_seconds=result.wall_seconds,
            wall_from_step=result.wall_from_step,
            data=data_identity(data),
        )
        if r.init is not None:
            doc["init_run"] = r.init
        if r.train.early_stop_patience:
            # Each kind at its best: the step, its held-out loss, and whether the run stopped
            # itself (converged) or reached the step cap.
            doc.update(best=result.best, stopped_early=result.stopped_early, steps_cap=r.train.steps)
        policy_ckpt = best_checkpoint(out / "train", "action")
        world_ckpt = best_checkpoint(out / "train", "world")

    def policy_stage() -> None:
        pol = reuse(
            out / "eval_policy" / "results.json",
            lambda: evaluate_policy(
                policy_ckpt,
                suite,
                out / "eval_policy",
                cfg.eval_episodes_per_task,
                cfg.eval_envs,
                gifs=cfg.gifs,
                seed=r.seed,
                baselines=False,
                progress=progress,
            ),
        )
        s = pol["summary"]["worldvla"]
        doc["policy"] = {
            "success": s["success"],
            "ci95": s["ci95"],
            "episodes": s["episodes"],
            "per_task": {t: v["success"] for t, v in s["per_task"].items()},
        }

    def offline_stage() -> None:
        off = reuse(
            out / "eval_offline" / "results.json",
            lambda: evaluate_offline_actions(
                policy_ckpt, episodes, out / "eval_offline", stride=cfg.offline_stride
            ),
        )
        doc["offline"] = {
            k: off[k] for k in ("l1", "l1_first", "l1_per_position", "baseline_mean_action_l1", "samples")
        }

    def world_stage() -> None:
        wd = reuse(
            out / "eval_world" / "results.json",
            lambda: evaluate_world(
                world_ckpt,
                episodes,
                out / "eval_world",
                cfg.eval_world_episodes,
                cfg.rollout_lengths,
                gifs=cfg.gifs,
                counterfactual=cfg.counterfactual,
                suite=suite if cfg.counterfactual else None,
            ),
        )
        doc["world"] = [
            {k: row[k] for k in ("method", "requested_length", "length", "videos", "psnr", "ssim")}
            for row in wd["rows"]
        ]
        if "counterfactual" in wd:
            cf = wd["counterfactual"]
            doc["counterfactual"] = {
                k: cf[k] for k in ("rows", "fidelity", "targets", "moving_share") if k in cf
            }

    stages = {
        "train": train_stage,
        "eval_policy": policy_stage,
        "eval_offline": offline_stage,
        "eval_world": world_stage,
    }
    seconds: dict[str, float] = doc.get("seconds", {})
    for name in _missing(r, doc):
        with timed(seconds, name):
            stages[name]()
    if r.policy_eval:
        log(
            f"  success {100 * doc['policy']['success']:.1f}% over {doc['policy']['episodes']} episodes, "
            f"held-out action L1 {doc['offline']['l1']:.3f} (mean-action baseline "
            f"{doc['offline']['baseline_mean_action_l1']:.3f})"
        )
    if r.world_eval:
        psnr = {row["requested_length"]: row["psnr"] for row in doc["world"] if row["method"] == "worldvla"}
        log("  world PSNR " + ", ".join(f"{n} frames {p:.2f} dB" for n, p in psnr.items()))
    doc["seconds"] = seconds
    record.stamp(preset=cfg.name, seed=r.seed)
    record.save()


def data_identity(data: Path) -> dict[str, str | None]:
    """Which data stages a run trained on: the collection's content digest (``stages.json``)
    and the image tokenizer's fingerprint (the token cache's ``meta.json``). Data stages made
    again on another machine hold the same episodes (seeded) but may hold another tokenizer
    (training it is not bit-reproducible across machines and thread counts)."""

    from worldvla.data.token_cache import META_FILE

    stages = StageRecord(data / "stages.json", "data stages record", "make the data stages again")
    collect = stages.doc.get("stages", {}).get("collect") or {}
    try:
        meta = json.loads((data / "cache" / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    tokenizer = (meta.get("image_tokenizer") if isinstance(meta, dict) else None) or {}
    return {"collection": collect.get("content_sha256"), "tokenizer": tokenizer.get("fingerprint")}


def _baselines(
    cfg: AblationConfig, run: Path, checkpoint: Path, data: Path, suite: Any, progress: bool
) -> None:
    """Random actions and demonstration replay on the same held-out episodes (once)."""
    from worldvla.eval.policy_eval import evaluate_policy

    evaluate_policy(
        checkpoint,
        suite,
        run / "baselines",
        cfg.eval_episodes_per_task,
        cfg.eval_envs,
        episodes_path=data / "data" / "episodes.hdf5",
        gifs=0,
        seed=cfg.seeds[0],
        baselines=True,
        progress=progress,
        model=False,
    )
