"""Tests of pyro_vae.data.rows and the memory-mapped storage of load_dataset.

Every file is small and written to ``tmp_path``. The mapped path must read exactly what
the in-memory path reads (the same float32 values, the same splits and labels), and a
file changed under a reader must be one clear DataError, never a crash or a silent mix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import datasets as D
from pyro_vae.data.rows import ArrayRows, MappedFile, Rows, as_rows, part, sample_rows
from pyro_vae.errors import DataError


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 IDX file: 00 00 08 <ndim>, big-endian dimensions, the bytes."""
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes())


def _images(n: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 4, 5), dtype=np.uint8)  # (N, H, W)


def _mnist_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n, seed in (("train", 50, 0), ("t10k", 20, 1)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", _images(n, seed))
        labels = np.random.default_rng(seed).integers(0, 10, size=n).astype(np.uint8)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def _sources(tmp_path: Path) -> dict[str, tuple[str, str | None]]:
    """One source per mappable format: ``{kind: (data, data_dir)}``."""
    x = np.random.default_rng(2).random((40, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "u8.npy", _images(40))  # 3-D uint8 images, not scaled (as in memory)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(40) % 3)
    np.savez(
        tmp_path / "splits.npz",
        train=x[:30],
        train_labels=np.arange(30) % 2,
        test=x[30:],
        test_labels=np.arange(10) % 2,
    )
    return {
        "npy": (str(tmp_path / "x.npy"), None),
        "npy uint8 images": (str(tmp_path / "u8.npy"), None),
        "npz with labels": (str(tmp_path / "xy.npz"), None),
        "npz splits": (str(tmp_path / "splits.npz"), None),
        "mnist idx": ("mnist", str(_mnist_folder(tmp_path))),
    }


def _values(split: np.ndarray | Rows | None) -> np.ndarray | None:
    if split is None:
        return None
    return split.read(slice(None)) if isinstance(split, Rows) else split


@pytest.mark.parametrize("kind", ["npy", "npy uint8 images", "npz with labels", "npz splits", "mnist idx"])
def test_mapped_storage_reads_exactly_what_memory_reads(tmp_path, kind):
    data, data_dir = _sources(tmp_path)[kind]
    memory = D.load_dataset(data, data_dir, val_fraction=0.2, seed=3, storage="memory")
    mapped = D.load_dataset(data, data_dir, val_fraction=0.2, seed=3, storage="mapped")
    assert mapped.mapped and not memory.mapped
    assert isinstance(mapped.train, ArrayRows) and mapped.train.mapped
    for split in ("train", "val", "test"):
        want, got = _values(getattr(memory, split)), _values(getattr(mapped, split))
        assert (want is None) == (got is None)
        if want is not None:
            assert got.dtype == np.float32 and np.array_equal(got, want), split  # bit for bit
        labels_want, labels_got = getattr(memory, f"{split}_labels"), getattr(mapped, f"{split}_labels")
        assert (labels_want is None) == (labels_got is None)
        if labels_want is not None:
            assert np.array_equal(labels_want, labels_got)
    assert (mapped.x_dim, mapped.image_shape) == (memory.x_dim, memory.image_shape)


def test_mapped_rows_stay_in_the_files_dtype(tmp_path):
    folder = _mnist_folder(tmp_path)
    ds = D.load_dataset("mnist", folder, storage="mapped")
    assert ds.train.dtype == np.uint8 and ds.train.scale == 255.0
    x = ds.train.gather(torch.tensor([3, 0]))
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


def test_auto_storage_maps_above_the_threshold_only(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((20, 3), dtype=np.float32))
    assert not D.load_dataset(str(tmp_path / "x.npy")).mapped  # 240 bytes: held in memory
    monkeypatch.setattr(D, "MAP_ABOVE_BYTES", 100)
    assert D.load_dataset(str(tmp_path / "x.npy")).mapped


def test_auto_storage_reads_what_cannot_be_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAP_ABOVE_BYTES", 0)
    np.savetxt(tmp_path / "x.csv", np.ones((10, 2)), delimiter=",")
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((10, 2)))
    for path in ("x.csv", "c.npz"):
        assert not D.load_dataset(str(tmp_path / path)).mapped
    assert not D.load_dataset("digits").mapped


def test_mapped_storage_refuses_what_cannot_be_mapped_with_the_fix(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((10, 2)))
    with pytest.raises(DataError, match=r"cannot map data .* numpy.save\(path, X\), or pass `storage` auto or memory"):
        D.load_dataset(str(tmp_path / "c.npz"), storage="mapped")


def test_a_file_that_declares_more_rows_than_it_holds_is_refused_before_mapping(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((100, 8), dtype=np.uint8))
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(DataError) as err:
        D.load_dataset(str(path), storage="mapped")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "restore it" in message
    return message


def test_a_file_truncated_while_mapped_is_one_clear_error_not_sigbus(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(4000, dtype=np.uint8).reshape(500, 8))
    ds = D.load_dataset(str(path), storage="mapped", val_fraction=0.1)
    ds.train.read([0, 1])
    os.truncate(path, 1000)  # reading the lost pages through the old mapping would be SIGBUS
    with pytest.raises(DataError) as err:
        ds.train.read([440])
    assert "changed size from 4,128 to 1,000 bytes" in _one_line(err)
    with pytest.raises(DataError, match="changed size"):
        ds.val.gather([0])


def test_a_file_rewritten_in_place_while_mapped_is_caught(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((50, 4), dtype=np.float32))
    rows = D.load_dataset(str(path), storage="mapped").train
    np.save(path, np.ones((50, 4), dtype=np.float32))  # same size, new values
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a coarse clock would not see it
    with pytest.raises(DataError) as err:
        rows.read([0])
    assert "was modified" in _one_line(err) or "replaced" in str(err.value)


def test_a_file_replaced_while_mapped_is_caught(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((50, 4), dtype=np.float32))
    rows = D.load_dataset(str(path), storage="mapped").train
    np.save(tmp_path / "new.npy", np.ones((50, 4), dtype=np.float32))
    os.replace(tmp_path / "new.npy", path)  # a new inode under the old name
    with pytest.raises(DataError, match="was replaced by another file|was modified"):
        rows.read([0])
    path.unlink()
    with pytest.raises(DataError, match="was deleted"):
        rows.read([0])


def test_mapped_pages_are_released_past_the_budget(tmp_path, monkeypatch):
    from pyro_vae.data import rows as rows_module

    path = tmp_path / "x.npy"
    np.save(path, np.ones((2000, 100), dtype=np.uint8))

    def read_all(file: MappedFile) -> ArrayRows:
        rows = ArrayRows(np.load(path, mmap_mode="r"), file=file)
        for lo in range(0, 2000, 100):
            rows.read(slice(lo, lo + 100))  # 10,000 bytes each: 200,000 in all
        return rows

    # Measured from /proc: the process's other file-backed pages move the measure too
    # (a library paged out between two reads), so only "it releases" is certain.
    file = MappedFile(path, resident_bytes=50_000)
    rows = read_all(file)
    assert file.releases >= 1
    np.testing.assert_array_equal(rows.read([5]), np.ones((1, 100), dtype=np.float32))  # still readable after
    # Estimated from the bytes read (no /proc): released at 60,000, 120,000 and 180,000 bytes.
    monkeypatch.setattr(rows_module, "_file_resident_bytes", lambda: None)
    file = MappedFile(path, resident_bytes=50_000)
    read_all(file)
    assert file.releases == 3


def test_rows_views_chunks_parts_and_samples():
    x = np.arange(30, dtype=np.uint8).reshape(10, 3)
    rows = ArrayRows(x, scale=2.0)
    view = rows.select(np.array([1, 4, 7, 9]))
    np.testing.assert_array_equal(view.read([2, 0]), x[[7, 1]].astype(np.float32) / 2)
    np.testing.assert_array_equal(view.select(slice(1, 3)).read(slice(None)), x[[4, 7]] / np.float32(2))
    blocks = list(rows.chunks(4))
    assert [s for s, _ in blocks] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x / np.float32(2))
    # Parts as torch.tensor_split cuts a tensor: the shards of validation rows.
    t = torch.arange(10)
    for parts in (1, 3, 4):
        for which in range(parts):
            want = torch.tensor_split(t, parts)[which]
            got = part(as_rows(x), parts, which).read(slice(None))[:, 0] / 3
            np.testing.assert_array_equal(got, want.numpy())
    assert sample_rows(rows, 3).shape == (3, 3) and sample_rows(rows, 100).shape == (10, 3)
