"""The main job: collect → train tokenizer → tokenize → train → evaluate → report.

Every stage writes into its own folder of the run directory and is recorded in
``stages.json`` (atomically, :mod:`worldvla.utils.stages`) when it completes, with its wall
time. Running the same command again skips completed stages and resumes the interrupted
one: collection and the tokenizer restart (minutes), the token cache and training resume
from where they were killed (``worldvla.data.token_cache``, ``worldvla.train.checkpoint``).

A run directory carried to another machine without its episode file (the one large file;
checkpoints, tokenizer and token cache are what a resume needs) collects the file again
before the first stage that reads it (training does not): collection is deterministic, and
the new file must hold the same episodes as the recorded one (``content_sha256`` of the
collect stage, :func:`worldvla.data.episodes.content_digest`), or the command stops.

Budgets are steps (``ExperimentConfig.tokenizer_steps``, the training config's ``steps``),
so the same preset gives the same model on any machine. ``max_minutes_per_stage`` caps the
wall time of the two training stages (image tokenizer, model); a stage it cuts short is
recorded with ``step``, ``total_steps`` and ``stopped`` (the reason), announced by a
``WARNING`` line, marked in the report, and kept as it is when the command runs again
(a full run needs a new run directory).

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
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldvla.errors import ConfigError, DataError
from worldvla.eval.report import NOT_COMPARABLE, STAGE_NAMES, cut_short, cut_summary, stage_shortfall
from worldvla.experiments import ExperimentConfig, upgrade_stored_experiment
from worldvla.utils.field_defaults import with_defaults
from worldvla.utils.paths import check_output_dir
from worldvla.utils.stages import StageRecord

STAGES = ("collect", "tokenizer", "tokenize", "train", "eval_policy", "eval_world", "report")
DATA_STAGES = STAGES[:3]
# Stages that read the episode file (a run carried without it collects it again before them).
EPISODE_READERS = ("tokenizer", "tokenize", "eval_policy", "eval_world")


class RunState:
    """``stages.json``: which stages finished, how long each took, and how the run was made."""

    def __init__(self, run_dir: Path, exp: ExperimentConfig, suite: dict[str, Any] | None = None) -> None:
        """``suite``: the suite's definition (``SuiteConfig.to_dict``); a run whose data came
        from another definition of the same suite name (or from before definitions were
        recorded) is refused rather than silently reused."""
        self.record = _read_stages(run_dir / "stages.json")
        existing = self.record.doc
        wanted = json.loads(json.dumps(exp.to_dict()))  # tuples -> lists, as stored
        from worldvla.envs.suites import SuiteConfig

        stored_suite = with_defaults(existing.get("suite"), SuiteConfig)
        stored_exp, legacy = existing.get("experiment"), {}
        if isinstance(stored_exp, dict):  # made by a version that budgeted stages in minutes?
            stored_exp, legacy = upgrade_stored_experiment(stored_exp, wanted)
        stored_exp = with_defaults(stored_exp, ExperimentConfig)
        stale_suite = suite is not None and existing.get("stages") and stored_suite != suite
        if existing and existing.get("experiment") and (stored_exp != wanted or stale_suite):
            if stored_exp == wanted:
                what = f"data of another definition of suite {exp.suite.name!r}"
            else:
                what = f"a run of another configuration (preset {existing.get('preset')!r})"
            raise ConfigError(f"{run_dir} holds {what}; use another --out directory")
        if not existing:
            self.record.doc = {
                "preset": exp.name,
                "experiment": exp.to_dict(),
                "seed": exp.seed,
                "stages": {},
            }
        self.exp = exp
        self.doc["experiment"] = exp.to_dict()
        tok = self.doc.setdefault("stages", {}).get("tokenizer", {})
        if legacy.get("tokenizer_minutes") is not None and tok.get("done"):
            # Reused as made: keep the record of its time budget once the legacy fields are gone.
            tok.setdefault("time_budget_minutes", legacy["tokenizer_minutes"])
        if suite is not None:
            self.doc["suite"] = suite

    @property
    def doc(self) -> dict[str, Any]:
        return self.record.doc

    def claim(self) -> None:
        """Record this command as the run's maker (only when it is going to run a stage)."""
        self.record.stamp(preset=self.exp.name, seed=self.exp.seed)
        self.save()

    def stage(self, name: str) -> dict[str, Any]:
        return self.record.entry(name)

    def save(self) -> None:
        self.record.save()


def _read_stages(path: Path) -> StageRecord:
    return StageRecord(path, "stages file", "use another --out directory")


def _cut_warning(name: str, st: dict[str, Any], run: Path) -> str:
    """One loud line: 'WARNING: training stopped at step 277/1,500 (time cap) — results ...'."""
    step, total, reason = stage_shortfall(name, st, run) or (None, None, "")
    at = f" at step {step:,}/{total:,}" if step is not None and total else ""
    return f"WARNING: {STAGE_NAMES.get(name, f'stage {name}')} stopped{at} ({reason}) — {NOT_COMPARABLE}"


