"""pyro_vae.files.atomic_write: readers see the old or the new file, never a mix, even
when the writer is killed; the new content is on disk before it replaces the old."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyro_vae import files
from pyro_vae.files import atomic_write


def _visible(folder: Path) -> list[str]:
    """The folder's files, less the temporary ones (``.NAME.XXXXXXXX.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))


@pytest.mark.parametrize("content", [b"new bytes", "new text, \u00e9", lambda f: f.write(b"written by a function")])
def test_the_destination_holds_the_old_content_until_the_new_one_is_complete(tmp_path, content):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")
    during = []

    def write(f):
        f.write(b"half of it")
        during.append(path.read_bytes())  # a reader in the middle of the write
        f.write(b", the rest")

    atomic_write(path, write)
    assert during == [b"old"]
    assert path.read_bytes() == b"half of it, the rest"
    atomic_write(path, content)
    expected = (
        content.encode()
        if isinstance(content, str)
        else content
        if isinstance(content, bytes)
        else b"written by a function"
    )
    assert path.read_bytes() == expected
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


def test_an_error_mid_write_leaves_the_old_file_or_none(tmp_path):
    path = tmp_path / "f.bin"

    def fails(f):
        f.write(b"partial")
        raise ValueError("disk on fire")

    with pytest.raises(ValueError, match="disk on fire"):
        atomic_write(path, fails)  # the first write: nothing appears
    assert os.listdir(tmp_path) == []
    atomic_write(path, "old")
    with pytest.raises(ValueError, match="disk on fire"):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_the_new_content_is_synced_to_disk_before_the_rename(tmp_path, monkeypatch):
    """A rename that reaches the disk before the file's data would leave an empty or
    partial file after a power cut: the temporary file is fsync'ed first, then renamed."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    path = tmp_path / "f.bin"
    atomic_write(path, b"content")
    renames = [e for e in events if e[0] == "replace" and e[2] == str(path)]
    assert len(renames) == 1
    temporary = renames[0][1]
    assert Path(temporary).parent == tmp_path  # same folder: the rename is atomic
    synced = [e[1] for e in events[: events.index(renames[0])] if e[0] == "fsync"]
    assert temporary in synced, events
    # ...and the folder itself after the rename, so that the new name is durable too.
    assert ("fsync", str(tmp_path)) in events[events.index(renames[0]) :], events


def test_the_file_gets_the_permissions_a_plain_open_would_give(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f.bin", b"x")
        with open(tmp_path / "g.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == (tmp_path / "g.bin").stat().st_mode & 0o777 == 0o640


_KILLED_WRITER = """
import os, signal, sys, types

# pyro_vae.files alone, without the package's __init__ (torch, Pyro): a fast start.
package = types.ModuleType("pyro_vae")
package.__path__ = [sys.argv[2]]
sys.modules["pyro_vae"] = package
from pyro_vae.files import atomic_write

def write(f):
    f.write(b"x" * 100_000)  # half of the new content...
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # ...and the writer dies

atomic_write(sys.argv[1], write)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(Path(files.__file__).parent)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert path.read_bytes() == b"old"
    assert _visible(tmp_path) == ["f.bin"]  # at most a stray temporary file beside it
    atomic_write(path, b"new")  # the next write works as usual
    assert path.read_bytes() == b"new"


def test_concurrent_readers_see_only_whole_versions(tmp_path):
    """A reader racing a writer that alternates two 1 MB versions: every read returns a
    whole version (an in-place write is seen truncated or mixed within a few reads)."""
    path = tmp_path / "f.bin"
    versions = [b"a" * 1_000_000, b"b" * 1_000_000]
    atomic_write(path, versions[0])
    done = threading.Event()
    seen: list[bytes] = []

    def reader():
        while not done.is_set():
            seen.append(path.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            atomic_write(path, versions[i % 2])
    finally:
        done.set()
        thread.join()
    assert seen and all(s in versions for s in seen), sorted({(len(s), s[:1], s[-1:]) for s in seen})
