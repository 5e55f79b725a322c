"""Tests of pyro_vae.data.datasets: digits, IDX files, npy/npz/csv, splits, checks, binarization.

All data is either scikit-learn's bundled digits or small files written to ``tmp_path``;
nothing here reads shared folders or the network.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data import datasets as D
from pyro_vae.data import formats as F
from pyro_vae.data import transforms as T
from pyro_vae.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- helpers

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an IDX file: 00 00 <type> <ndim>, big-endian dims, big-endian data."""
    dtype = np.dtype(array.dtype)
    header = bytes([0, 0, _IDX_CODES[dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(
    folder: Path, *, compress: bool, n_train: int = 12, n_test: int = 5, side: tuple[int, int] = (28, 28), seed: int = 0
) -> dict[str, np.ndarray]:
    """Write four fake MNIST IDX files to ``folder`` and return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, *side), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, *side), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    # Make sure both ends of the pixel range are present, to check the /255 scaling.
    arrays["train_images"][0, 0, 0] = 0
    arrays["train_images"][0, 0, 1] = 255
    for key, stem in D.MNIST_FILES.items():
        name = stem + (".gz" if compress else "")
        write_idx(folder / name, arrays[key], compress=compress)
    return arrays


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, to check that loading wrote nothing."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------ digits


def test_digits_shapes_and_range() -> None:
    ds = D.load_dataset("digits", val_fraction=0.1, seed=0)
    assert ds.name == "digits"
    assert ds.x_dim == 64
    assert ds.image_shape == (8, 8)
    assert ds.val.shape == (round(0.1 * 1797), 64)
    assert ds.train.shape[0] + ds.val.shape[0] == 1797
    assert ds.test is None and ds.test_labels is None
    for split in (ds.train, ds.val):
        assert split.dtype == np.float32
        assert split.min() >= 0.0 and split.max() <= 1.0
    assert ds.train.max() == 1.0  # 16/16: the scaling is by 16, not by the max of a split
    assert ds.train_labels.dtype == np.int64 and ds.train_labels.shape == (ds.train.shape[0],)
    assert set(np.unique(ds.train_labels)) == set(range(10))


def test_load_digits_raw() -> None:
    x, y = D.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    # sklearn's pixel counts are multiples of 1/16 after scaling.
    np.testing.assert_array_equal(x * 16, np.round(x * 16))


# ------------------------------------------------------------------------------- split


def _rows(a: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(r) for r in a}


def test_split_reproducible_disjoint_and_covering() -> None:
    x = np.arange(200, dtype=np.float32).reshape(100, 2)  # every row unique
    labels = np.arange(100, dtype=np.int64)
    a = D.split_train_val(x, labels, 0.2, seed=3)
    b = D.split_train_val(x, labels, 0.2, seed=3)
    c = D.split_train_val(x, labels, 0.2, seed=4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])
    train, val, train_labels, val_labels = a
    assert val.shape == (20, 2) and train.shape == (80, 2)
    assert _rows(train).isdisjoint(_rows(val))
    assert _rows(train) | _rows(val) == _rows(x)
    # Labels travel with their rows.
    np.testing.assert_array_equal(train[:, 0] / 2, train_labels)
    np.testing.assert_array_equal(val[:, 0] / 2, val_labels)
    # The split is the documented permutation, so other tools can reproduce it.
    expected_val = np.sort(np.random.default_rng(3).permutation(100)[:20])
    np.testing.assert_array_equal(val_labels, expected_val)


def test_load_dataset_split_depends_on_seed_only() -> None:
    a = D.load_dataset("digits", seed=0)
    b = D.load_dataset("digits", seed=0)
    c = D.load_dataset("digits", seed=1)
    np.testing.assert_array_equal(a.val, b.val)
    assert a.val.shape == c.val.shape and not np.array_equal(a.val, c.val)


def test_split_sizes_and_errors() -> None:
    x = np.zeros((3, 2), dtype=np.float32)
    train, val, tl, vl = D.split_train_val(x, None, 0.01, seed=0)
    assert val.shape[0] == 1 and train.shape[0] == 2 and tl is None and vl is None  # at least 1
    with pytest.raises(DataError, match="leaving no training rows.*at least 2 data points"):
        D.split_train_val(np.zeros((1, 2), np.float32), None, 0.5, seed=0)
    with pytest.raises(ConfigError, match="`val_fraction` must be in"):
        D.split_train_val(x, None, 1.5, seed=0)
    with pytest.raises(DataError, match="2 labels for 3 rows"):
        D.split_train_val(x, np.zeros(2, np.int64), 0.3, seed=0)


# --------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    arrays = write_mnist(tmp_path, compress=compress)
    before = snapshot(tmp_path)
    ds = D.load_dataset("mnist", tmp_path, val_fraction=0.25, seed=0)
    assert snapshot(tmp_path) == before  # loading wrote nothing
    assert ds.name == "mnist"
    assert ds.image_shape == (28, 28) and ds.x_dim == 784
    assert ds.train.shape == (9, 784) and ds.val.shape == (3, 784)
    assert ds.test.shape == (5, 784) and ds.test_labels.shape == (5,)
    assert ds.train.dtype == np.float32 and ds.test_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.test, arrays["test_images"].reshape(5, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    everything = np.concatenate([ds.train, ds.val])
    assert everything.min() == 0.0 and everything.max() == 1.0

    tx, ty, sx, sy = D.load_mnist(tmp_path)
    np.testing.assert_array_equal(tx, arrays["train_images"].reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(ty, arrays["train_labels"])


def test_mnist_other_image_size_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path, compress=True, side=(4, 5))
    monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path))
    ds = D.load_dataset("mnist")  # data_dir from PYRO_VAE_DATA_DIR
    assert ds.image_shape == (4, 5) and ds.x_dim == 20


def test_mnist_needs_a_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
    assert D.default_data_dir() is None
    with pytest.raises(DataError, match="pass `data_dir` DIR or set PYRO_VAE_DATA_DIR"):
        D.load_dataset("mnist")
    with pytest.raises(DataError, match="does not exist"):
        D.load_dataset("mnist", tmp_path / "nope")


def test_mnist_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*not found.*train-images-idx3-ubyte\[\.gz\]"):
        D.load_dataset("mnist", tmp_path)
    assert snapshot(tmp_path) == before


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), compress=False)
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        D.load_mnist(tmp_path)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_truncated(tmp_path: Path, compress: bool) -> None:
    raw = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(raw[:-5]) if compress else raw[:-5])
    before = path.read_bytes()
    with pytest.raises(DataError, match="corrupt or truncated: expected 24 bytes .*got 19; re-download"):
        F.read_idx(path)
    assert path.read_bytes() == before


def test_idx_extra_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="expected 4 bytes .*got 5"):
        F.read_idx(path)


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    before = path.read_bytes()
    with pytest.raises(DataError, match="not an IDX file"):
        F.read_idx(path)
    assert path.read_bytes() == before


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])  # the stream ends early: EOFError
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")  # BadGzipFile
    flipped = tmp_path / "flipped.gz"
    # Damage the deflate body (after the 10-byte header) so zlib or the CRC check fails.
    body = bytearray(good)
    for i in range(12, len(body) - 8):
        body[i] ^= 0xFF
    flipped.write_bytes(bytes(body))
    for path in (cut, garbage, flipped):
        before = path.read_bytes()
        with pytest.raises(DataError, match="corrupt|truncated|not an IDX"):
            F.read_idx(path)
        assert path.read_bytes() == before
    with pytest.raises(DataError, match=r"gzip file .*cut\.gz.* is corrupt or truncated.*re-download"):
        F.read_idx(cut)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*train-images-idx3-ubyte\[\.gz\]"):
        F.read_idx(tmp_path / "nope-idx3-ubyte")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_dtypes(tmp_path: Path, dtype: type) -> None:
    a = (np.arange(-6, 6).reshape(3, 4) * 3).astype(dtype)
    path = write_idx(tmp_path / "a.idx", a, compress=False)
    out = F.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


# ----------------------------------------------------------------------- npy, npz, csv


def test_npy_2d(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 3))  # float64 on disk
    path = tmp_path / "x.npy"
    np.save(path, x)
    ds = D.load_dataset(str(path), val_fraction=0.25)
    assert ds.name == str(path)
    assert ds.train.dtype == np.float32 and ds.train.shape == (15, 3) and ds.val.shape == (5, 3)
    assert ds.image_shape is None and ds.train_labels is None and ds.test is None
    loaded, labels = F.load_array(path)
    np.testing.assert_array_equal(loaded, x.astype(np.float32))
    assert labels is None


def test_npy_3d_is_flattened(tmp_path: Path) -> None:
    x = np.arange(10 * 3 * 4, dtype=np.uint8).reshape(10, 3, 4)
    path = tmp_path / "imgs.npy"
    np.save(path, x)
    ds = D.load_dataset(str(path))
    assert ds.image_shape == (3, 4) and ds.x_dim == 12
    loaded, _ = F.load_array(path)
    np.testing.assert_array_equal(loaded, x.reshape(10, 12).astype(np.float32))


@pytest.mark.parametrize("data_key,label_key", [("x", "y"), ("X", "labels"), ("data", None)])
def test_npz_keys(tmp_path: Path, data_key: str, label_key: str | None) -> None:
    x = np.random.default_rng(0).random((8, 2)).astype(np.float32)
    y = np.arange(8)
    arrays = {data_key: x}
    if label_key is not None:
        arrays[label_key] = y.astype(np.float64)  # whole-number floats are accepted
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    loaded, labels = F.load_array(path)
    np.testing.assert_array_equal(loaded, x)
    if label_key is None:
        assert labels is None
    else:
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, y)
    ds = D.load_dataset(str(path), val_fraction=0.25)
    if label_key is not None:
        # Labels follow their rows through the split.
        for split, lab in ((ds.train, ds.train_labels), (ds.val, ds.val_labels)):
            np.testing.assert_array_equal(split, x[lab])


def test_npz_single_unnamed_array_and_ambiguous(tmp_path: Path) -> None:
    single = tmp_path / "single.npz"
    np.savez(single, np.ones((4, 2)))  # stored as arr_0
    assert F.load_array(single)[0].shape == (4, 2)
    ambiguous = tmp_path / "amb.npz"
    np.savez(ambiguous, a=np.ones((4, 2)), b=np.ones((4, 2)))
    with pytest.raises(DataError, match=r"holds arrays \['a', 'b'\] but none is named x.*numpy\.savez"):
        F.load_array(ambiguous)


def test_npz_bad_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((4, 2)), y=np.arange(3))
    with pytest.raises(DataError, match=r"labels of shape \(3,\) for 4 rows"):
        F.load_array(path)
    np.savez(path, x=np.ones((4, 2)), y=np.array([0.5, 1, 2, 3]))
    with pytest.raises(DataError, match="not whole numbers"):
        F.load_array(path)


@pytest.mark.parametrize("header", [None, "a,b,c"], ids=["no-header", "header"])
def test_csv(tmp_path: Path, header: str | None) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    path = tmp_path / "d.csv"
    np.savetxt(path, x, delimiter=",", header=header or "", comments="")
    loaded, labels = F.load_array(path)
    assert labels is None and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, x.astype(np.float32), rtol=1e-6)


def test_csv_single_column_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("\nvalue\n1\n2\n\n3\n")
    loaded, _ = F.load_array(path)
    np.testing.assert_array_equal(loaded, np.array([[1], [2], [3]], np.float32))


def test_csv_non_numeric(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(DataError, match="not numeric: line 3, column 2 holds 'oops'"):
        F.load_array(path)
    path.write_text("1,2\n3,4,5\n")
    with pytest.raises(DataError, match="3 columns on line 2 but 2 before"):
        F.load_array(path)


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="is empty: it holds 0 rows"):
        F.load_array(path)


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty \(0 bytes\); pass a 2-D array"):
        D.load_dataset(str(path))
    assert path.read_bytes() == b""


def test_zero_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, 5)))
    with pytest.raises(DataError, match="is empty: it holds 0 rows; pass a 2-D array"):
        D.load_dataset(str(path))


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4, 5), ()], ids=["1d", "4d", "0d"])
def test_wrong_rank(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(DataError, match=rf"holds a {len(shape)}-D array.*pass a 2-D array"):
        D.load_dataset(str(path))


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; check the path"):
        D.load_dataset(str(tmp_path / "missing.npy"))
    with pytest.raises(DataError, match=r"unknown data 'cifar'.*'digits'.*'mnist'.*\.npy"):
        D.load_dataset("cifar")
    other = tmp_path / "x.txt"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown data .*x\.txt"):
        D.load_dataset(str(other))


def test_corrupt_npy_and_non_numeric(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=r"bad\.npy' is not a \.npy file.*re-save it with numpy\.save"):
        F.load_array(bad)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK but not a zip archive")
    with pytest.raises(DataError, match=r"bad\.npz' is not a \.npz file.*numpy\.savez"):
        F.load_array(bad_npz)
    cut_npz = tmp_path / "cut.npz"
    np.savez(cut_npz, x=np.ones((50, 4)))
    cut_npz.write_bytes(cut_npz.read_bytes()[:100])  # a real archive, truncated
    with pytest.raises(DataError, match=r"cannot read data file .*cut\.npz.*numpy\.savez"):
        F.load_array(cut_npz)
    strings = tmp_path / "s.npy"
    np.save(strings, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="not real numbers"):
        F.load_array(strings)
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects, which are never unpickled"):
        F.load_array(objects)  # pickled objects are refused, never executed


@pytest.mark.parametrize("bad,kind", [(np.nan, "1 NaN, 0 inf"), (np.inf, "0 NaN, 1 inf")])
def test_non_finite(tmp_path: Path, bad: float, kind: str) -> None:
    x = np.ones((10, 3))
    x[6, 2] = bad
    path = tmp_path / "x.npy"
    np.save(path, x)
    with pytest.raises(DataError, match=rf"1 non-finite value\(s\) \({kind}\), first in row 6; remove or impute"):
        D.load_dataset(str(path))


def test_check_finite_counts() -> None:
    x = np.zeros((5, 2), np.float32)
    F.check_finite(x, "x")  # no error
    x[3, 0] = np.nan
    x[4, :] = -np.inf
    with pytest.raises(DataError, match=r"^my data holds 3 non-finite value\(s\) \(1 NaN, 2 inf\), first in row 3"):
        F.check_finite(x, "my data")


def test_errors_are_one_line(tmp_path: Path) -> None:
    """Every message is a single line, so the CLI can print it as is."""
    (tmp_path / "e.npy").write_bytes(b"")
    (tmp_path / "b.npy").write_bytes(b"garbage")
    calls = [
        lambda: D.load_dataset(str(tmp_path / "e.npy")),
        lambda: D.load_dataset(str(tmp_path / "b.npy")),
        lambda: D.load_dataset("nope"),
        lambda: D.load_dataset("mnist", tmp_path),
        lambda: F.read_idx(tmp_path / "b.npy"),
    ]
    for call in calls:
        with pytest.raises(DataError) as info:
            call()
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- binarize


def test_binarize_dynamic_mean() -> None:
    n = 100_000
    x = torch.full((n,), 0.3)
    gen = torch.Generator().manual_seed(0)
    out = T.binarize(x, "dynamic", generator=gen)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    # N = 1e5 Bernoulli(0.3) draws: standard error sqrt(0.3 * 0.7 / 1e5) ~= 0.00145;
    # allow 5 standard errors.
    se = math.sqrt(0.3 * 0.7 / n)
    assert abs(out.mean().item() - 0.3) < 5 * se
    # The same generator seed gives the same draw.
    again = T.binarize(x, "dynamic", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_binarize_dynamic_edges_are_exact() -> None:
    x = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(T.binarize(x, "dynamic"), x)


def test_binarize_threshold_and_none() -> None:
    x = torch.tensor([[0.0, 0.49, 0.5, 0.51, 1.0]], dtype=torch.float64)
    out = T.binarize(x, "threshold")
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]], dtype=torch.float64))
    low = T.binarize(x, "threshold", threshold=0.2)
    assert torch.equal(low, torch.tensor([[0.0, 1, 1, 1, 1]], dtype=torch.float64))
    assert T.binarize(x, "none") is x


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_binarize_dynamic_out_of_range(value: float) -> None:
    x = torch.tensor([0.2, value])
    # The whole message, fix included: it says what to pass instead.
    with pytest.raises(
        DataError,
        match=r"needs values in \[0, 1\], got min .* max .*; rescale the data to \[0, 1\], or pass "
        r"`likelihood` normal with `binarize` none$",
    ):
        T.binarize(x, "dynamic")


def test_binarize_unknown_mode() -> None:
    with pytest.raises(
        DataError,
        match=r"^unknown binarize mode 'auto'; choose one of dynamic, threshold, none "
        r"\(resolve 'auto' with resolve_binarize first\)$",
    ):
        T.binarize(torch.zeros(2), "auto")


def test_resolve_binarize() -> None:
    assert T.resolve_binarize("auto", True) == "dynamic"
    assert T.resolve_binarize("auto", False) == "none"
    for mode in ("dynamic", "threshold", "none"):
        assert T.resolve_binarize(mode, False) == mode
        assert T.resolve_binarize(mode, True) == mode
    with pytest.raises(DataError, match="choose one of auto, dynamic, threshold, none"):
        T.resolve_binarize("sometimes", True)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(D.DATA_DIR_ENV, "/some/where")
    assert D.default_data_dir() == "/some/where"
    monkeypatch.setenv(D.DATA_DIR_ENV, "")
    assert D.default_data_dir() is None