def _check_reused_episodes(given: Path, held: Path, st: dict[str, Any]) -> None:
    """``--episodes`` on a run whose collect stage is done: the file must be the one it holds
    (ConfigError otherwise: nothing of the run is touched)."""
    from worldvla.utils.io import file_sha256

    if not given.is_file():
        raise DataError(f"--episodes {given}: no such file")
    if not held.is_file():
        return  # the collect stage's own checks name the missing file
    same = given.stat().st_size == held.stat().st_size and file_sha256(given) == file_sha256(held)
    if not same:
        origin = st.get("copied_from") or "collected by this run"
        raise ConfigError(
            f"--episodes {given}: the run already holds other episodes ({held}, {origin}); "
            "use another --out to train on this file"
        )


def _run_stage(
    state: RunState,
    name: str,
    fn: Callable[[dict[str, Any]], Any],
    log: Callable[[str], None],
    run: Path,
) -> None:
    st = state.stage(name)
    if state.record.done(name):
        if stage_shortfall(name, st, run):
            log(f"[{name}] cut short by an earlier command, kept as it is; a full run needs a new --out")
            log(_cut_warning(name, st, run))
        else:
            log(f"[{name}] done earlier ({st.get('seconds', 0.0) / 60:.1f} min), skipped")
        return
    log(f"[{name}] ...")
    state.record.run(name, fn)
    log(f"[{name}] finished in {st['seconds'] / 60:.1f} min")
    if stage_shortfall(name, st, run):
        log(_cut_warning(name, st, run))


def stopped_stages(run_dir: str | Path) -> dict[str, str]:
    """Stages of ``run_dir`` that ended before their step budget: name -> what happened."""
    path = Path(run_dir) / "stages.json"
    return cut_short(_read_stages(path).doc, Path(run_dir)) if path.exists() else {}


