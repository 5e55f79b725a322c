"""Checksummed folders: what a check finds, the writer lock, removal, adoption, errors.

Each test closes a blind spot that mutation testing (``tools/mutation.py``) found in
``pyro_vae/files.py``: functions that the run-directory fault tests reach only through
whole training runs, checked here on their own.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from pyro_vae import files
from pyro_vae.errors import IntegrityError
from pyro_vae.files import (
    LOCK_FILE,
    MANIFEST,
    FolderCheck,
    FolderLock,
    atomic_write_many,
    check_folder,
    lock_folder,
    read_verified,
    remove_files,
    start_manifest,
)


def _manifest(folder) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_a_folder_check_sorts_every_listed_file_by_its_state(tmp_path):
    start_manifest(tmp_path)
    atomic_write_many(tmp_path, {"a": b"alpha", "b": b"beta", "c": b"gamma"})
    (tmp_path / "b").unlink()  # listed, gone: missing
    (tmp_path / "c").write_bytes(b"gamma!")  # listed, changed: damaged
    # A first write killed before its rename: listed as pending only, never there.
    manifest = files._Manifest.load(tmp_path)
    manifest.pending["d"] = {"sha256": hashlib.sha256(b"delta").hexdigest(), "bytes": 5}
    manifest.save(durable=True)
    assert check_folder(tmp_path) == FolderCheck(intact=["a"], missing=["b"], damaged=["c"], unfinished=["d"])
    assert check_folder(tmp_path / "nowhere") is None  # no manifest: nothing to check


def test_the_writer_lock_is_exclusive_and_names_its_holder(tmp_path):
    lock = lock_folder(tmp_path)
    assert isinstance(lock, FolderLock)
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    # flock is per open file: a second taker, even in this process, is refused and told who holds it.
    assert lock_folder(tmp_path) == os.getpid()
    lock.release()
    with lock_folder(tmp_path) as again:
        assert isinstance(again, FolderLock)


def test_removed_files_leave_the_folder_and_its_manifest(tmp_path):
    start_manifest(tmp_path)
    atomic_write_many(tmp_path, {"a": b"alpha", "b": b"beta"})
    remove_files(str(tmp_path), ["a", "never-there"])
    assert not (tmp_path / "a").exists() and (tmp_path / "b").read_bytes() == b"beta"
    assert set(_manifest(tmp_path)["files"]) == {"b"}


def test_adopting_a_folder_lists_its_plain_files_only(tmp_path):
    (tmp_path / "weights").write_bytes(b"w")
    (tmp_path / ".hidden").write_bytes(b"h")
    (tmp_path / "sub").mkdir()
    start_manifest(tmp_path, adopt=True)
    listed = _manifest(tmp_path)["files"]
    assert listed == {"weights": {"sha256": hashlib.sha256(b"w").hexdigest(), "bytes": 1}}
    assert read_verified(tmp_path / "weights") == b"w"


def test_a_changed_file_is_refused_with_both_checksums(tmp_path):
    start_manifest(tmp_path)
    atomic_write_many(tmp_path, {"state": b"original"})
    (tmp_path / "state").write_bytes(b"changed!!")
    got, want = hashlib.sha256(b"changed!!").hexdigest(), hashlib.sha256(b"original").hexdigest()
    with pytest.raises(IntegrityError) as error:
        read_verified(tmp_path / "state", fix="delete the run")
    assert str(error.value) == (
        f"{str(tmp_path / 'state')!r} does not match its checksum in {MANIFEST} (9 bytes, sha256 {got[:12]}..., "
        f"recorded 8 bytes, {want[:12]}...): it was changed or damaged after it was written; delete the run"
    )


def test_a_failed_write_names_the_destination_not_the_temporary_file(tmp_path):
    missing = tmp_path / "gone" / "weights"
    with pytest.raises(FileNotFoundError) as error:
        atomic_write_many(missing.parent, {"weights": b"w"})
    assert error.value.filename == str(missing)


def _damaged_message(folder, problem: str) -> str:
    return (
        f"{str(folder / MANIFEST)!r} is damaged ({problem}), so no file in {str(folder)!r} can be verified; "
        "restore the folder from a copy, or retrain"
    )


def test_a_manifest_with_malformed_entries_is_refused_whole(tmp_path):
    # A checksum that matches, over an entry whose sha256 is not a string.
    files._Manifest(tmp_path, {"a": {"sha256": 5, "bytes": 3}}, {}).save(durable=False)
    with pytest.raises(IntegrityError) as error:
        check_folder(tmp_path)
    assert str(error.value) == _damaged_message(tmp_path, "its entries are malformed")


def test_a_manifest_over_its_size_limit_is_refused_unread(tmp_path):
    """A well-formed manifest larger than the 1 MiB limit is not parsed (a bound on what a
    damaged or hostile file can cost): it is refused as not ours."""
    entry = {"sha256": "0" * 64, "bytes": 1}
    files._Manifest(tmp_path, {f"file-{i:06d}": entry for i in range(20_000)}, {}).save(durable=False)
    assert (tmp_path / MANIFEST).stat().st_size > files._MAX_MANIFEST_BYTES
    with pytest.raises(IntegrityError) as error:
        check_folder(tmp_path)
    assert str(error.value) == _damaged_message(tmp_path, "it is not a pyro-vae manifest")


def test_removing_a_file_drops_its_pending_entry_too(tmp_path):
    start_manifest(tmp_path)
    manifest = files._Manifest.load(tmp_path)
    manifest.pending["p"] = {"sha256": hashlib.sha256(b"p").hexdigest(), "bytes": 1}
    manifest.save(durable=True)
    remove_files(tmp_path, ["p"])
    assert _manifest(tmp_path)["pending"] == {}


def test_the_lock_file_gets_the_permissions_a_plain_open_gives(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    with lock_folder(tmp_path):
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o666 & ~mask


def test_strays_of_dead_writers_go_and_a_live_writers_stays(tmp_path):
    import fcntl

    dead = tmp_path / ".weights.abcd1234.tmp"
    dead.write_bytes(b"half")
    live = tmp_path / ".state.efgh5678.tmp"
    live.write_bytes(b"in progress")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its writer holds it
    try:
        assert files.clean_strays(tmp_path) == [dead.name]
    finally:
        os.close(fd)
    assert not dead.exists() and live.exists()
