"""Share an ablation's runs between processes, each run once.

A process claims a run by an exclusive lock on ``RUN/runs/<key>.lock``, held while it trains
and evaluates the run; the operating system releases it when the process ends, killed or
not. So any number of processes on one ablation directory — the ``--jobs`` workers of one
``worldvla ablate``, or several commands started by hand — split the plan between them: each
takes the first run in plan order that is not done, not held by another process and whose
``init`` run (the one it starts from) has finished.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from worldvla.ablation.plan import Run

POLL_S = 10.0  # how often a process with nothing to claim looks again


class RunLock:
    """A non-blocking exclusive lock on one file, released by :meth:`release` or the
    process's end (``flock``: a killed holder leaves no stale lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; True if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_path(runs_dir: Path, key: str) -> Path:
    return runs_dir / f"{key}.lock"


def claim(
    runs: Sequence[Run], runs_dir: Path, done: Callable[[Run], bool], trained: Callable[[str], bool]
) -> tuple[Run | None, RunLock | None, bool]:
    """The first run of ``runs`` this process may run now, with its lock held.

    ``done(run)``: the run has its complete result; ``trained(key)``: run ``key`` has
    finished training (a run that starts from it may start). Returns ``(run, lock, True)``,
    or ``(None, None, waiting)`` when there is none: ``waiting`` says whether runs remain
    that other processes hold or that wait for their ``init`` run (look again later);
    otherwise every run is done.
    """
    waiting = False
    for r in runs:
        if done(r):
            continue
        if r.init is not None and not trained(r.init):
            waiting = True
            continue
        lock = RunLock(lock_path(runs_dir, r.key))
        if not lock.acquire():
            waiting = True
            continue
        if done(r):  # finished by another process between the look and the lock
            lock.release()
            continue
        return r, lock, True
    return None, None, waiting
