"""Data loaders: the built-in digits, MNIST-style IDX files, and ``.npy``/``.npz``/``.csv``.

Every loader returns float32 arrays whose rows are data points (images flattened) and
int64 labels. Nothing here downloads or writes anything: the digits ship with
scikit-learn, and every other source is a file the user already has. Every problem a user
can cause with their data raises :class:`~pyro_vae.errors.DataError` with one line that
names the problem and the fix.

Example:
    >>> ds = load_dataset("digits", val_fraction=0.1, seed=0)
    >>> ds.train.shape, ds.val.shape, ds.x_dim, ds.image_shape
    ((1617, 64), (180, 64), 64, (8, 8))
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

__all__ = [
    "Dataset",
    "DATA_DIR_ENV",
    "BINARIZE_MODES",
    "MNIST_FILES",
    "ARRAY_SUFFIXES",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "load_array",
    "split_train_val",
    "check_finite",
    "binarize",
    "resolve_binarize",
    "default_data_dir",
]

#: Environment variable naming the folder of the MNIST IDX files.
DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"

#: Accepted values of ``binarize``; ``auto`` is resolved by :func:`resolve_binarize`.
BINARIZE_MODES = ("auto", "dynamic", "threshold", "none")

#: IDX file names of MNIST (and Fashion-MNIST, which uses the same names), each of
#: which may also carry a ``.gz`` suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

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
_MNIST_LISTING = ", ".join(f"{name}[.gz]" for name in MNIST_FILES.values())


# Arrays make the generated __eq__ ambiguous and the generated __repr__ unreadable, so
# both are replaced: identity equality and a repr that shows shapes only.
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A data set split into training, validation and (optionally) test rows.

    Attributes:
        name: ``"digits"``, ``"mnist"`` or the path of the file the data came from.
        train: Training rows, float32, shape ``(N_train, D)``.
        val: Validation rows held out from the training rows, float32, ``(N_val, D)``.
        test: Test rows, float32 ``(N_test, D)``, or ``None`` when the source has no
            test set (digits and plain arrays).
        train_labels: int64 ``(N_train,)`` or ``None``.
        val_labels: int64 ``(N_val,)`` or ``None``.
        test_labels: int64 ``(N_test,)`` or ``None``.
        image_shape: ``(H, W)`` with ``H * W == D`` for image data, else ``None``.

    Example:
        >>> x = np.zeros((10, 4), dtype=np.float32)
        >>> Dataset("toy", x[:8], x[8:], None, None, None, None, None).x_dim
        4
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    train_labels: np.ndarray | None
    val_labels: np.ndarray | None
    test_labels: np.ndarray | None
    image_shape: tuple[int, int] | None

    @property
    def x_dim(self) -> int:
        """Number of features of one data point (``D``)."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        test = None if self.test is None else self.test.shape
        return (
            f"Dataset(name={self.name!r}, train={self.train.shape}, val={self.val.shape}, "
            f"test={test}, labels={self.train_labels is not None}, image_shape={self.image_shape})"
        )


def default_data_dir() -> str | None:
    """The folder named by the ``PYRO_VAE_DATA_DIR`` environment variable, if set.

    Returns:
        The variable's value, or ``None`` when it is unset or empty.
    """
    # An exported-but-empty variable would otherwise resolve to the current directory.
    return os.environ.get(DATA_DIR_ENV) or None


