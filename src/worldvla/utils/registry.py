"""Named presets: one registry mechanism for every kind, with a "did you mean" for typos.

Each kind of preset (model sizes, image tokenizers, task suites, training recipes,
experiments, LIBERO recipes, ablations) lives next to the code it configures, in a
:class:`Registry` of its own, so the layers stay independent; ``worldvla presets`` gathers
and lists them all. Every entry carries a one-line description, so that listing explains
itself without a look at the source.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from worldvla.errors import ConfigError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], name: str, what: str = "preset") -> T:
    """``registry[name]``; an unknown name is a ConfigError that names ``what`` and the closest names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown {what} {name!r}.{hint} Known: {', '.join(sorted(registry))}.")


class Registry(Generic[T]):
    """The presets of one kind by name, in the order they were registered.

    ``kind`` names the kind in errors ("unknown model preset 'tyni'. Did you mean 'tiny'?").
    Iterating a registry yields its names; ``name in registry`` tests one.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._values: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, value: T, description: str) -> T:
        """Add ``value`` as ``name`` with a one-line description; returns ``value``.

        A name registered twice or an empty or multi-line description is a mistake in the
        preset module, so it fails at import (ValueError), before any run starts.
        """
        if name in self._values:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description.strip() or "\n" in description:
            raise ValueError(f"{self.kind} {name!r} needs a one-line description, got {description!r}")
        self._values[name] = value
        self._descriptions[name] = description
        return value

    def get(self, name: str) -> T:
        """The preset called ``name``; a typo gets a ConfigError with "did you mean"."""
        return lookup(self._values, name, self.kind)

    def names(self) -> tuple[str, ...]:
        """Every name, in registration order."""
        return tuple(self._values)

    def description(self, name: str) -> str:
        """The one-line description of ``name`` (ConfigError with "did you mean" if unknown)."""
        return lookup(self._descriptions, name, self.kind)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)
