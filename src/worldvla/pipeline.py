"""The main job: collect → train tokenizer → tokenize → train → evaluate → report.

Every stage writes into its own folder of the run directory and is recorded in
``stages.json`` (atomically) when it completes, with its wall time. Running the same
command again skips completed stages and resumes the interrupted one: collection and the
tokenizer restart (minutes), the token cache and training resume from where they were
killed (``worldvla.data.token_cache``, ``worldvla.train.checkpoint``).

    RUN/data/episodes.hdf5     demonstrations (training variations only)
    RUN/tokenizer/             image tokenizer + metrics.json + reconstructions.png
    RUN/cache/                 token cache
    RUN/train/                 checkpoints, metrics.jsonl, TensorBoard
    RUN/eval_policy/           results.json + GIFs (model, random, replay)
    RUN/eval_world/            results.json + GIFs (real vs. imagined)
    RUN/report.md, report.html
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldvla.presets import ExperimentConfig
from worldvla.utils.io import atomic_write_text
from worldvla.utils.provenance import provenance
from worldvla.utils.stored import with_defaults

STAGES = ("collect", "tokenizer", "tokenize", "train", "eval_policy", "eval_world", "report")
DATA_STAGES = STAGES[:3]


class RunState:
    """``stages.json``: which stages finished, how long each took, and how the run was made."""

    def __init__(self, run_dir: Path, exp: ExperimentConfig, suite: dict[str, Any] | None = None) -> None:
        """``suite``: the suite's definition (``SuiteConfig.to_dict``); a run whose data came
        from another definition of the same suite name (or from before definitions were
        recorded) is refused rather than silently reused."""
        self.path = run_dir / "stages.json"
        existing = json.loads(self.path.read_text()) if self.path.exists() else {}
        wanted = json.loads(json.dumps(exp.to_dict()))  # tuples -> lists, as stored
        from worldvla.envs.suites import SuiteConfig

        stored_suite = with_defaults(existing.get("suite"), SuiteConfig)
        stored_exp = with_defaults(existing.get("experiment"), ExperimentConfig)
        stale_suite = suite is not None and existing.get("stages") and stored_suite != suite
        if existing and existing.get("experiment") and (stored_exp != wanted or stale_suite):
            from worldvla.errors import ConfigError

            if stored_exp == wanted:
                what = f"data of another definition of suite {exp.suite!r}"
            else:
                what = f"a run of another configuration (preset {existing.get('preset')!r})"
            raise ConfigError(f"{run_dir} holds {what}; use another --out directory")
        self.doc = existing or {
            "preset": exp.name,
            "experiment": exp.to_dict(),
            "seed": exp.seed,
            "stages": {},
        }
        self.exp = exp
        self.doc["experiment"] = exp.to_dict()
        if suite is not None:
            self.doc["suite"] = suite

    def claim(self) -> None:
        """Record this command as the run's maker (only when it is going to run a stage)."""
        self.doc.update(provenance(preset=self.exp.name, seed=self.exp.seed))
        self.save()

    def stage(self, name: str) -> dict[str, Any]:
        return self.doc["stages"].setdefault(name, {"done": False, "seconds": 0.0})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")


def _run_stage(
    state: RunState, name: str, fn: Callable[[dict[str, Any]], Any], log: Callable[[str], None]
) -> None:
    st = state.stage(name)
    if st["done"]:
        log(f"[{name}] done earlier ({st['seconds'] / 60:.1f} min), skipped")
        return
    log(f"[{name}] ...")
    t0 = time.perf_counter()
    try:
        fn(st)
    finally:
        st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - t0
        state.save()
    st["done"] = True
    state.save()
    log(f"[{name}] finished in {st['seconds'] / 60:.1f} min")