def load_dataset(
    data: str = "digits",
    data_dir: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Load a data set by name or path and hold out a validation split.

    Args:
        data: ``"digits"`` (scikit-learn's 8x8 digits, offline), ``"mnist"`` (the four
            IDX files in ``data_dir``; Fashion-MNIST works too) or the path of a
            ``.npy``, ``.npz`` or ``.csv`` file (see :func:`load_array`).
        data_dir: Folder of the IDX files for ``data="mnist"``; ``None`` falls back to
            :func:`default_data_dir`. Ignored for other sources.
        val_fraction: Fraction of the training rows held out for validation, in (0, 1).
        seed: Seed of the validation split (see :func:`split_train_val`).

    Returns:
        A :class:`Dataset`. Every split has been checked for NaN and inf.

    Raises:
        DataError: The data is missing, corrupt, the wrong shape, non-finite, or ``data``
            is neither a known name nor a supported file.
        ConfigError: ``val_fraction`` is outside (0, 1).

    Example:
        >>> ds = load_dataset("digits", seed=1)
        >>> ds.name, ds.test is None, int(ds.train_labels.max())
        ('digits', True, 9)
    """
    test: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    if data == "digits":
        x, labels = load_digits()
        name, image_shape = "digits", (8, 8)
    elif data == "mnist":
        x, labels, test, test_labels, image_shape = _load_mnist_with_shape(data_dir)
        name = "mnist"
    else:
        path = Path(data)
        if path.suffix.lower() not in ARRAY_SUFFIXES:
            raise DataError(
                f"unknown data {data!r}: pass 'digits' (built in), 'mnist' (with --data-dir DIR) "
                f"or the path of a {', '.join(ARRAY_SUFFIXES)} file"
            )
        x, labels, image_shape = _load_array_with_shape(path)
        name = str(data)

    # Checked on the whole source rather than per split so that the row index in the
    # message is the row of the user's file, not of a shuffled split.
    check_finite(x, f"data {name!r} (training rows)")
    if test is not None:
        check_finite(test, f"data {name!r} (test rows)")
    train, val, train_labels, val_labels = split_train_val(x, labels, val_fraction, seed)
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        train_labels=train_labels,
        val_labels=val_labels,
        test_labels=test_labels,
        image_shape=image_shape,
    )


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits, scaled to [0, 1].

    Returns:
        ``(x, labels)``: x float32 ``(1797, 64)`` (pixel counts 0..16 divided by 16),
        labels int64 ``(1797,)`` in 0..9.

    Example:
        >>> x, y = load_digits()
        >>> x.shape, x.dtype, float(x.max()), y.dtype
        ((1797, 64), dtype('float32'), 1.0, dtype('int64'))
    """
    # Imported here: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)  # (1797, 64)
    labels = np.asarray(bunch.target, dtype=np.int64)  # (1797,)
    return x, labels


def load_mnist(
    data_dir: str | os.PathLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read MNIST-style IDX files (``train-*`` and ``t10k-*``, plain or ``.gz``).

    Args:
        data_dir: Folder holding the four files named in :data:`MNIST_FILES`; ``None``
            falls back to :func:`default_data_dir`.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: images float32 ``(N, H*W)`` scaled by
        1/255 to [0, 1] (``(60000, 784)`` for MNIST), labels int64 ``(N,)``.

    Raises:
        DataError: No folder was given, the folder or a file is missing, a file is
            corrupt, or images and labels disagree in count or shape.
    """
    train_x, train_y, test_x, test_y, _ = _load_mnist_with_shape(data_dir)
    return train_x, train_y, test_x, test_y


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
    raw = _read_bytes(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        head = raw[:4].hex(" ") or "nothing"
        raise DataError(
            f"{str(p)!r} is not an IDX file: its first bytes are {head}, expected 00 00 <type> <ndim>; "
            "check the path or re-download the file"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_len:
        raise DataError(
            f"IDX file {str(p)!r} is corrupt or truncated: its header declares {ndim} dimensions "
            f"but the file holds {len(raw)} bytes; re-download it"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    got = len(raw) - header_len
    if got != expected:
        raise DataError(
            f"IDX file {str(p)!r} is corrupt or truncated: expected {expected} bytes of data "
            f"for shape {dims}, got {got}; re-download it"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
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


def split_train_val(
    x: np.ndarray,
    labels: np.ndarray | None,
    val_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Hold out a reproducible random subset of the rows for validation.

    The held-out rows are ``np.random.default_rng(seed).permutation(N)[:n_val]`` with
    ``n_val = max(1, round(val_fraction * N))``; both splits keep the original row order.

    Args:
        x: Data, ``(N, D)``.
        labels: ``(N,)`` labels or ``None``.
        val_fraction: Fraction of the rows to hold out, in (0, 1).
        seed: Seed of the permutation; the same seed gives the same split.

    Returns:
        ``(train, val, train_labels, val_labels)``, shapes ``(N - n_val, D)``,
        ``(n_val, D)``, and ``(N - n_val,)``, ``(n_val,)`` or ``None``.

    Raises:
        ConfigError: ``val_fraction`` is outside (0, 1).
        DataError: Fewer than two rows, so no training row would be left, or the labels
            do not match the rows.

    Example:
        >>> x = np.arange(20, dtype=np.float32).reshape(10, 2)
        >>> train, val, _, _ = split_train_val(x, None, 0.2, seed=0)
        >>> train.shape, val.shape
        ((8, 2), (2, 2))
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}; 0.1 is a good default")
    n = int(x.shape[0])
    if labels is not None and labels.shape[0] != n:
        raise DataError(
            f"got {labels.shape[0]} labels for {n} rows; pass one label per data point or no labels"
        )
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise DataError(
            f"the data holds {n} row(s) and --val-fraction {val_fraction} holds out {n_val}, "
            "leaving no training rows; pass at least 2 data points or a smaller --val-fraction"
        )
    perm = np.random.default_rng(seed).permutation(n)
    # Sorting keeps file order inside each split: the split stays a pure function of
    # the seed, and the training loop does its own shuffling.
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])
    train_labels = None if labels is None else labels[train_idx]
    val_labels = None if labels is None else labels[val_idx]
    return x[train_idx], x[val_idx], train_labels, val_labels


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


def binarize(
    x: torch.Tensor,
    mode: str,
    *,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn grey values in [0, 1] into 0/1 values for a Bernoulli likelihood.

    Args:
        x: Data with values in [0, 1] for ``dynamic``; any shape.
        mode: ``dynamic`` (a fresh Bernoulli draw with probability ``x`` per value, done
            each epoch), ``threshold`` (``x > threshold``) or ``none`` (``x`` unchanged).
            Resolve ``auto`` first with :func:`resolve_binarize`.
        threshold: Cut-off for ``threshold`` mode.
        generator: Random generator for ``dynamic`` mode, for reproducible draws.

    Returns:
        A tensor of ``x``'s shape and dtype.

    Raises:
        DataError: ``mode`` is unknown, or ``dynamic`` mode got values outside [0, 1].

    Example:
        >>> binarize(torch.tensor([0.2, 0.5, 0.9]), "threshold")
        tensor([0., 0., 1.])
    """
    if mode == "none":
        return x
    if mode == "threshold":
        return (x > threshold).to(x.dtype)
    if mode == "dynamic":
        # NaN fails both comparisons, so it is caught here too.
        if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
            raise DataError(
                f"--binarize dynamic needs values in [0, 1], got min {x.min().item():.4g} and max "
                f"{x.max().item():.4g}; rescale the data to [0, 1], or pass --likelihood normal "
                "with --binarize none"
            )
        return torch.bernoulli(x, generator=generator)
    raise DataError(
        f"unknown binarize mode {mode!r}; choose one of dynamic, threshold, none "
        "(resolve 'auto' with resolve_binarize first)"
    )


def resolve_binarize(mode: str, needs_binary: bool) -> str:
    """Resolve ``auto`` to the binarization that suits the likelihood.

    Args:
        mode: One of ``auto``, ``dynamic``, ``threshold``, ``none``.
        needs_binary: Whether the likelihood's support is {0, 1}
            (``Likelihood.needs_binary``).

    Returns:
        ``dynamic`` for ``auto`` with a likelihood that needs 0/1 data (dynamic
        binarization, as in the published MNIST benchmarks), ``none`` for ``auto``
        otherwise, else ``mode`` unchanged.

    Raises:
        DataError: ``mode`` is not one of the four choices.

    Example:
        >>> resolve_binarize("auto", True), resolve_binarize("auto", False)
        ('dynamic', 'none')
    """
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown --binarize {mode!r}; choose one of {', '.join(BINARIZE_MODES)}")
    if mode == "auto":
        return "dynamic" if needs_binary else "none"
    return mode


# ---------------------------------------------------------------------------- helpers


def _mnist_folder(data_dir: str | os.PathLike | None) -> Path:
    """The MNIST folder: ``data_dir``, else the environment variable, checked to exist."""
    chosen = data_dir if data_dir is not None else default_data_dir()
    if chosen is None:
        raise DataError(
            f"--data mnist needs the folder of the IDX files: pass --data-dir DIR or set {DATA_DIR_ENV}"
        )
    folder = Path(chosen)
    if not folder.is_dir():
        raise DataError(
            f"MNIST folder {str(folder)!r} does not exist or is not a folder; pass --data-dir DIR "
            f"(or set {DATA_DIR_ENV}) naming a folder that holds {_MNIST_LISTING}"
        )
    return folder


def _load_mnist_with_shape(
    data_dir: str | os.PathLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`load_mnist` plus the images' ``(H, W)``."""
    folder = _mnist_folder(data_dir)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in MNIST_FILES.items()}
    out: list[np.ndarray] = []
    shapes: list[tuple[int, ...]] = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_name = MNIST_FILES[f"{split}_images"]
        labels_name = MNIST_FILES[f"{split}_labels"]
        if images.ndim != 3:
            raise DataError(
                f"{images_name} in {str(folder)!r} holds a {images.ndim}-D array of shape "
                f"{images.shape}, expected (N, H, W) images; check the file names are not swapped "
                "or re-download it"
            )
        if images.dtype != np.uint8:
            raise DataError(
                f"{images_name} in {str(folder)!r} holds {images.dtype} pixels, expected uint8 "
                "(0..255); convert the images to a .npy file and pass its path with --data instead"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{labels_name} in {str(folder)!r} holds a {labels.ndim}-D {labels.dtype} array, "
                "expected 1-D integer labels; check the file names are not swapped or re-download it"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{images_name} holds {images.shape[0]} images but {labels_name} holds "
                f"{labels.shape[0]} labels in {str(folder)!r}; the files come from different "
                "releases or one is damaged: re-download both"
            )
        if images.shape[0] == 0:
            raise DataError(f"{images_name} in {str(folder)!r} holds 0 images; re-download it")
        shapes.append(images.shape[1:])
        n = images.shape[0]
        out.append((images.reshape(n, -1).astype(np.float32) / np.float32(255.0)))  # (N, H*W)
        out.append(labels.astype(np.int64))  # (N,)
    if shapes[0] != shapes[1]:
        raise DataError(
            f"training images are {shapes[0]} but test images are {shapes[1]} in {str(folder)!r}; "
            "the folder mixes two data sets: keep one data set per folder"
        )
    return out[0], out[1], out[2], out[3], (int(shapes[0][0]), int(shapes[0][1]))


def _find_idx(folder: Path, stem: str) -> Path:
    """The path of ``stem`` or ``stem.gz`` in ``folder``, preferring the plain file."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"MNIST file {str(folder / stem)!r} not found (nor with .gz); the folder must hold "
        f"{_MNIST_LISTING}: pass --data-dir DIR naming the folder that holds them"
    )


def _is_gzip(path: Path) -> bool:
    """Whether ``path`` is gzip-compressed: by suffix, or by its magic bytes."""
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_bytes(path: Path) -> bytes:
    """All bytes of an IDX file, decompressed if gzipped, with readable errors."""
    if not path.exists():
        raise DataError(
            f"IDX file {str(path)!r} does not exist; check the path "
            f"(an MNIST folder holds {_MNIST_LISTING})"
        )
    if not path.is_file():
        raise DataError(f"IDX path {str(path)!r} is not a file; pass the path of an IDX file")
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
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
            "or pass --data digits or --data mnist"
        )
    if not path.exists():
        raise DataError(f"data file {label} does not exist; check the path passed to --data")
    if not path.is_file():
        raise DataError(f"data path {label} is not a file; pass the path of a {suffix} file")
    if path.stat().st_size == 0:
        raise DataError(f"data file {label} is empty (0 bytes); {_FIX_ARRAY}")

    if suffix in _MAGIC:
        with open(path, "rb") as f:
            head = f.read(6)
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


def _read_npz(path: Path, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The data array and optional labels of an ``.npz`` archive."""
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
