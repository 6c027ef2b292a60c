"""Resumable stages: run each step of a job unless its record says it is done, and record it.

Two kinds of job are made of stages that a later command resumes: the quickstart
(``RUN/stages.json``, :mod:`worldvla.pipeline`) and each run of an ablation
(``RUN/runs/<key>/result.json``, :mod:`worldvla.ablation.runner`). Both keep their record
in one JSON object in one file (:class:`StageRecord`): read back by the next command,
rewritten atomically (a kill leaves the old record or the new one, never half of one) and
stamped with where its results came from (:mod:`worldvla.utils.provenance`). A stage's wall
time is recorded even when the stage fails, so time spent over interrupted attempts counts
(:func:`timed`), and an evaluation that an interrupted attempt finished is read back from
its results file instead of being computed again (:func:`reuse`).

Where a stage's result sits in the record is the job's own format, kept readable for every
run directory made so far:

- the quickstart keeps one entry per stage under ``"stages"``,
  ``{"stages": {"train": {"done": true, "seconds": 812.4, "step": 1500, ...}, ...}}``, and
  runs a stage unless its entry is ``done`` (:meth:`StageRecord.run`);
- an ablation run keeps each stage's summary under its own key (``"step"``, ``"policy"``,
  ``"offline"``, ``"world"``) and the stages' times under ``"seconds"``; a stage runs unless
  its key is there, and the file is written once every stage is done, so a ``result.json``
  on disk is always a finished run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from worldvla.errors import ConfigError
from worldvla.utils.io import atomic_write_text
from worldvla.utils.provenance import provenance


class StageRecord:
    """A job's record: one JSON object in one file, read when made, rewritten atomically."""

    def __init__(self, path: str | Path, what: str, advice: str) -> None:
        """Read ``path`` (an empty record when it does not exist yet). A file that is not a
        JSON object, or whose ``"stages"`` is not one, is a :class:`ConfigError` that names
        ``what`` the file should be and gives the ``advice``."""
        self.path = Path(path)
        self.doc: dict[str, Any] = {}
        if not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.path}: not a readable {what} ({e}); {advice}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("stages", {}), dict):
            raise ConfigError(f"{self.path}: not a {what}; {advice}")
        self.doc = doc

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")

    def stamp(self, **extra: Any) -> None:
        """Record where the job's results come from: command, commit, time, machine, ``extra``."""
        self.doc.update(provenance(**extra))

    def entry(self, name: str) -> dict[str, Any]:
        """Stage ``name``'s entry under ``"stages"``; a stage not recorded yet gets a new one."""
        return self.doc.setdefault("stages", {}).setdefault(name, {"done": False, "seconds": 0.0})

    def done(self, name: str) -> bool:
        """Whether stage ``name`` finished in an earlier command (its result stands)."""
        return bool(self.doc.get("stages", {}).get(name, {}).get("done"))

    def run(self, name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        """Run stage ``name``: ``fn(entry)`` fills the stage's entry; its wall time is added
        to the entry and the record saved whether ``fn`` returns or fails; then the stage is
        marked done and the record saved again."""
        entry = self.entry(name)
        with timed(entry, "seconds", self.save):
            fn(entry)
        entry["done"] = True
        self.save()


@contextlib.contextmanager
def timed(seconds: dict[str, Any], key: str, save: Callable[[], None] | None = None) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[key]``, then ``save()`` — also when the
    block fails, so that the time an interrupted stage took is not lost."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
        if save is not None:
            save()


def reuse(results: str | Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The results document an earlier attempt of a stage wrote at ``results``, or
    ``compute()``'s (which writes it). Evaluations write their results file atomically at
    their end, so one that exists is complete."""
    path = Path(results)
    return json.loads(path.read_text()) if path.exists() else compute()
