"""Config fields added since a definition was stored: filled in at their defaults when it is read back.

A run directory or checkpoint records its configs as JSON; a newer version that adds a field
reads them through :func:`with_defaults`, so adding a field does not orphan older runs
(``stages.json``, checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def with_defaults(stored: dict[str, Any] | None, cls: type) -> dict[str, Any] | None:
    """``stored`` with the fields of ``cls`` added since it was written at their defaults
    (as stored: JSON types), so that adding a field to a config does not orphan old runs."""
    if not isinstance(stored, dict):
        return stored
    defaults = {
        f.name: dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and f.name not in stored
    }
    return {**json.loads(json.dumps(defaults)), **stored}
