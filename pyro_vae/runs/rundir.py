"""Claiming a run directory: atomically, exclusively, and unfooled by leftovers.

The process that trains (or resumes) a run holds the run directory's writer lock
(:func:`pyro_vae.files.lock_folder`, an ``flock`` the kernel drops when the process
dies) from the moment it claims the folder until its last file is written. So of two
processes started on the same ``--out`` exactly one trains, and the other stops with
one line before it writes anything; a ``--resume`` of a run that is still training stops
the same way.

A folder counts as empty when it holds nothing but what a killed claim leaves behind:
the lock file, temporary files of killed writers (removed here) and a ``manifest.json``
whose files are all absent. Such a folder is reused without ``overwrite``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Sequence

from ..errors import CheckpointError, ConfigError, StorageError
from ..files import (
    LOCK_FILE,
    MANIFEST,
    FolderLock,
    check_folder,
    clean_strays,
    has_manifest,
    lock_folder,
    start_manifest,
)

__all__ = ["claim_run_dir", "lock_run_dir", "holds_files", "storage_error"]


def storage_error(err: OSError, doing: str, fix: str) -> StorageError:
    """One line for an ``OSError``: what failed, the system's reason, and the fix.

    Example:
        >>> str(storage_error(OSError(28, "No space left on device", "r/x"), "write 'r/x'", "run it again"))
        "cannot write 'r/x': No space left on device; the disk is full: free some space, then run it again"
    """
    reason = err.strerror or str(err)
    hint = {
        errno.EACCES: "the folder or file is not writable: check its permissions",
        errno.EPERM: "the folder or file is not writable: check its permissions",
        errno.EROFS: "the disk is read-only",
        errno.ENOSPC: "the disk is full: free some space",
        errno.EDQUOT: "your disk quota is full: free some space",
    }.get(err.errno or -1)
    return StorageError(f"cannot {doing}: {reason}; {hint + ', then ' if hint else ''}{fix}", err.errno)


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but the leftovers of a killed claim (see the module)."""
    for entry in os.listdir(folder):
        if entry == LOCK_FILE or (entry.startswith(".") and entry.endswith(".tmp")):
            continue
        if entry == MANIFEST:
            try:
                found = check_folder(folder)
            except CheckpointError:
                return True  # a damaged manifest is not nothing
            if found is not None and (found.intact or found.damaged):
                return True
            continue
        return True
    return False


def _busy(folder: Path, holder: int, what: str) -> CheckpointError:
    pid = f" (pid {holder})" if holder else ""
    return CheckpointError(
        f"{str(folder)!r} is in use by another pyro-vae process{pid} that is training or resuming it; "
        f"wait for it to finish, or {what}"
    )


def claim_run_dir(
    out: str | os.PathLike | None, *, overwrite: bool, run_files: Sequence[str], stem: str = "data"
) -> tuple[Path, FolderLock]:
    """Create or take over the folder of a new run, holding its writer lock.

    Args:
        out: The folder; ``None`` for a fresh one under ``runs/`` named by the time and
            ``stem`` (``-2``, ``-3``, ... when another run took that name first).
        overwrite: Reuse a folder that holds files, deleting ``run_files`` (and only
            those) from it.
        run_files: The names of every file a run writes.
        stem: The data's name, for a fresh folder's name.

    Returns:
        The folder, with an empty ``manifest.json``, and its lock (release it when done).

    Raises:
        ConfigError: ``out`` is a file, or holds files and ``overwrite`` is off.
        CheckpointError: Another process holds the folder.
        StorageError: The folder cannot be created or written.
    """
    if out is None:
        base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{stem}"
        n = 1
        while True:
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                path.mkdir(parents=True)  # atomic and exclusive: a racing process gets the next name
            except FileExistsError:
                n += 1
                continue
            except OSError as err:
                raise storage_error(err, f"create the run directory {str(path)!r}", "pass a writable `out`") from None
            lock = _lock(path, "choose another `out`")
            break
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"`out` {str(path)!r} is a file, not a directory; choose another `out`")
        if path.is_dir() and not overwrite and holds_files(path):
            raise _not_empty(path)  # before anything is created in a folder that is not ours
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(err, f"create the run directory {str(path)!r}", "choose another `out`") from None
        lock = _lock(path, "choose another `out`")
    try:
        clean_strays(path)
        if holds_files(path):  # again, under the lock: another process may have written it meanwhile
            if not overwrite:
                raise _not_empty(path)
            for name in (*run_files, MANIFEST):
                (path / name).unlink(missing_ok=True)
        elif has_manifest(path):
            (path / MANIFEST).unlink()  # the leftover of a killed claim: start afresh
        start_manifest(path)
    except OSError as err:
        lock.release()
        raise storage_error(err, f"write the run directory {str(path)!r}", "choose another `out`") from None
    except BaseException:
        lock.release()
        raise
    return path, lock


def lock_run_dir(run_dir: str | os.PathLike) -> FolderLock:
    """Take the writer lock of an existing run directory (for ``--resume``), and make sure
    it can be written before any work starts.

    Raises:
        CheckpointError: The folder does not exist, or another process holds it.
        StorageError: The folder cannot be written (read-only, permissions).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {str(run_dir)!r} does not exist; pass the folder a training run wrote")
    fix = "--resume writes its checkpoints there: make it writable, or copy the folder somewhere writable and resume the copy"
    try:
        lock = lock_folder(run_dir)
    except OSError as err:
        raise storage_error(err, f"write to the run directory {str(run_dir)!r}", fix) from None
    if isinstance(lock, int):
        raise _busy(run_dir, lock, "resume it later")
    try:
        # The lock file may have been created long ago, when the folder was writable; a real write tells.
        fd, probe = tempfile.mkstemp(prefix=".pyro-vae-probe.", suffix=".tmp", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        lock.release()
        raise storage_error(err, f"write to the run directory {str(run_dir)!r}", fix) from None
    return lock


def _lock(folder: Path, what: str) -> FolderLock:
    try:
        lock = lock_folder(folder)
    except OSError as err:
        raise storage_error(err, f"write to {str(folder)!r}", "choose a writable folder") from None
    if isinstance(lock, int):
        raise _busy(folder, lock, what)
    return lock


def _not_empty(path: Path) -> ConfigError:
    return ConfigError(
        f"output directory {str(path)!r} exists and is not empty; pass `overwrite` to replace its "
        "run files, `resume` to continue it, or choose another `out`"
    )
