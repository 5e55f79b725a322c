"""Files that a reader never sees half of, and folders whose files cannot lie.

Every file the package writes (run directories, figures, exported arrays, ArviZ data)
goes through :func:`atomic_write`: the content goes to a temporary name in the same
folder (``.NAME.XXXXXXXX.tmp``, locked by its writer while it lives), is flushed to disk
and renamed over the destination, so a kill mid-write leaves the previous version intact.
A temporary file left by a killed writer is a *stray*; the next write of the same name
removes it (:func:`clean_strays` removes every stray of a folder), and a stray is never
mistaken for a live writer's file, which stays locked until it is renamed.

A folder that holds ``manifest.json`` is *checksummed*: every :func:`atomic_write` into it
records the new file's SHA-256 and size there, and :func:`read_verified` refuses a file
that does not match. The manifest is updated in two steps around the rename (the new
checksum is first recorded as ``pending``, then moved to ``files``), so that at every
instant, a kill included, each file on disk matches one of the two::

    {
      "format": "pyro-vae manifest 1",
      "files":   {"config.json": {"sha256": "9f2c...", "bytes": 745}, ...},
      "pending": {"model.safetensors": {"sha256": "41d0...", "bytes": 401040}},
      "checksum": "sha256 of the three keys above, as sorted compact JSON"
    }

The manifest's own ``checksum`` tells a damaged manifest from a damaged file. Writers
and readers of a checksummed folder take a short ``flock`` on the folder, so a reader
never sees a file and a manifest from two different moments. (Without ``flock``, on
Windows, writes stay atomic and checksummed, but locks are no-ops and strays stay.)
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .errors import IntegrityError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: writes stay atomic and checked; locks are no-ops
    fcntl = None  # type: ignore[assignment]

# Flags that only some platforms have (0: not there).
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

__all__ = [
    "MANIFEST",
    "LOCK_FILE",
    "UnverifiedFolderWarning",
    "FolderCheck",
    "FolderLock",
    "atomic_write",
    "atomic_write_many",
    "read_verified",
    "start_manifest",
    "has_manifest",
    "check_folder",
    "remove_files",
    "clean_strays",
    "lock_folder",
]

#: The checksums of a folder's files.
MANIFEST = "manifest.json"
#: Held (``flock``) by the one process that may write a run directory's files; empty.
LOCK_FILE = ".pyro-vae.lock"
_FORMAT = "pyro-vae manifest 1"
# mkstemp's names: the prefix ".NAME.", eight characters of its alphabet, the suffix.
_STRAY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
# A manifest lists a few files; anything much larger is not one of ours.
_MAX_MANIFEST_BYTES = 1 << 20


class UnverifiedFolderWarning(UserWarning):
    """A folder's files were read without a manifest to check them against."""


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None] | bytes | str) -> None:
    """Write a file so that readers see the old or the new content, never a mix.

    In a checksummed folder (one holding ``manifest.json``) the new file's checksum is
    recorded as well, atomically with the file (see the module docstring).

    Args:
        path: Destination.
        write: The bytes or text to write, or a function that writes to a binary file.

    Raises:
        OSError: The folder is not writable, the disk is full, ...; the error names
            ``path`` (not the temporary file), and the previous file is intact.
    """
    path = Path(path)
    atomic_write_many(path.parent, {path.name: write})


def atomic_write_many(folder: str | os.PathLike, files: Mapping[str, Callable[[Any], None] | bytes | str]) -> None:
    """:func:`atomic_write` of several files of one folder, with one manifest update.

    Each file is replaced atomically, in the order given; in a checksummed folder all of
    their checksums are recorded as pending before the first rename (one synced manifest
    write instead of one per file), so after a kill between two renames every file still
    matches its manifest entry. A run's checkpoint (state, weights, metrics) is written so.

    Args:
        folder: The folder.
        files: ``{name: content}``, content as for :func:`atomic_write`.

    Raises:
        OSError: As :func:`atomic_write`, naming the file that failed; the files renamed
            before it are complete and listed, the others untouched.
    """
    folder = Path(folder)
    contents = {name: _as_bytes(write) for name, write in files.items()}
    entries = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in contents.items()
    }
    current = next(iter(contents), None)
    try:
        with ExitStack() as stack:
            temps = {}
            for current, data in contents.items():
                tmp = temps[current] = stack.enter_context(_temporary(folder / current))
                _write_all(tmp.fd, data)
                os.fsync(tmp.fd)
            watched = [n for n in contents if n not in (MANIFEST, LOCK_FILE)] and has_manifest(folder)
            with _folder_lock(folder, exclusive=True) if watched else nullcontext():
                manifest = _Manifest.load(folder) if watched else None
                if manifest is not None:
                    manifest.pending.update({n: e for n, e in entries.items() if n not in (MANIFEST, LOCK_FILE)})
                    manifest.save(durable=True)  # before any rename: a kill leaves old or new, both listed
                for current, tmp in temps.items():
                    tmp.replace(folder / current, durable=False)
                _fsync_dir(folder)
                if manifest is not None:
                    for name in list(manifest.pending):
                        if name in entries:
                            manifest.files[name] = manifest.pending.pop(name)
                    # Not synced: if this step is lost the pending entries still vouch for the files.
                    manifest.save(durable=False)
    except OSError as err:
        raise _naming(err, folder / current if current else folder) from None
    for name in contents:
        clean_strays(folder, name)


