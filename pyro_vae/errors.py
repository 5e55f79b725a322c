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
    "IntegrityError",
    "StorageError",
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


class IntegrityError(CheckpointError):
    """A file does not match the checksum its folder's ``manifest.json`` recorded when it was written."""


class StorageError(PyroVAEError, OSError):
    """A file could not be read or written: permissions, a full disk, a read-only file system.

    Also an ``OSError``, with the ``errno`` of the failure. Files already on disk are intact.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        OSError.__init__(self, message)
        self.errno = errno


class TrainingDivergedError(PyroVAEError):
    """The loss became NaN or infinite, or rose far above its best; the last good checkpoint was kept."""