def run_pipeline(
    exp: ExperimentConfig,
    run_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stages: tuple[str, ...] = STAGES,
) -> Path:
    """Run (or resume) the ``stages`` of ``exp`` in ``run_dir``; returns the HTML report's path.

    ``stages=DATA_STAGES`` prepares only the data (episodes, tokenizer, token cache), as
    the ablation driver does for the runs that share it.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown pipeline stages {unknown}; known: {STAGES}")
    from worldvla.envs.suites import suite_preset
    from worldvla.tokenizers.vq import vq_preset
    from worldvla.train.config import apply_overrides, train_preset

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    suite = suite_preset(exp.suite)
    vq_preset(exp.tokenizer)
    train_cfg = apply_overrides(train_preset(exp.train), list(exp.train_overrides))
    state = RunState(run, exp, json.loads(json.dumps(suite.to_dict())))
    if "report" in stages or not all(state.stage(n)["done"] for n in stages):
        # Reusing finished stages (e.g. the ablation reading a quickstart's data) leaves the
        # run's provenance to the command that made it.
        state.claim()
    episodes = run / "data" / "episodes.hdf5"
    tok_dir, cache_dir, train_dir = run / "tokenizer", run / "cache", run / "train"

    def collect_stage(st: dict[str, Any]) -> None:
        from worldvla.data.collect import collect

        report = collect(
            suite,
            episodes,
            exp.episodes_per_task,
            exp.seed,
            exp.action_noise,
            exp.workers,
            progress,
            exploration=exp.exploration_config(),
        )
        st.update(kept=report.kept, dropped=report.dropped, steps=report.steps)
        log(report.summary())

    def tokenizer_stage(st: dict[str, Any]) -> None:
        from worldvla.tokenizers.vq_train import VQTrainConfig, train_tokenizer

        cfg = VQTrainConfig(
            preset=exp.tokenizer,
            seed=exp.seed,
            steps=exp.tokenizer_steps or 10**9,
            minutes=None if exp.tokenizer_steps else exp.tokenizer_minutes,
        )
        m = train_tokenizer(episodes, tok_dir, cfg, camera=suite.camera, progress=progress)
        st.update(val_psnr=m["val_psnr"], val_codebook_usage=m["val_codebook_usage"])
        log(f"tokenizer: held-out PSNR {m['val_psnr']:.2f} dB, codebook usage {m['val_codebook_usage']:.0%}")

    def tokenize_stage(st: dict[str, Any]) -> None:
        from worldvla.data.token_cache import build_token_cache
        from worldvla.tokenizers.image import load_image_tokenizer

        cache = build_token_cache(
            episodes,
            load_image_tokenizer(tok_dir),
            cache_dir,
            tokenizer_path=tok_dir,
            camera=suite.camera,
            progress=progress,
        )
        st.update(frames=len(cache))

    def train_stage(st: dict[str, Any]) -> None:
        from worldvla.train.checkpoint import latest_checkpoint
        from worldvla.train.loop import train

        minutes = None
        if exp.train_minutes is not None:
            minutes = max(0.1, exp.train_minutes - st.get("seconds", 0.0) / 60)
        resume = latest_checkpoint(train_dir) is not None
        result = train(train_cfg, cache_dir, train_dir, resume=resume, minutes=minutes, progress=progress)
        st.update(
            step=result.step,
            checkpoint=str(result.checkpoint),
            tokens_per_s=result.tokens_per_s,
            stopped_by_budget=result.stopped_by_budget,
            last_val=result.last_val,
        )

    def eval_policy_stage(st: dict[str, Any]) -> None:
        from worldvla.eval.policy_eval import evaluate_policy

        doc = evaluate_policy(
            train_dir,
            suite,
            run / "eval_policy",
            exp.eval_episodes_per_task,
            exp.eval_envs,
            episodes_path=episodes,
            gifs=exp.gifs,
            seed=exp.seed,
            progress=progress,
        )
        st.update(success={a: s["success"] for a, s in doc["summary"].items()})
        log(
            "policy success: "
            + ", ".join(f"{a} {100 * s['success']:.0f}%" for a, s in doc["summary"].items())
        )

    def eval_world_stage(st: dict[str, Any]) -> None:
        from worldvla.eval.world_eval import evaluate_world

        doc = evaluate_world(
            train_dir,
            episodes,
            run / "eval_world",
            exp.eval_world_episodes,
            exp.rollout_lengths,
            gifs=exp.gifs,
            suite=suite,
            progress=progress,
        )
        st.update(psnr={f"{r['method']}@{r['requested_length']}": r["psnr"] for r in doc["rows"]})

    def report_stage(st: dict[str, Any]) -> None:
        from worldvla.eval.report import write_report

        st["path"] = str(write_report(run, title=f"WorldVLA quickstart ({exp.name})"))

    fns = {
        "collect": collect_stage,
        "tokenizer": tokenizer_stage,
        "tokenize": tokenize_stage,
        "train": train_stage,
        "eval_policy": eval_policy_stage,
        "eval_world": eval_world_stage,
        "report": report_stage,
    }
    for name in STAGES:
        if name not in stages:
            continue
        if name == "report":
            state.stage("report")["done"] = False  # always rebuilt: it summarizes everything above
        _run_stage(state, name, fns[name], log)
    return run / "report.html"
