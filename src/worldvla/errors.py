"""User-facing errors.

Anything a user can cause (a bad file, a wrong shape, a checkpoint from another config)
raises :class:`WorldVLAError` with one readable message naming the file and the problem.
The CLI prints that message and exits with status 2 instead of showing a traceback.
"""


class WorldVLAError(Exception):
    """An error caused by input the user can fix; the message is shown as is."""


class DataError(WorldVLAError, ValueError):
    """A dataset, cache or statistics file is missing, malformed or inconsistent."""


class ConfigError(WorldVLAError, ValueError):
    """A configuration or checkpoint does not match what was asked for."""
