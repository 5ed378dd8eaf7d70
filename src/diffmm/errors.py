"""User-facing errors.

Anything raised as a :class:`DiffMMError` is a problem with the user's input (a file,
a config value, a command-line argument). The CLI prints its message and exits with
status 2, without a traceback. Messages name the file or key and say what to do.
"""

from __future__ import annotations


class DiffMMError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class DataError(DiffMMError):
    """A dataset file is missing, unreadable or inconsistent."""


class ConfigError(DiffMMError):
    """A configuration key or value is unknown or invalid."""


class UnknownIdError(DataError):
    """A user or item id that the data (or a trained model) does not know."""


class WriteError(DiffMMError):
    """An output file could not be written (disk full, no permission); nothing was lost."""


class DivergedError(DiffMMError):
    """Training produced a non-finite loss or parameter; the run stopped before saving it."""
