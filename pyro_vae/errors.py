"""Exceptions raised at the library's public boundaries.

Every error a user can cause (bad data, a bad flag, a damaged run directory) is a
:class:`PyroVAEError`, a ``ValueError`` subclass whose message names the problem and
the fix in one line. The command-line tool prints that line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "PyroVAEError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TrainingDivergedError",
]


class PyroVAEError(ValueError):
    """Base class of every user-facing error in pyro_vae."""


class DataError(PyroVAEError):
    """The data cannot be used: missing or corrupt file, wrong shape, NaN, bad support."""


class ConfigError(PyroVAEError):
    """An option or a combination of options is invalid."""


class CheckpointError(PyroVAEError):
    """A run directory is missing, damaged, or its config does not match its weights."""


class TrainingDivergedError(PyroVAEError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""
