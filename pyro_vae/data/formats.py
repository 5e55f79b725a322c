"""Reading data files: IDX (the MNIST format, plain or gzipped), ``.npy``, ``.npz``, ``.csv``.

Every reader returns float32 rows (images flattened) and int64 labels, and turns every
problem a user can cause with a file into one :class:`~pyro_vae.errors.DataError` line
that names the problem and the fix. Nothing is unpickled (``allow_pickle=False``).

:func:`open_array`, :func:`open_splits` and :func:`map_idx` open the same files
memory-mapped instead, in their own dtype (:mod:`pyro_vae.data.rows`): nothing is read
until a minibatch asks for its rows. A ``.npy`` file, the arrays of an uncompressed
``.npz`` (``numpy.savez``, not ``savez_compressed``) and uncompressed IDX files can be
mapped; ``.csv``, gzip and compressed archives cannot, and those openers return ``None``.
The header of every mapped array is checked against the bytes that follow it first.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from ..errors import DataError
from .rows import ArrayRows, MappedFile, Rows

__all__ = [
    "ARRAY_SUFFIXES",
    "MNIST_FILES",
    "SPLIT_NAMES",
    "read_idx",
    "load_array",
    "read_splits",
    "check_finite",
    "check_finite_rows",
    "Mapped",
    "map_idx",
    "open_array",
    "open_splits",
]

#: IDX file names of MNIST (and Fashion-MNIST, which uses the same names), each of
#: which may also carry a ``.gz`` suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_LISTING = ", ".join(f"{name}[.gz]" for name in MNIST_FILES.values())

#: File suffixes accepted by :func:`load_array`.
ARRAY_SUFFIXES = (".npy", ".npz", ".csv")


class _ByteReader(Protocol):
    """What the header checks read from: a plain, gzip or archive-member binary file."""

    def read(self, size: int = -1, /) -> bytes: ...

    def tell(self) -> int: ...


# IDX type code (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


_NPZ_DATA_KEYS = ("x", "X", "data")


_NPZ_LABEL_KEYS = ("y", "Y", "labels")


_GZIP_MAGIC = b"\x1f\x8b"


# Deflate expands its input at most about 1032 times; a size claimed beyond that is a lie.
_MAX_DEFLATE_RATIO = 1100


_FIX_ARRAY = "pass a 2-D array with one data point per row"


# Leading bytes of the NumPy formats: .npy files, and the zip archives behind .npz.
# (np.load's own checks; an empty archive starts with PK\x05\x06.)
_MAGIC = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}


# How to write a readable file of each kind, for the fix in read errors.
_WRITERS = {
    ".npy": "numpy.save(path, X)",
    ".npz": "numpy.savez(path, x=X, y=labels)",
    ".csv": "numpy.savetxt(path, X, delimiter=',')",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each
    dimension as a big-endian uint32; the payload follows in row-major order.

    Args:
        path: The file; a ``.gz`` suffix (or gzip magic bytes) means compressed.

    Returns:
        An array of the file's shape in native byte order (``uint8`` for MNIST).

    Raises:
        DataError: The file is missing, not an IDX file, a corrupt gzip stream, or its
            payload is shorter or longer than its header says.
    """
    p = Path(path)
    payload, dims, dtype = _read_idx_parts(p)
    expected = math.prod(dims) * dtype.itemsize
    got = len(payload)
    if got != expected:
        raise DataError(
            f"IDX file {str(p)!r} is corrupt or truncated: expected {expected:,} bytes of data "
            f"for shape {dims}, got {got:,}; re-download it"
        )
    values = np.frombuffer(payload, dtype=dtype).reshape(dims)
    # astype copies into native byte order, so the result is writable and does not
    # keep the whole decompressed buffer alive.
    return values.astype(dtype.newbyteorder("="))