def read_verified(path: str | os.PathLike, *, fix: str = "restore it from a copy") -> bytes:
    """The bytes of a file, checked against its folder's manifest.

    Args:
        path: The file.
        fix: What to do when it does not match, for the message.

    Returns:
        The file's bytes, read once (the bytes checked are the bytes returned).

    Raises:
        IntegrityError: The manifest is damaged, does not list the file, or lists
            another checksum.
        OSError: The file cannot be read.

    A folder without a manifest is read as it is, with an :class:`UnverifiedFolderWarning`.
    """
    path = Path(path)
    folder = path.parent
    if not has_manifest(folder):
        data = path.read_bytes()
        warnings.warn(
            f"{str(folder)!r} has no {MANIFEST}, so {path.name} was read without checking it (a folder "
            "written before pyro-vae kept checksums, or one whose manifest was deleted)",
            UnverifiedFolderWarning,
            stacklevel=2,
        )
        return data
    with _folder_lock(folder, exclusive=False):
        manifest = _Manifest.load(folder, strict=True)
        data = path.read_bytes()
    assert manifest is not None
    listed = [e for e in (manifest.files.get(path.name), manifest.pending.get(path.name)) if e is not None]
    if not listed:
        raise IntegrityError(
            f"{str(path)!r} is not listed in {MANIFEST}: it was not written there by pyro-vae (copied in, or "
            f"left from another run); {fix}"
        )
    got: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if got not in listed:
        want = listed[-1]
        raise IntegrityError(
            f"{str(path)!r} does not match its checksum in {MANIFEST} ({got['bytes']} bytes, sha256 "
            f"{got['sha256'][:12]}..., recorded {want['bytes']} bytes, {want['sha256'][:12]}...): it was changed "
            f"or damaged after it was written; {fix}"
        )
    return data


