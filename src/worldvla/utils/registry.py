"""Named-preset lookup with a "did you mean" for typos."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from worldvla.errors import ConfigError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str = "preset") -> T:
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown {what} {name!r}.{hint} Known: {', '.join(sorted(registry))}.")