def load_array(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a ``.npy``, ``.npz`` or ``.csv`` file of data points.

    A 2-D array has one data point per row; a 3-D array ``(N, H, W)`` of images is
    flattened to ``(N, H*W)``. An ``.npz`` holds the data under ``x`` (or ``X``,
    ``data``, or its only array) and optional labels under ``y`` (or ``Y``,
    ``labels``). A ``.csv`` is numeric and comma-separated with an optional header line
    of column names; it carries no labels.

    Args:
        path: The file.

    Returns:
        ``(x, labels)``: x float32 ``(N, D)``, labels int64 ``(N,)`` or ``None``.

    Raises:
        DataError: The file is missing, empty, unreadable, non-numeric, or holds an
            array that is not 2-D or 3-D, or labels that do not match the rows.
    """
    x, labels, _ = _load_array_with_shape(Path(path))
    return x, labels


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise if ``x`` holds NaN or infinite values.

    Args:
        x: Array whose first axis indexes rows.
        what: How to name the array in the message, e.g. ``"data 'x.npy'"``.

    Raises:
        DataError: Naming how many values are NaN or inf and the first row holding one.

    Example:
        >>> check_finite(np.array([[0.0, 1.0], [np.nan, 2.0]]), "toy data")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pyro_vae.errors.DataError: toy data holds 1 non-finite value(s) (1 NaN, 0 inf), first in row 1; ...
    """
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    n_nan = int(np.isnan(x).sum())
    n_bad = int(bad.sum())
    rows_bad = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    first_row = int(np.flatnonzero(rows_bad)[0])
    raise DataError(
        f"{what} holds {n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} inf), "
        f"first in row {first_row}; remove or impute those rows before training"
    )


def _is_gzip(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed: by suffix, or by its magic bytes."""
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_idx_parts(path: Path) -> tuple[bytes, tuple[int, ...], np.dtype]:
    """An IDX file's payload, dimensions and type, decompressed if gzipped.

    The header is read and checked against the file's size first; the payload is read
    only up to what the header declares (plus one byte, to tell a longer file), so a
    header claiming 10^12 rows is an error, not an allocation.
    """
    if not path.exists():
        raise DataError(
            f"IDX file {str(path)!r} does not exist; check the path (an MNIST folder holds {_MNIST_LISTING})"
        )
    if not path.is_file():
        raise DataError(f"IDX path {str(path)!r} is not a file; pass the path of an IDX file")
    try:
        size = path.stat().st_size
        compressed = _is_gzip(path)
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            dims, dtype = _idx_header(f, path, size, compressed)
            payload = f.read(math.prod(dims) * dtype.itemsize + 1)
        return payload, dims, dtype
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        raise DataError(f"gzip file {str(path)!r} is corrupt or truncated ({kind}: {exc}); re-download it") from exc
    except OSError as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}; check the file and its permissions") from exc


def _idx_header(f: _ByteReader, path: Path, size: int, compressed: bool) -> tuple[tuple[int, ...], np.dtype]:
    """An IDX header's dimensions and type, checked against what the file can hold; ``f`` is
    left at the payload."""
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        shown = head.hex(" ") or "nothing"
        raise DataError(
            f"{str(path)!r} is not an IDX file: its first bytes are {shown}, expected 00 00 <type> <ndim>; "
            "check the path or re-download the file"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    raw_dims = f.read(4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise DataError(
            f"IDX file {str(path)!r} is corrupt or truncated: its header declares {ndim} dimensions "
            f"but the file ends after {4 + len(raw_dims)} bytes; re-download it"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    expected = math.prod(dims) * dtype.itemsize
    # What the file can hold: its size, or for gzip the most deflate can expand it.
    room = _MAX_DEFLATE_RATIO * size + (1 << 20) if compressed else size - 4 - 4 * ndim
    if expected > room and compressed:
        raise DataError(
            f"IDX file {str(path)!r} is corrupt: its header declares shape {dims}, {expected:,} bytes "
            f"of data, more than a gzip file of {size:,} bytes can hold; re-download it"
        )
    if expected > room:
        raise DataError(
            f"IDX file {str(path)!r} is corrupt or truncated: expected {expected:,} bytes of data "
            f"for shape {dims}, got {max(room, 0):,}; re-download it"
        )
    return dims, dtype


def _load_array_with_shape(
    path: Path,
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int] | None]:
    """:func:`load_array` plus the ``(H, W)`` of a 3-D array (``None`` for 2-D)."""
    label, suffix, size = _check_data_path(path)
    labels: np.ndarray | None = None
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                _check_npy_header(f, size, label)
            # allow_pickle=False: loading data must never run code from the file.
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            x, labels = _read_npz(path, label)
        else:
            x = _read_csv(path, label)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _read_error(exc, label, suffix) from exc

    x = _as_2d_float32(x, label)
    image_shape = None
    if x.ndim == 3:
        n, h, w = x.shape
        image_shape = (int(h), int(w))
        x = x.reshape(n, h * w)  # (N, H*W)
    if labels is not None:
        labels = _as_labels(labels, x.shape[0], label)
    return x, labels, image_shape


def _read_error(exc: BaseException, label: str, suffix: str) -> DataError:
    """The DataError for a file NumPy could not read."""
    if isinstance(exc, ValueError) and "pickle" in str(exc):
        return DataError(
            f"data file {label} holds Python objects, which are never unpickled here for "
            f"safety; re-save it as a numeric array with {_WRITERS[suffix]}"
        )
    return DataError(
        f"cannot read data file {label} as {suffix} ({_first_line(exc)}); re-save it with {_WRITERS[suffix]}"
    )


def _check_data_path(path: Path) -> tuple[str, str, int]:
    """``(label, suffix, size)`` of a data file that exists, is not empty and starts as its suffix says."""
    label = repr(str(path))
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise DataError(
            f"unsupported data file {label}: expected a {', '.join(ARRAY_SUFFIXES)} file, "
            "or pass `data` digits or `data` mnist"
        )
    if not path.exists():
        raise DataError(f"data file {label} does not exist; check the path passed to `data`")
    if not path.is_file():
        raise DataError(f"data path {label} is not a file; pass the path of a {suffix} file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DataError(f"cannot read data file {label}: {exc.strerror or exc}; check the file's permissions") from None
    if size == 0:
        raise DataError(f"data file {label} is empty (0 bytes); {_FIX_ARRAY}")

    if suffix in _MAGIC:
        # Checked here because np.load falls back to unpickling any file it does not
        # recognise, which fails with a message about allow_pickle, not about the file.
        if not head.startswith(_MAGIC[suffix]):
            raise DataError(
                f"data file {label} is not a {suffix} file (it does not start with the NumPy "
                f"{suffix} signature); re-save it with {_WRITERS[suffix]}"
            )
    return label, suffix, size


def _check_npy_header(f: _ByteReader, room: int, label: str) -> None:
    """Check that a ``.npy`` stream holds the bytes its header declares, before reading them.

    ``np.load`` allocates the whole array from the header's shape before reading a byte of
    it: a header claiming 10^12 rows would ask for terabytes.

    Args:
        f: The stream, at the start of the ``.npy`` data.
        room: How many bytes the stream holds (the file's or the archive member's size).
        label: The file's name in messages.

    Raises:
        DataError: The declared array is larger than the stream. (A malformed header is
            left to ``np.load``, which says what is wrong with it.)
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return
    except (ValueError, OSError, EOFError):
        return
    if dtype.hasobject:
        return  # refused by np.load(allow_pickle=False), with its own message
    expected = math.prod(shape) * dtype.itemsize
    available = room - f.tell()
    if expected > available:
        raise DataError(
            f"data file {label} is corrupt or truncated: its header declares a {dtype} array of shape "
            f"{tuple(shape)}, {expected:,} bytes, but only {max(available, 0):,} bytes follow it; "
            "re-save it (numpy.save) or restore a good copy"
        )


def _check_npz_headers(path: Path, label: str) -> None:
    """:func:`_check_npy_header` for every array of an ``.npz`` archive, and each member's
    claimed size against the archive's own size."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            bound = (
                info.compress_size
                if info.compress_type == zipfile.ZIP_STORED
                else (_MAX_DEFLATE_RATIO * info.compress_size + (1 << 20))
            )
            if info.compress_size > size or info.file_size > bound:
                raise DataError(
                    f"data file {label} is corrupt: its array {info.filename[:-4]!r} claims {info.file_size:,} "
                    f"bytes, more than its {info.compress_size:,} stored bytes can hold; re-save it or "
                    "restore a good copy"
                )
            with archive.open(info) as member:
                _check_npy_header(member, info.file_size, f"{label} (array {info.filename[:-4]!r})")


def _read_npz(path: Path, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The data array and optional labels of an ``.npz`` archive."""
    _check_npz_headers(path, label)
    with np.load(path, allow_pickle=False) as archive:
        data_key, label_key = _npz_keys(list(archive.files), label)
        x = archive[data_key]
        labels = archive[label_key] if label_key is not None else None
    return x, labels


def _npz_keys(keys: list[str], label: str) -> tuple[str, str | None]:
    """The names of the data array and of the labels (or None) among an archive's arrays."""
    if not keys:
        raise DataError(f"data file {label} is empty: it holds no arrays; save one with {_WRITERS['.npz']}")
    data_key = next((k for k in _NPZ_DATA_KEYS if k in keys), None)
    label_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
    if data_key is None:
        if len(keys) != 1:
            raise DataError(
                f"data file {label} holds arrays {keys} but none is named x, X or data; "
                "save the data with numpy.savez(path, x=X, y=labels)"
            )
        data_key, label_key = keys[0], None
    return data_key, label_key


def _read_csv(path: Path, label: str) -> np.ndarray:
    """A numeric comma-separated file, skipping one header line of column names."""
    first, first_lineno = "", 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                first, first_lineno = text, lineno
                break
    if not first:
        raise DataError(f"data file {label} is empty: it holds 0 rows; {_FIX_ARRAY}")
    # A header is a line of names only; a line mixing numbers and words is a data row
    # with a bad value, and is reported as such by _csv_error.
    has_header = not any(_is_number(s.strip()) for s in first.split(","))
    try:
        # A header-only file is reported below as 0 rows; loadtxt's warning would repeat it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            # skiprows counts every physical line (blank and comment lines included).
            x = np.loadtxt(
                path,
                delimiter=",",
                dtype=np.float64,
                ndmin=2,
                comments="#",
                skiprows=first_lineno if has_header else 0,
            )
    except ValueError:
        raise _csv_error(path, label, skip_first=has_header) from None
    if x.shape[0] == 0:
        raise DataError(f"data file {label} is empty: it holds 0 rows (only a header); {_FIX_ARRAY}")
    return x


def _csv_error(path: Path, label: str, *, skip_first: bool) -> DataError:
    """A DataError naming the first bad line of a CSV that np.loadtxt rejected."""
    n_cols: int | None = None
    header_seen = not skip_first
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            if not header_seen:
                header_seen = True
                continue
            fields = [s.strip() for s in text.split(",")]
            for col, value in enumerate(fields, start=1):
                if not _is_number(value):
                    return DataError(
                        f"data file {label} is not numeric: line {lineno}, column {col} holds "
                        f"{value[:40]!r}; pass comma-separated numbers only "
                        "(one header line of names is allowed)"
                    )
            if n_cols is None:
                n_cols = len(fields)
            elif len(fields) != n_cols:
                return DataError(
                    f"data file {label} has {len(fields)} columns on line {lineno} but {n_cols} before; "
                    "every row must have the same number of comma-separated values"
                )
    return DataError(f"cannot parse data file {label} as CSV; pass comma-separated numbers, one data point per row")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_2d_float32(x: np.ndarray, label: str) -> np.ndarray:
    """Check a loaded array's dtype and rank and cast it to float32 (3-D kept as is)."""
    x = np.asarray(x)
    _check_array_kind(x.shape, x.dtype, label)
    return x.astype(np.float32, copy=False)


def _check_array_kind(shape: tuple[int, ...], dtype: np.dtype, label: str) -> None:
    """Raise unless an array of ``shape`` and ``dtype`` is 2-D or 3-D real rows, at least one."""
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"data file {label} holds {dtype} values, not real numbers; {_FIX_ARRAY}, with a numeric dtype")
    if len(shape) not in (2, 3):
        hint = " (use x.reshape(-1, 1) if each value is one data point)" if len(shape) == 1 else ""
        raise DataError(
            f"data file {label} holds a {len(shape)}-D array of shape {tuple(shape)}; {_FIX_ARRAY}, "
            f"or a 3-D (N, H, W) array of images{hint}"
        )
    if shape[0] == 0:
        raise DataError(f"data file {label} is empty: it holds 0 rows; {_FIX_ARRAY}")
    if math.prod(shape[1:]) == 0:
        raise DataError(f"data file {label} holds {shape[0]} rows of 0 features (shape {tuple(shape)}); {_FIX_ARRAY}")


def _as_labels(labels: np.ndarray, n: int, label: str) -> np.ndarray:
    """Check labels are one integer per row and cast them to int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(
            f"data file {label} holds labels of shape {labels.shape} for {n} rows; "
            f"save one integer label per row, shape ({n},)"
        )
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    # Labels saved as floats (e.g. from pandas) are fine when they are whole numbers.
    whole = np.issubdtype(labels.dtype, np.floating) and bool(np.all(np.isfinite(labels)))
    if whole and bool(np.all(labels == np.round(labels))):
        return labels.astype(np.int64)
    raise DataError(
        f"data file {label} holds {labels.dtype} labels that are not whole numbers; "
        "save integer class labels under 'y', or drop them"
    )


#: The split names an ``.npz`` archive may hold; ``valid``, ``val`` and ``validation``
#: name one split.
SPLIT_NAMES = {"train": ("train",), "val": ("valid", "val", "validation"), "test": ("test",)}

#: One split of a file: rows float32 ``(N, D)``, int64 labels or None, ``(H, W)`` or None.
Split = tuple[np.ndarray, "np.ndarray | None", "tuple[int, int] | None"]


def read_splits(path: str | os.PathLike) -> dict[str, Split] | None:
    """The named splits of an ``.npz`` archive, or ``None`` when it names no split.

    An archive with arrays ``train`` and optionally ``valid`` (or ``val``,
    ``validation``) and ``test``, as standard VAE benchmark sets come (static binarized
    MNIST, Caltech 101 Silhouettes, Frey faces), with optional labels beside each as
    ``train_labels``, ``y_train`` or ``train_y``. 3-D arrays ``(N, H, W)`` are images
    and are flattened.

    Returns:
        ``{"train": (x, labels, image_shape), "val": ..., "test": ...}`` with the splits
        the archive holds (``train`` always), or ``None`` for an archive with none of
        the split names (read it with :func:`load_array`).

    Raises:
        DataError: The archive has a validation or test split but no ``train``, or a
            split's array or labels are malformed. (An unreadable file gives ``None``:
            :func:`load_array` says what is wrong with it.)

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "sets.npz")
        ...     np.savez(path, train=np.zeros((8, 4)), valid=np.ones((2, 4)), test=np.ones((3, 2, 2)))
        ...     splits = read_splits(path)
        >>> {name: x.shape for name, (x, _, _) in splits.items()}
        {'train': (8, 4), 'val': (2, 4), 'test': (3, 4)}
    """
    path = Path(path)
    label = repr(str(path))
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        _check_npz_headers(path, label)
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            found = {split: next((k for k in names if k in keys), None) for split, names in SPLIT_NAMES.items()}
            if not any(found.values()):
                return None
            if found["train"] is None:
                present = sorted(k for k in found.values() if k)
                raise DataError(
                    f"data file {label} holds the split(s) {present} but no 'train' array; save the "
                    "training rows as numpy.savez(path, train=X, valid=V, test=T)"
                )
            splits: dict[str, Split] = {}
            for split, key in found.items():
                if key is None:
                    continue
                where = f"{label} (array {key!r})"
                x = _as_2d_float32(archive[key], where)
                image_shape = None
                if x.ndim == 3:
                    n, h, w = x.shape
                    image_shape = (int(h), int(w))
                    x = x.reshape(n, h * w)  # (N, H*W)
                label_key = next((k for k in (f"{key}_labels", f"y_{key}", f"{key}_y") if k in keys), None)
                labels = None if label_key is None else _as_labels(archive[label_key], x.shape[0], where)
                splits[split] = (x, labels, image_shape)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None  # not a readable archive: load_array says what is wrong with it
    dims = {split: x.shape[1] for split, (x, _, _) in splits.items()}
    if len(set(dims.values())) > 1:
        raise DataError(
            f"data file {label} has splits with different numbers of features {dims}; every split needs the same"
        )
    return splits


# ------------------------------------------------------------------ memory-mapped files


class Mapped(NamedTuple):
    """An array over a mapped file's bytes (read-only, the file's dtype and shape) and the file."""

    array: np.ndarray
    file: MappedFile


def map_idx(path: str | os.PathLike, file: MappedFile | None = None) -> Mapped | None:
    """An uncompressed IDX file memory-mapped in its own dtype (uint8 for MNIST, big-endian
    wider types as stored), or ``None`` for a gzipped one (read it with :func:`read_idx`).

    The header is checked as :func:`read_idx` checks it: a payload shorter or longer
    than the dimensions say is a :class:`~pyro_vae.errors.DataError`, before anything is
    mapped.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "x-idx2-ubyte")
        ...     _ = open(path, "wb").write(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
        ...     mapped = map_idx(path)
        ...     print(mapped.array.tolist(), mapped.array.dtype)
        [[0, 1, 2], [3, 4, 5]] uint8
    """
    p = Path(path)
    if not p.is_file():
        read_idx(p)  # raises the reader's message for a missing path or a folder
    try:
        if _is_gzip(p):
            return None
        size = p.stat().st_size
        with open(p, "rb") as f:
            dims, dtype = _idx_header(f, p, size, compressed=False)
            offset = f.tell()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {str(p)!r}: {exc}; check the file and its permissions") from exc
    expected = math.prod(dims) * dtype.itemsize
    if size - offset != expected:
        raise DataError(
            f"IDX file {str(p)!r} is corrupt or truncated: expected {expected:,} bytes of data "
            f"for shape {dims}, got {size - offset:,}; re-download it"
        )
    file = file or MappedFile(p)
    return Mapped(file.array(offset, dtype, dims), file)


def open_array(path: str | os.PathLike) -> tuple[ArrayRows, np.ndarray | None, tuple[int, int] | None] | None:
    """:func:`load_array` memory-mapped: ``(rows, labels, image_shape)``, or ``None`` when the
    file cannot be mapped (``.csv``, a compressed ``.npz``, a Fortran-ordered array).

    The rows stay in the file's dtype until a minibatch reads them (see
    :class:`~pyro_vae.data.rows.ArrayRows`); labels are read into memory (int64).

    Raises:
        DataError: As :func:`load_array`, including a header that declares more bytes than
            the file holds.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "x.npy")
        ...     np.save(path, np.ones((5, 2, 3), dtype=np.uint8))
        ...     rows, labels, image_shape = open_array(path)
        ...     print(rows.shape, rows.dtype, rows.mapped, image_shape, rows.read([4]).sum())
        (5, 6) uint8 True (2, 3) 6.0
    """
    path = Path(path)
    label, suffix, size = _check_data_path(path)
    if suffix == ".csv":
        return None
    labels = None
    try:
        if suffix == ".npy":
            mapped = _map_npy(path, 0, size, label)
        else:
            with zipfile.ZipFile(path) as archive:
                keys = [n.removesuffix(".npy") for n in archive.namelist()]
                data_key, label_key = _npz_keys(keys, label)
            _check_npz_headers(path, label)
            mapped = _map_npz_member(path, data_key, label)
            if mapped is not None and label_key is not None:
                with np.load(path, allow_pickle=False) as archive:
                    labels = archive[label_key]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _read_error(exc, label, suffix) from exc
    if mapped is None:
        return None
    rows, image_shape = _mapped_rows(mapped, label)
    if labels is not None:
        labels = _as_labels(labels, len(rows), label)
    return rows, labels, image_shape


def open_splits(
    path: str | os.PathLike,
) -> dict[str, tuple[ArrayRows, np.ndarray | None, tuple[int, int] | None]] | None:
    """:func:`read_splits` memory-mapped, or ``None`` when the archive names no split or one
    of its split arrays is compressed (then read it with :func:`read_splits`).

    Raises:
        DataError: As :func:`read_splits`.
    """
    path = Path(path)
    label = repr(str(path))
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        _check_npz_headers(path, label)
        with zipfile.ZipFile(path) as archive:
            keys = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
        found = {split: next((k for k in names if k in keys), None) for split, names in SPLIT_NAMES.items()}
        if not any(found.values()) or found["train"] is None:
            return None  # read_splits says what is missing, or that there are no splits
        file = MappedFile(path)
        splits = {}
        for split, key in found.items():
            if key is None:
                continue
            where = f"{label} (array {key!r})"
            mapped = _map_npz_member(path, key, where, file)
            if mapped is None:
                return None
            rows, image_shape = _mapped_rows(mapped, where)
            label_key = next((k for k in (f"{key}_labels", f"y_{key}", f"{key}_y") if k in keys), None)
            labels = None
            if label_key is not None:
                with np.load(path, allow_pickle=False) as archive:
                    labels = _as_labels(archive[label_key], len(rows), where)
            splits[split] = (rows, labels, image_shape)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None  # not a readable archive: load_array says what is wrong with it
    dims = {split: rows.x_dim for split, (rows, _, _) in splits.items()}
    if len(set(dims.values())) > 1:
        raise DataError(
            f"data file {label} has splits with different numbers of features {dims}; every split needs the same"
        )
    return splits


def check_finite_rows(rows: Rows | np.ndarray, what: str) -> None:
    """:func:`check_finite` for rows that may not fit in memory: block by block.

    Integer and boolean rows are finite by their type and are not read at all.

    Raises:
        DataError: As :func:`check_finite`, counting over every row, with the row number
            of the whole data.
    """
    if isinstance(rows, np.ndarray):
        check_finite(rows, what)
        return
    if not np.issubdtype(rows.dtype, np.floating):
        return
    n_nan = n_bad = 0
    first: int | None = None
    for span, block in rows.chunks():
        bad = ~np.isfinite(block)
        if not bad.any():
            continue
        n_nan += int(np.isnan(block).sum())
        n_bad += int(bad.sum())
        if first is None:
            first = span.start + int(np.flatnonzero(bad.any(axis=1))[0])
    if first is not None:
        raise DataError(
            f"{what} holds {n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} inf), "
            f"first in row {first}; remove or impute those rows before training"
        )


def _map_npy(path: Path, offset: int, end: int, label: str, file: MappedFile | None = None) -> Mapped | None:
    """The ``.npy`` array that starts at ``offset`` of ``path`` (and ends by ``end``), mapped;
    ``None`` for a Fortran-ordered array (rows would be strided: read it into memory)."""
    with open(path, "rb") as f:
        f.seek(offset)
        _check_npy_header(f, end, label)
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None  # version 3 exists for structured dtypes with unicode names: not data rows
        start = f.tell()
    if dtype.hasobject:
        raise _read_error(ValueError("Object arrays cannot be loaded when allow_pickle=False"), label, ".npy")
    _check_array_kind(tuple(shape), dtype, label)
    if fortran and len(shape) > 1:
        return None
    file = file or MappedFile(path)
    return Mapped(file.array(start, dtype, tuple(shape)), file)


def _map_npz_member(path: Path, key: str, label: str, file: MappedFile | None = None) -> Mapped | None:
    """Array ``key`` of an ``.npz`` archive mapped, or ``None`` if it is compressed or encrypted."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local header: signature ... name length, extra length
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"data file {label} is corrupt: a member header is damaged; re-save it or restore a good copy")
    name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    return _map_npy(path, start, start + info.file_size, label, file)


def _mapped_rows(mapped: Mapped, label: str, scale: float | None = None) -> tuple[ArrayRows, tuple[int, int] | None]:
    """``(N, D)`` rows of a mapped 2-D or 3-D array (images flattened, nothing copied)."""
    array = mapped.array
    _check_array_kind(array.shape, array.dtype, label)
    image_shape = None
    if array.ndim == 3:
        n, h, w = array.shape
        image_shape = (int(h), int(w))
        array = array.reshape(n, h * w)  # (N, H*W), a view of the C-ordered file
    return ArrayRows(array, scale=scale, file=mapped.file), image_shape
