"""Carry finished runs over from a results directory, so an ablation resumes on a new machine.

``worldvla ablate --results DIR`` writes ``DIR/runs.json``, which holds every finished run's
``result.json`` as it was written (with its key). A run directory holds checkpoints and
evaluation outputs that a repository does not keep; the results directory is what is kept.
Restoring writes each recorded run's ``result.json`` back into ``RUN/runs/<key>/``, which
marks it done: the runner skips it and the tables count it, exactly as if it had run here.

Only results of the same budget are restored (the budget decides what every run computes;
the key, a hash of the run's training config, decides which run a result belongs to). A
run that another unfinished run starts from (``init_from``) is not restored: its weights
are needed, and they are not in the results, so it runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldvla.ablation.config import AblationConfig
from worldvla.ablation.plan import Run, plan
from worldvla.errors import ConfigError
from worldvla.utils.io import atomic_write_text

BASELINES_NOTE = "restored from a results directory's runs.json: the summary only"


def _recorded(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: result}`` of every run a runs.json records (a run shared by several variants
    is recorded under each of them, with the same result; ``init_runs`` holds the runs that
    selected variants start from without naming them)."""
    results = [res for entry in (doc.get("variants") or {}).values() for res in entry.get("runs", [])]
    results += doc.get("init_runs") or []
    return {res["key"]: res for res in results if isinstance(res, dict) and isinstance(res.get("key"), str)}


def restore_results(
    run_dir: Path,
    cfg: AblationConfig,
    results_dir: Path,
    budget: dict[str, Any],
    complete: Callable[[Run, dict[str, Any]], bool],
    log: Callable[[str], None] = print,
) -> int:
    """Write the results that ``results_dir/runs.json`` records for runs of ``cfg`` not done
    in ``run_dir``; returns how many. ``complete(run, result)`` says whether a result has
    every stage of its run (one that lacks some is not restored: the missing stages need
    the run's checkpoints). A missing runs.json restores nothing; one of another preset or
    budget is refused."""
    path = results_dir / "runs.json"
    if not path.exists():
        return 0
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable runs.json ({e})") from None
    prov = doc.get("provenance") or {}
    if prov.get("preset") not in (None, cfg.name):
        raise ConfigError(
            f"{path} records the ablation {prov.get('preset')!r}, not {cfg.name!r}; use another --results"
        )
    stored = json.loads(json.dumps(prov.get("budget") or {}))
    diff = {k: (stored.get(k), v) for k, v in budget.items() if k in stored and stored[k] != v}
    if diff:
        raise ConfigError(
            f"{path} records runs of another budget ({diff}: recorded vs. asked); use another --results"
        )
    runs = plan(cfg)
    by_key = {r.key: r for r in runs}
    recorded = {k: res for k, res in _recorded(doc).items() if k in by_key and complete(by_key[k], res)}

    def done(r: Run) -> bool:
        path = run_dir / "runs" / r.key / "result.json"
        return path.is_file() and complete(r, json.loads(path.read_text()))

    needed = {r.init for r in runs if r.init is not None and not done(r) and r.key not in recorded}
    n = 0
    for r in runs:
        res = recorded.get(r.key)
        if res is None or done(r) or r.key in needed:
            continue
        out = run_dir / "runs" / r.key
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "result.json", json.dumps(res, indent=2) + "\n")
        n += 1
    base = run_dir / "baselines" / "results.json"
    if n and doc.get("baselines") and not base.exists():
        base.parent.mkdir(parents=True, exist_ok=True)
        summary = doc["baselines"]
        atomic_write_text(base, json.dumps({"summary": summary, "note": BASELINES_NOTE}, indent=2) + "\n")
    if n:
        log(
            f"[restore] {n} finished run(s) from {path} (results only: their checkpoints stay where they ran)"
        )
    return n
