"""Checks of input and output paths, made before any work starts.

A command checks its inputs exist and its outputs can be written *before* it runs a
simulator or trains anything, so a typo costs a one-line error rather than minutes of
work, a traceback, or folders created next to an input that does not exist. Nothing here
creates a file or a folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from worldvla.errors import ConfigError, DataError


def require_input(path: str | Path, what: str) -> Path:
    """``path`` if it exists, else a :class:`DataError` naming it as ``what``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} not found")
    return p


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise :class:`ConfigError` unless ``path`` is a writable folder or can be created as one."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p}: the {what} is a file, not a folder")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{p}: cannot create the {what}: {existing} is a file, not a folder")
    try:
        # A real probe: permission bits do not tell (root, read-only mounts, ACLs).
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == p else f" ({existing} cannot hold new folders)"
        raise ConfigError(f"{p}: the {what} is not writable{where}: {e.strerror or e}") from None
    return p


def check_output_file(path: str | Path, overwrite: bool = False, what: str = "output file") -> Path:
    """Raise :class:`ConfigError` unless ``path`` names a file that may be (re)written.

    An existing file is refused unless ``overwrite`` (callers then write the new one
    atomically, so the old one survives any failure); a folder is refused always.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p} is a folder; the {what} must be a file path, e.g. {p / 'episodes.hdf5'}")
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} already exists; pass --overwrite to replace it")
    check_output_dir(p.parent, what=f"folder of the {what}")
    return p
