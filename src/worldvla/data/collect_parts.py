"""The finished task groups of a collection, kept so that a killed collection resumes.

:func:`worldvla.data.collect.collect` runs its jobs in groups — the demonstrations of one
task, the exploratory segments of one task — and writes each group here as soon as its
last job returns: the group's successful episodes (``<kind>-<task index>.hdf5``) and then
its record (``<kind>-<task index>.json``: every job's index, steps and success), which is
what marks the group finished. The folder sits beside the output file
(``.<name>.parts``) with ``identity.json``, the collection's settings. A collection
started again with the same settings skips the finished groups; since every job's result
is a function of the seed, the final file is the one an uninterrupted collection writes.
The folder is removed once the output file is complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worldvla.data.episodes import Episode, EpisodeReader, write_episodes
from worldvla.errors import DataError
from worldvla.utils.io import atomic_write_text

Group = tuple[str, int]  # (kind, task index)


class CollectParts:
    def __init__(self, out: str | Path, identity: dict[str, Any], restart: bool = False) -> None:
        """Open (or create) the parts folder of ``out``. Parts of a collection with other
        settings are removed with ``restart``, else refused (DataError naming the folder)."""
        out = Path(out)
        self.dir = out.parent / f".{out.name}.parts"
        self.identity = json.loads(json.dumps(identity))
        id_file = self.dir / "identity.json"
        if self.dir.exists():
            try:
                stored = json.loads(id_file.read_text())
            except (OSError, json.JSONDecodeError):
                stored = None
            if stored != self.identity:
                if not restart:
                    raise DataError(
                        f"{self.dir}: holds an interrupted collection with other settings; delete the "
                        "folder to collect anew, or collect with the settings it was started with"
                    )
                shutil.rmtree(self.dir)
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            atomic_write_text(id_file, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")

    def _name(self, group: Group) -> str:
        kind, task_index = group
        return f"{kind}-{task_index:03d}"

    def record(self, group: Group) -> dict[str, Any] | None:
        """The record of a finished group (``{"jobs": [[index, steps, success], ...], "episodes": n}``)."""
        path = self.dir / f"{self._name(group)}.json"
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # never complete: records are written atomically
        if doc.get("episodes") and not (self.dir / f"{self._name(group)}.hdf5").is_file():
            return None
        return doc

    def finished(self, groups: list[Group]) -> set[Group]:
        return {g for g in groups if self.record(g) is not None}

    def write(self, group: Group, jobs: list[tuple[int, int, bool]], episodes: list[Episode]) -> None:
        """Store a finished group: its episodes first, then the record that marks it finished."""
        name = self._name(group)
        if episodes:
            write_episodes(self.dir / f"{name}.hdf5", episodes)
        doc = {"jobs": sorted([list(j) for j in jobs]), "episodes": len(episodes)}
        atomic_write_text(self.dir / f"{name}.json", json.dumps(doc) + "\n")

    def episodes(self, groups: list[Group]) -> Iterator[Episode]:
        """The stored episodes of ``groups``, group by group in the order given."""
        for g in groups:
            rec = self.record(g)
            if rec is None:
                raise DataError(f"{self.dir}: task group {self._name(g)} is not finished")
            if not rec["episodes"]:
                continue
            with EpisodeReader(self.dir / f"{self._name(g)}.hdf5") as reader:
                yield from reader

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
