"""Checks on the files a command is about to write, made before any long work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

__all__ = ["check_output_file", "check_output_dir"]


def check_output_file(path: str | os.PathLike, suffixes: Sequence[str], *, overwrite: bool = False) -> Path:
    """Make sure ``path`` can be written: a known suffix, an existing folder, no clobbering.

    Raises:
        ConfigError: The suffix is not one of ``suffixes``, the file exists and
            ``overwrite`` is off, or its folder does not exist.
    """
    path = Path(path)
    if path.suffix not in suffixes:
        raise ConfigError(f"`out` {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise ConfigError(f"`out` {str(path)!r} is a folder; name a file")
    if path.exists() and not overwrite:
        raise ConfigError(f"`out` {str(path)!r} exists; pass `overwrite` to replace it or choose another name")
    if not path.parent.is_dir():
        raise ConfigError(f"the folder of `out` {str(path)!r} does not exist; create it first")
    return path


def check_output_dir(path: str | os.PathLike, names: Sequence[str], *, overwrite: bool = False) -> Path:
    """Make sure the folder ``path`` can take the files ``names``.

    Raises:
        ConfigError: ``path`` is a file, or already holds one of ``names`` and
            ``overwrite`` is off.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"`out` {str(path)!r} is a file, not a folder; choose another")
    existing = [name for name in names if (path / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{str(path)!r} already holds {', '.join(existing)}; pass `overwrite` to replace them or choose another folder"
        )
    return path