def has_manifest(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is checksummed (holds ``manifest.json``)."""
    return (Path(folder) / MANIFEST).is_file()


def start_manifest(folder: str | os.PathLike, *, adopt: bool = False) -> None:
    """Make ``folder`` checksummed, if it is not yet: write an empty ``manifest.json``.

    Args:
        folder: An existing folder.
        adopt: List the folder's existing files (not hidden ones) with their current
            checksums, for a folder written before checksums were kept.
    """
    folder = Path(folder)
    with _folder_lock(folder, exclusive=True):
        if has_manifest(folder):
            return
        manifest = _Manifest(folder)
        if adopt:
            for child in sorted(folder.iterdir()):
                if child.is_file() and not child.name.startswith(".") and child.name != MANIFEST:
                    data = child.read_bytes()
                    manifest.files[child.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest.save(durable=True)


@dataclass
class FolderCheck:
    """What :func:`check_folder` found: the manifest's files sorted by their state.

    Attributes:
        intact: Files that match their checksum.
        missing: Files the manifest lists that are not there.
        damaged: Files that do not match their checksum.
        unfinished: Files whose first write was killed before the rename (listed as
            pending only, not there): never completed, so neither missing nor damaged.
    """

    intact: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def check_folder(folder: str | os.PathLike) -> FolderCheck | None:
    """Check every file a folder's manifest lists; ``None`` for a folder without one.

    Raises:
        IntegrityError: The manifest itself is damaged.
    """
    folder = Path(folder)
    if not has_manifest(folder):
        return None
    found = FolderCheck()
    with _folder_lock(folder, exclusive=False):
        manifest = _Manifest.load(folder, strict=True)
        assert manifest is not None
        for name in sorted(set(manifest.files) | set(manifest.pending)):
            listed = [e for e in (manifest.files.get(name), manifest.pending.get(name)) if e is not None]
            try:
                data = (folder / name).read_bytes()
            except FileNotFoundError:
                (found.missing if name in manifest.files else found.unfinished).append(name)
                continue
            got: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            (found.intact if got in listed else found.damaged).append(name)
    return found


def remove_files(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Delete files of a folder and their manifest entries (missing files are skipped)."""
    folder = Path(folder)
    names = list(names)
    try:
        with _folder_lock(folder, exclusive=True):
            for name in names:
                (folder / name).unlink(missing_ok=True)
            manifest = _Manifest.load(folder) if has_manifest(folder) else None
            if manifest is not None:
                for name in names:
                    manifest.files.pop(name, None)
                    manifest.pending.pop(name, None)
                manifest.save(durable=True)
    except OSError as err:
        raise _naming(err, folder) from None


def clean_strays(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Remove the temporary files that killed writers left in ``folder``.

    A live writer's temporary file is locked and is left alone; a folder that cannot be
    written is left as it is.

    Args:
        folder: The folder.
        name: Only the strays of this destination name (default: all).

    Returns:
        The names removed.
    """
    removed: list[str] = []
    if fcntl is None:  # pragma: no cover - without flock a live writer's file cannot be told apart
        return removed
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        match = _STRAY.match(entry)
        if match is None or (name is not None and match["name"] != name):
            continue
        path = os.path.join(folder, entry)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class FolderLock:
    """The exclusive right to write a folder's files, held until :meth:`release` or exit.

    An ``flock`` on the folder's :data:`LOCK_FILE`: the kernel releases it when the
    process dies, so a kill never leaves a folder locked.
    """

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike) -> FolderLock | int:
    """Take a folder's writer lock without waiting.

    Returns:
        The :class:`FolderLock`, or, when another process holds it, that process's id
        (0 if unknown).

    Raises:
        OSError: The lock file cannot be created (a read-only folder, ...).
    """
    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
    except OSError as err:
        raise _naming(err, folder) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = int(os.pread(fd, 32, 0).decode().strip() or 0)
        except (OSError, ValueError):
            holder = 0
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return FolderLock(folder, fd)


# --- internals ------------------------------------------------------------------------


class _Manifest:
    """``manifest.json`` of one folder, as read at one moment (under the folder's lock)."""

    def __init__(self, folder: Path, files: dict | None = None, pending: dict | None = None) -> None:
        self.folder = folder
        self.files: dict[str, dict[str, Any]] = files or {}
        self.pending: dict[str, dict[str, Any]] = pending or {}

    def _body(self) -> dict[str, Any]:
        return {"format": _FORMAT, "files": self.files, "pending": self.pending}

    @classmethod
    def load(cls, folder: Path, *, strict: bool = False) -> "_Manifest | None":
        """The folder's manifest; ``None`` if it is absent or (unless ``strict``) not ours."""
        path = folder / MANIFEST
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None
        problem = None
        try:
            doc = json.loads(raw) if len(raw) <= _MAX_MANIFEST_BYTES else None
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            problem = "it is not a pyro-vae manifest"
        else:
            body = {"format": doc["format"], "files": doc.get("files"), "pending": doc.get("pending")}
            if doc.get("checksum") != hashlib.sha256(_canonical(body)).hexdigest():
                problem = "it does not match its own checksum"
            elif not (_entries_ok(body["files"]) and _entries_ok(body["pending"])):
                problem = "its entries are malformed"
        if problem is None and isinstance(doc, dict):
            return cls(folder, dict(doc["files"]), dict(doc["pending"]))
        if not strict and b"pyro-vae manifest" not in raw:
            return None  # somebody else's manifest.json: not a folder we checksum
        raise IntegrityError(
            f"{str(path)!r} is damaged ({problem}), so no file in {str(folder)!r} can be verified; "
            "restore the folder from a copy, or retrain"
        )

    def save(self, *, durable: bool) -> None:
        body = self._body()
        doc = {**body, "checksum": hashlib.sha256(_canonical(body)).hexdigest()}
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        path = self.folder / MANIFEST
        with _temporary(path) as tmp:
            _write_all(tmp.fd, data)
            if durable:
                os.fsync(tmp.fd)
            tmp.replace(path, durable=durable)
        clean_strays(self.folder, MANIFEST)


def _entries_ok(entries: object) -> bool:
    return isinstance(entries, dict) and all(
        isinstance(k, str)
        and isinstance(v, dict)
        and isinstance(v.get("sha256"), str)
        and isinstance(v.get("bytes"), int)
        for k, v in entries.items()
    )


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _as_bytes(write: Callable[[Any], None] | bytes | str) -> bytes:
    if isinstance(write, str):
        return write.encode()
    if isinstance(write, (bytes, bytearray, memoryview)):
        return bytes(write)
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Temp:
    """A locked temporary file beside its destination; removed unless renamed."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.done = False

    def replace(self, path: Path, *, durable: bool = True) -> None:
        os.replace(self.name, path)
        self.done = True
        if durable:
            _fsync_dir(path.parent)


@contextmanager
def _temporary(path: Path) -> Iterator[_Temp]:
    while True:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # Locked while it lives, so that clean_strays leaves it alone; if a cleaner took
        # it in the instant before the lock, it is gone: make another.
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            alive = os.stat(name).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            alive = False
        if alive:
            break
        os.close(fd)
    tmp = _Temp(fd, name)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        yield tmp
    finally:
        os.close(fd)
        if not tmp.done:
            try:
                os.unlink(name)
            except OSError:
                pass


@contextmanager
def _folder_lock(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """A short ``flock`` on the folder itself (not on LOCK_FILE: that one is held long)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as err:
        raise _naming(err, folder) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as err:  # pragma: no cover - file systems without flock
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path`` instead of a temporary file (same type and errno)."""
    if err.errno is None or getattr(err, "filename", None) == str(path):
        return err
    return OSError(err.errno, err.strerror, str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