def run_pipeline(
    exp: ExperimentConfig,
    run_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stages: tuple[str, ...] = STAGES,
    max_minutes_per_stage: float | None = None,
    episodes_from: str | Path | None = None,
) -> Path:
    """Run (or resume) the ``stages`` of ``exp`` in ``run_dir``; returns the HTML report's path.

    ``stages=DATA_STAGES`` prepares only the data (episodes, tokenizer, token cache), as
    the ablation driver does for the runs that share it. ``max_minutes_per_stage`` is an
    optional wall-clock cap on the image tokenizer and on training (for training it counts
    the stage's time over all invocations); what it cuts short is reported loudly, and
    :func:`stopped_stages` lists it afterwards. ``episodes_from``: an episode file that
    ``worldvla collect`` made with the experiment's collection settings, copied as the
    collect stage instead of collecting again (anything else is refused,
    :func:`worldvla.data.collect.reuse_collected`).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown pipeline stages {unknown}; known: {STAGES}")
    cap = max_minutes_per_stage
    if cap is not None and not 0 < cap < math.inf:
        raise ConfigError(f"the wall-clock cap per stage must be a positive number of minutes, got {cap}")
    from worldvla.train.config import preset_inference

    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{run}: the run folder is a file, not a folder")
    suite, train_cfg = exp.suite, exp.train
    state = RunState(run, exp, json.loads(json.dumps(suite.to_dict())))
    if episodes_from is not None and state.record.done("collect"):
        _check_reused_episodes(Path(episodes_from), run / "data" / "episodes.hdf5", state.stage("collect"))
    runs_stages = "report" in stages or not all(state.record.done(n) for n in stages)
    if runs_stages:
        # Reusing finished stages (e.g. the ablation reading a quickstart's data) only reads
        # the folder and leaves the run's provenance to the command that made it.
        check_output_dir(run, "run folder")  # before any stage starts
        run.mkdir(parents=True, exist_ok=True)
        state.claim()
    episodes = run / "data" / "episodes.hdf5"
    tok_dir, cache_dir, train_dir = run / "tokenizer", run / "cache", run / "train"

    def collect_into(path: Path) -> Any:
        """The experiment's collection into ``path`` (replacing a file an unrecorded earlier
        attempt left there); returns its report."""
        from worldvla.data.collect import collect

        return collect(
            suite,
            path,
            exp.episodes_per_task,
            exp.seed,
            exp.action_noise,
            exp.workers,
            progress,
            exploration=exp.exploration_config(),
            overwrite=True,
        )

    def collect_stage(st: dict[str, Any]) -> None:
        from worldvla.data.collect import reuse_collected
        from worldvla.data.episodes import content_digest

        if episodes_from is not None:
            report = reuse_collected(
                episodes_from,
                episodes,
                suite,
                exp.episodes_per_task,
                exp.seed,
                exp.action_noise,
                exp.exploration_config(),
            )
            source = str(Path(episodes_from).resolve())
            st.update(kept=report.kept, dropped=report.dropped, copied_from=source)
            st["content_sha256"] = content_digest(episodes)
            log(report.summary())
            return
        report = collect_into(episodes)
        st.update(kept=report.kept, dropped=report.dropped, steps=report.steps)
        st["content_sha256"] = content_digest(episodes)
        log(report.summary())

    def collect_again() -> None:
        """The collect stage is done but its file is not here (a run carried to another
        machine without it): collect it again, and keep it only if it holds the same
        episodes as the recorded one (content digest; for runs recorded before the digest,
        the token cache's sha256 of the file's bytes)."""
        from worldvla.data.episodes import content_digest
        from worldvla.data.token_cache import check_file_identity

        st = state.stage("collect")
        log(
            f"[collect] done earlier, but {episodes} is not here (a run carried to another machine?): "
            "collecting it again; it must hold the episodes this run was made from"
        )
        meta = cache_dir / "meta.json"
        recorded = json.loads(meta.read_text()).get("episodes") if meta.is_file() else None
        fresh = episodes.with_name(episodes.name + ".again")
        collect_into(fresh)
        want = st.get("content_sha256")
        try:
            if want:
                got = content_digest(fresh)
                if got != want:
                    raise DataError(f"content digest {got[:12]}…, recorded {want[:12]}…")
            elif recorded:
                check_file_identity(recorded, fresh, cache_dir)
        except DataError as e:
            raise DataError(
                f"{fresh}: collected again, but it does not hold the episodes this run was made "
                f"from ({e}); this machine's simulator gives other episodes, so the run cannot go "
                "on here (the new file is left beside the run for inspection)"
            ) from None
        fresh.replace(episodes)
        st["collected_again"] = st.get("collected_again", 0) + 1
        state.save()
        log(f"[collect] collected again: the same episodes ({episodes})")

    collected = state.stage("collect") if state.record.done("collect") else {}
    if runs_stages and collected and "content_sha256" not in collected and episodes.is_file():
        from worldvla.data.episodes import content_digest

        collected["content_sha256"] = content_digest(episodes)  # runs from before the digest
        state.save()

    def tokenizer_stage(st: dict[str, Any]) -> None:
        from worldvla.tokenizers.vq_train import VQTrainConfig
        from worldvla.train.image_tokenizer import train_tokenizer

        # The tokenizer restarts from scratch when resumed, so the cap applies per attempt.
        cfg = VQTrainConfig(preset=exp.tokenizer.name, seed=exp.seed, steps=exp.tokenizer_steps, minutes=cap)
        m = train_tokenizer(
            episodes, tok_dir, cfg, camera=suite.camera, progress=progress, vq_cfg=exp.tokenizer
        )
        st.update(
            val_psnr=m["val_psnr"],
            val_codebook_usage=m["val_codebook_usage"],
            step=m["steps"],
            total_steps=cfg.steps,
            stopped=m["stopped"],
        )
        log(f"tokenizer: held-out PSNR {m['val_psnr']:.2f} dB, codebook usage {m['val_codebook_usage']:.0%}")

    def tokenize_stage(st: dict[str, Any]) -> None:
        from worldvla.data.token_cache import build_token_cache
        from worldvla.tokenizers.image_loader import load_image_tokenizer

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
        if cap is not None:  # what is left of the cap after earlier, interrupted attempts
            minutes = max(1e-6, cap - st.get("seconds", 0.0) / 60)  # spent: one step, then stop
        resume = latest_checkpoint(train_dir) is not None
        result = train(
            train_cfg,
            cache_dir,
            train_dir,
            resume=resume,
            minutes=minutes,
            progress=progress,
            inference=preset_inference(train_cfg.name),
        )
        stopped = None
        if result.stopped_by_budget:
            stopped = "time cap"
        elif result.step < train_cfg.steps:
            stopped = "ended early"
        st.update(
            step=result.step,
            total_steps=train_cfg.steps,
            stopped=stopped,
            checkpoint=str(result.checkpoint),
            tokens_per_s=result.tokens_per_s,
            last_val=result.last_val,
            wall_seconds=result.wall_seconds,
            wall_from_step=result.wall_from_step,
        )

    def eval_policy_stage(st: dict[str, Any]) -> None:
        from worldvla.eval.policy_eval import evaluate_policy

        lerobot = suite.protocol == "lerobot"
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
            blind_baselines=lerobot,  # the baselines never look at a frame: no rendering
        )
        st.update(success={a: s["success"] for a, s in doc["summary"].items()})
        if lerobot:  # the comparison with the published MT50 results (docs/metaworld.md)
            from worldvla.eval.mt50_report import write_mt50_report

            table = write_mt50_report(run / "eval_policy", doc, episodes)
            st.update(mean_of_groups={a: r["mean"]["success"] for a, r in table["agents"].items()})
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
        needs_file = name in EPISODE_READERS and not state.record.done(name)
        if needs_file and state.record.done("collect") and not episodes.is_file():
            collect_again()
        _run_stage(state, name, fns[name], log, run)
    short = cut_short(state.doc, run)
    if short:
        log(f"WARNING: this run was cut short ({cut_summary(short)}) — {NOT_COMPARABLE}")
    return run / "report.html"
