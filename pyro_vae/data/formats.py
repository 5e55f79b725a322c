"""Reading data files: IDX (the MNIST format, plain or gzipped), ``.npy``, ``.npz``, ``.csv``.

Every reader returns float32 rows (images flattened) and int64 labels, and turns every
problem a user can cause with a file into one :class:`~pyro_vae.errors.DataError` line
that names the problem and the fix. Nothing is unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataError

__all__ = ["ARRAY_SUFFIXES", "MNIST_FILES", "SPLIT_NAMES", "read_idx", "load_array", "read_splits", "check_finite"]

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
            f"IDX file {str(path)!r} does not exist; check the path "
            f"(an MNIST folder holds {_MNIST_LISTING})"
        )
    if not path.is_file():
        raise DataError(f"IDX path {str(path)!r} is not a file; pass the path of an IDX file")
    try:
        size = path.stat().st_size
        compressed = _is_gzip(path)
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
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
            payload = f.read(expected + 1)
        return payload, dims, dtype
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        raise DataError(
            f"gzip file {str(path)!r} is corrupt or truncated ({kind}: {exc}); re-download it"
        ) from exc
    except OSError as exc:
        raise DataError(
            f"cannot read IDX file {str(path)!r}: {exc}; check the file and its permissions"
        ) from exc


def _load_array_with_shape(
    path: Path,
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int] | None]:
    """:func:`load_array` plus the ``(H, W)`` of a 3-D array (``None`` for 2-D)."""
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
        raise DataError(
            f"cannot read data file {label}: {exc.strerror or exc}; check the file's permissions"
        ) from None
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
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            raise DataError(
                f"data file {label} holds Python objects, which are never unpickled here for "
                f"safety; re-save it as a numeric array with {_WRITERS[suffix]}"
            ) from exc
        raise DataError(
            f"cannot read data file {label} as {suffix} ({_first_line(exc)}); "
            f"re-save it with {_WRITERS[suffix]}"
        ) from exc

    x = _as_2d_float32(x, label)
    image_shape = None
    if x.ndim == 3:
        n, h, w = x.shape
        image_shape = (int(h), int(w))
        x = x.reshape(n, h * w)  # (N, H*W)
    if labels is not None:
        labels = _as_labels(labels, x.shape[0], label)
    return x, labels, image_shape


def _check_npy_header(f: BinaryIO, room: int, label: str) -> None:
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
            bound = info.compress_size if info.compress_type == zipfile.ZIP_STORED else (
                _MAX_DEFLATE_RATIO * info.compress_size + (1 << 20)
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
        keys = list(archive.files)
        if not keys:
            raise DataError(
                f"data file {label} is empty: it holds no arrays; save one with {_WRITERS['.npz']}"
            )
        data_key = next((k for k in _NPZ_DATA_KEYS if k in keys), None)
        label_key = next((k for k in _NPZ_LABEL_KEYS if k in keys), None)
        if data_key is None:
            if len(keys) != 1:
                raise DataError(
                    f"data file {label} holds arrays {keys} but none is named x, X or data; "
                    "save the data with numpy.savez(path, x=X, y=labels)"
                )
            data_key, label_key = keys[0], None
        x = archive[data_key]
        labels = archive[label_key] if label_key is not None else None
    return x, labels


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
                path, delimiter=",", dtype=np.float64, ndmin=2, comments="#",
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
    return DataError(
        f"cannot parse data file {label} as CSV; pass comma-separated numbers, one data point per row"
    )


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
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(
            f"data file {label} holds {x.dtype} values, not real numbers; "
            f"{_FIX_ARRAY}, with a numeric dtype"
        )
    if x.ndim not in (2, 3):
        hint = " (use x.reshape(-1, 1) if each value is one data point)" if x.ndim == 1 else ""
        raise DataError(
            f"data file {label} holds a {x.ndim}-D array of shape {x.shape}; {_FIX_ARRAY}, "
            f"or a 3-D (N, H, W) array of images{hint}"
        )
    if x.shape[0] == 0:
        raise DataError(f"data file {label} is empty: it holds 0 rows; {_FIX_ARRAY}")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(
            f"data file {label} holds {x.shape[0]} rows of 0 features (shape {x.shape}); {_FIX_ARRAY}"
        )
    return x.astype(np.float32, copy=False)


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
        raise DataError(f"data file {label} has splits with different numbers of features {dims}; every split needs the same")
    return splits
