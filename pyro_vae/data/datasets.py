"""Data sets: the built-in digits, MNIST-style IDX folders, and arrays in files, split.

Every loader returns float32 arrays whose rows are data points (images flattened) and
int64 labels. Nothing here downloads or writes anything: the digits ship with
scikit-learn, and every other source is a file the user already has. Every problem a user
can cause with their data raises :class:`~pyro_vae.errors.DataError` with one line that
names the problem and the fix.

Data larger than memory: with ``storage="mapped"`` (or ``"auto"``, for a source whose rows
would take more than :data:`MAP_ABOVE_BYTES` as float32) the splits are
:class:`~pyro_vae.data.rows.ArrayRows` over the memory-mapped file, in its own dtype, and
the validation hold-out is a list of row numbers, not a copy.

Example:
    >>> ds = load_dataset("digits", val_fraction=0.1, seed=0)
    >>> ds.train.shape, ds.val.shape, ds.x_dim, ds.image_shape
    ((1617, 64), (180, 64), 64, (8, 8))
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, DataError
from .formats import (
    _MNIST_LISTING,
    ARRAY_SUFFIXES,
    MNIST_FILES,
    SPLIT_NAMES,
    _load_array_with_shape,
    _mapped_rows,
    check_finite_rows,
    map_idx,
    open_array,
    open_splits,
    read_idx,
    read_splits,
)
from .rows import Rows

__all__ = [
    "Dataset",
    "DATA_DIR_ENV",
    "STORAGE_CHOICES",
    "MAP_ABOVE_BYTES",
    "BUILT_IN_DATA",
    "MNIST_FILES",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "split_train_val",
    "resolve_image_shape",
    "default_data_dir",
]

#: Data sets named rather than read from a path.
BUILT_IN_DATA = ("digits", "mnist")

#: Environment variable naming the folder of the MNIST IDX files.
DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"

#: How :func:`load_dataset` holds the rows: ``memory`` (float32 arrays), ``mapped``
#: (memory-mapped in the file's dtype, read a minibatch at a time) or ``auto``.
STORAGE_CHOICES = ("auto", "memory", "mapped")

#: ``storage="auto"`` maps a source whose rows would take more than this many bytes as
#: float32 arrays (1 GiB: 342,000 MNIST rows), and holds smaller ones in memory. Held in
#: memory, a small set costs little, is read once, and a GPU run keeps it whole on the
#: device (no gather and copy per step); mapped, memory stays flat whatever the size. On
#: CPU both train at the same speed (``benchmarks/results/data_scale.md``: mapped 1.09x
#: in-memory at 10^5 rows), while in memory 10^6 rows already peak at 6.3 GB (0.9 GB
#: mapped) and take 50 s to the first step (5 s mapped): the threshold is about memory.
MAP_ABOVE_BYTES = 1 << 30

#: Rows a split may be: a float32 array in memory, or rows read from a mapped file.
Split = np.ndarray | Rows


# Arrays make the generated __eq__ ambiguous and the generated __repr__ unreadable, so
# both are replaced: identity equality and a repr that shows shapes only.
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A data set split into training, validation and (optionally) test rows.

    Attributes:
        name: ``"digits"``, ``"mnist"`` or the path of the file the data came from.
        train: Training rows, float32, shape ``(N_train, D)``: an array in memory, or
            :class:`~pyro_vae.data.rows.Rows` read from a mapped file (``storage``).
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
    train: Split
    val: Split
    test: Split | None
    train_labels: np.ndarray | None
    val_labels: np.ndarray | None
    test_labels: np.ndarray | None
    image_shape: tuple[int, int] | None

    @property
    def x_dim(self) -> int:
        """Number of features of one data point (``D``)."""
        return int(self.train.shape[1])

    @property
    def mapped(self) -> bool:
        """Whether the rows are read from memory-mapped files (``storage``)."""
        return isinstance(self.train, Rows) and self.train.mapped

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
    val_data: str | os.PathLike | None = None,
    test_data: str | os.PathLike | None = None,
    image_shape: tuple[int, int] | None = None,
    storage: str = "auto",
) -> Dataset:
    """Load a data set by name or path, with its validation and test splits.

    The splits come, in this order of preference, from the source itself (an ``.npz``
    archive with named splits ``train``/``valid``/``test``, see
    :func:`~pyro_vae.data.formats.read_splits`; MNIST's ``t10k`` files are its test
    set), from separate files (``val_data``, ``test_data``), and for validation only
    from a reproducible random hold-out of ``val_fraction`` of the training rows.

    Args:
        data: ``"digits"`` (scikit-learn's 8x8 digits, offline), ``"mnist"`` (the four
            IDX files in ``data_dir``; Fashion-MNIST works too) or the path of a
            ``.npy``, ``.npz`` or ``.csv`` file (see :func:`load_array`).
        data_dir: Folder of the IDX files for ``data="mnist"``; ``None`` falls back to
            :func:`default_data_dir`. Ignored for other sources.
        val_fraction: Fraction of the training rows held out for validation, in (0, 1),
            when the source has no validation split.
        seed: Seed of that hold-out (see :func:`split_train_val`).
        val_data: A file of validation rows (overrides the source's).
        test_data: A file of test rows (overrides the source's).
        image_shape: ``(H, W)`` of image rows; default from 3-D arrays, else a square
            when the number of features is a perfect square (784 -> 28 x 28).
        storage: ``memory``: float32 arrays, as read. ``mapped``: the files memory-mapped
            in their own dtype (``.npy``, uncompressed ``.npz``, uncompressed IDX; the
            splits are :class:`~pyro_vae.data.rows.Rows`), each minibatch read and
            converted on its own. ``auto`` (default): mapped when the source can be and
            its rows would take more than :data:`MAP_ABOVE_BYTES` as float32, else in
            memory. With a mapped source, ``val_data`` and ``test_data`` are mapped too
            where they can be.

    Returns:
        A :class:`Dataset`. Every split has been checked for NaN and inf and for the
        training rows' number of features.

    Raises:
        DataError: The data is missing, corrupt, the wrong shape, non-finite, or ``data``
            is neither a known name nor a supported file; or ``storage`` is ``mapped``
            and the source cannot be mapped.
        ConfigError: ``val_fraction`` is outside (0, 1), ``image_shape`` does not
            match the number of features, or ``storage`` is unknown.

    Example:
        >>> ds = load_dataset("digits", seed=1)
        >>> ds.name, ds.test is None, int(ds.train_labels.max())
        ('digits', True, 9)
    """
    if storage not in STORAGE_CHOICES:
        raise ConfigError(f"`storage` must be one of {', '.join(STORAGE_CHOICES)}, got {storage!r}")
    if data not in BUILT_IN_DATA and Path(data).suffix.lower() not in ARRAY_SUFFIXES:
        raise DataError(
            f"unknown data {data!r}: pass 'digits' (built in), 'mnist' (with `data_dir` DIR) "
            f"or the path of a {', '.join(ARRAY_SUFFIXES)} file"
        )
    source = None if storage == "memory" else _open_mapped(data, data_dir)
    if source is None and storage == "mapped":
        raise DataError(
            f"`storage` mapped cannot map data {data!r}: only .npy files, uncompressed .npz archives "
            "(numpy.savez) and uncompressed IDX files can be mapped; convert it with numpy.save(path, X), "
            "or pass `storage` auto or memory"
        )
    if source is not None and storage == "auto" and source.float32_bytes() <= MAP_ABOVE_BYTES:
        source = None  # small enough to hold in memory, where it is read once
    if source is None:
        source = _read_in_memory(data, data_dir)
    name = "digits" if data == "digits" else "mnist" if data == "mnist" else str(data)
    x, labels, val, val_labels, test, test_labels, shape_seen = source
    mapped = isinstance(x, Rows)
    if val_data is not None:
        val, val_labels, _ = _open_file(Path(val_data), mapped)
    if test_data is not None:
        test, test_labels, _ = _open_file(Path(test_data), mapped)

    # Checked on each source rather than per split so that the row index in the message
    # is the row of the user's file, not of a shuffled split.
    check_finite_rows(x, f"data {name!r} (training rows)")
    for what, rows in (("validation", val), ("test", test)):
        if rows is None:
            continue
        check_finite_rows(rows, f"data {name!r} ({what} rows)")
        if rows.shape[1] != x.shape[1]:
            raise DataError(
                f"the {what} rows of {name!r} have {rows.shape[1]} features but the training rows "
                f"{x.shape[1]}; every split needs the same features"
            )
    if val is None:
        train, val, train_labels, val_labels = split_train_val(x, labels, val_fraction, seed)
    else:
        train, train_labels = x, labels
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        train_labels=train_labels,
        val_labels=val_labels,
        test_labels=test_labels,
        image_shape=resolve_image_shape(x.shape[1], image_shape or shape_seen),
    )


class _Source(NamedTuple):
    """What a data source holds before the validation split: rows (arrays or mapped), labels, image shape."""

    x: Split
    labels: np.ndarray | None
    val: Split | None
    val_labels: np.ndarray | None
    test: Split | None
    test_labels: np.ndarray | None
    image_shape: tuple[int, int] | None

    def float32_bytes(self) -> int:
        """What the rows of every split would take as float32 arrays."""
        return sum(4 * rows.shape[0] * rows.shape[1] for rows in (self.x, self.val, self.test) if rows is not None)


def _read_in_memory(data: str, data_dir: str | os.PathLike | None) -> _Source:
    """A source read whole into float32 arrays."""
    labels: np.ndarray | None
    test: np.ndarray | None
    test_labels: np.ndarray | None
    shape: tuple[int, int] | None
    if data == "digits":
        x, labels = load_digits()
        return _Source(x, labels, None, None, None, None, (8, 8))
    if data == "mnist":
        x, labels, test, test_labels, shape = _load_mnist_with_shape(data_dir)
        return _Source(x, labels, None, None, test, test_labels, shape)
    path = Path(data)
    splits = read_splits(path)
    if splits is None:
        x, labels, shape = _load_array_with_shape(path)
        return _Source(x, labels, None, None, None, None, shape)
    x, labels, shape = splits["train"]
    val, val_labels = splits["val"][:2] if "val" in splits else (None, None)
    test, test_labels = splits["test"][:2] if "test" in splits else (None, None)
    return _Source(x, labels, val, val_labels, test, test_labels, shape)


def _open_mapped(data: str, data_dir: str | os.PathLike | None) -> _Source | None:
    """A source memory-mapped, or None when it cannot be (digits, CSV, gzip, compressed archives)."""
    if data == "digits":
        return None
    if data == "mnist":
        return _map_mnist(data_dir)
    path = Path(data)
    if path.suffix.lower() == ".npz" and path.is_file() and _names_splits(path):
        splits = open_splits(path)
        if splits is None:
            return None
        x, labels, shape = splits["train"]
        val, val_labels, _ = splits.get("val", (None, None, None))
        test, test_labels, _ = splits.get("test", (None, None, None))
        return _Source(x, labels, val, val_labels, test, test_labels, shape)
    opened = open_array(path)
    if opened is None:
        return None
    x, labels, shape = opened
    return _Source(x, labels, None, None, None, None, shape)


def _names_splits(path: Path) -> bool:
    """Whether an ``.npz`` archive holds arrays named as splits (train, valid, test)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            keys = {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile):
        return False  # read_splits / load_array say what is wrong with it
    return any(k in keys for names in SPLIT_NAMES.values() for k in names)


def _open_file(path: Path, mapped: bool) -> tuple[Split, np.ndarray | None, tuple[int, int] | None]:
    """A separate split file (``val_data``, ``test_data``): mapped beside a mapped source when it can be."""
    if mapped:
        opened = open_array(path)
        if opened is not None:
            return opened
    return _load_array_with_shape(path)


def resolve_image_shape(x_dim: int, image_shape: tuple[int, ...] | None) -> tuple[int, int] | None:
    """The ``(H, W)`` in which rows of ``x_dim`` features are drawn, or ``None``.

    A given shape must hold ``x_dim`` pixels; without one, a perfect square number of
    features is a square image (784 -> 28 x 28, 64 -> 8 x 8).

    Raises:
        ConfigError: ``image_shape`` is not two positive sizes whose product is ``x_dim``.

    Example:
        >>> resolve_image_shape(784, None), resolve_image_shape(560, (28, 20)), resolve_image_shape(10, None)
        ((28, 28), (28, 20), None)
    """
    if image_shape:
        shape = tuple(int(v) for v in image_shape)
        if len(shape) != 2 or min(shape) < 1 or shape[0] * shape[1] != x_dim:
            raise ConfigError(
                f"`image_shape` {list(image_shape)} does not fit rows of {x_dim} features: pass two sizes "
                f"H W with H * W = {x_dim}"
            )
        return (shape[0], shape[1])
    side = math.isqrt(x_dim)
    return (side, side) if side > 1 and side * side == x_dim else None


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


def split_train_val(
    x: Split,
    labels: np.ndarray | None,
    val_fraction: float,
    seed: int,
) -> tuple[Split, Split, np.ndarray | None, np.ndarray | None]:
    """Hold out a reproducible random subset of the rows for validation.

    The held-out rows are ``np.random.default_rng(seed).permutation(N)[:n_val]`` with
    ``n_val = max(1, round(val_fraction * N))``; both splits keep the original row order.
    Mapped rows (:class:`~pyro_vae.data.rows.Rows`) are split into two views of the same
    file, the same rows an array would give; nothing is read.

    Args:
        x: Data, ``(N, D)``: an array or rows.
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
        raise ConfigError(f"`val_fraction` must be in (0, 1), got {val_fraction}; 0.1 is a good default")
    n = int(x.shape[0])
    if labels is not None and labels.shape[0] != n:
        raise DataError(f"got {labels.shape[0]} labels for {n} rows; pass one label per data point or no labels")
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise DataError(
            f"the data holds {n} row(s) and `val_fraction` {val_fraction} holds out {n_val}, "
            "leaving no training rows; pass at least 2 data points or a smaller `val_fraction`"
        )
    perm = np.random.default_rng(seed).permutation(n)
    # Sorting keeps file order inside each split: the split stays a pure function of
    # the seed, and the training loop does its own shuffling.
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])
    train_labels = None if labels is None else labels[train_idx]
    val_labels = None if labels is None else labels[val_idx]
    if isinstance(x, Rows):
        return x.select(train_idx), x.select(val_idx), train_labels, val_labels
    return x[train_idx], x[val_idx], train_labels, val_labels


def _mnist_folder(data_dir: str | os.PathLike | None) -> Path:
    """The MNIST folder: ``data_dir``, else the environment variable, checked to exist."""
    chosen = data_dir if data_dir is not None else default_data_dir()
    if chosen is None:
        raise DataError(f"`data` mnist needs the folder of the IDX files: pass `data_dir` DIR or set {DATA_DIR_ENV}")
    folder = Path(chosen)
    if not folder.is_dir():
        raise DataError(
            f"MNIST folder {str(folder)!r} does not exist or is not a folder; pass `data_dir` DIR "
            f"(or set {DATA_DIR_ENV}) naming a folder that holds {_MNIST_LISTING}"
        )
    return folder


def _load_mnist_with_shape(
    data_dir: str | os.PathLike | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`load_mnist` plus the images' ``(H, W)``."""
    folder = _mnist_folder(data_dir)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in MNIST_FILES.items()}
    shape = _check_mnist(folder, arrays)
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        n = images.shape[0]
        out.append((images.reshape(n, -1).astype(np.float32) / np.float32(255.0)))  # (N, H*W)
        out.append(labels.astype(np.int64))  # (N,)
    return out[0], out[1], out[2], out[3], shape


def _map_mnist(data_dir: str | os.PathLike | None) -> _Source | None:
    """MNIST's IDX images memory-mapped as uint8 (scaled by 1/255 as they are read), labels
    in memory; None when an image file is gzipped."""
    folder = _mnist_folder(data_dir)
    paths = {key: _find_idx(folder, stem) for key, stem in MNIST_FILES.items()}
    mapped = {key: map_idx(paths[key]) for key in ("train_images", "test_images")}
    if any(m is None for m in mapped.values()):
        return None
    arrays = {key: m.array for key, m in mapped.items() if m is not None}
    arrays.update({key: read_idx(paths[key]) for key in ("train_labels", "test_labels")})
    shape = _check_mnist(folder, arrays)
    rows = {}
    for split in ("train", "test"):
        m = mapped[f"{split}_images"]
        assert m is not None
        rows[split], _ = _mapped_rows(m, repr(str(paths[f"{split}_images"])), scale=255.0)
    return _Source(
        rows["train"],
        arrays["train_labels"].astype(np.int64),
        None,
        None,
        rows["test"],
        arrays["test_labels"].astype(np.int64),
        shape,
    )


def _check_mnist(folder: Path, arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """Check MNIST's four arrays (in memory or mapped) belong together; the images' ``(H, W)``."""
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
                "(0..255); convert the images to a .npy file and pass its path with `data` instead"
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
    if shapes[0] != shapes[1]:
        raise DataError(
            f"training images are {shapes[0]} but test images are {shapes[1]} in {str(folder)!r}; "
            "the folder mixes two data sets: keep one data set per folder"
        )
    return (int(shapes[0][0]), int(shapes[0][1]))


def _find_idx(folder: Path, stem: str) -> Path:
    """The path of ``stem`` or ``stem.gz`` in ``folder``, preferring the plain file."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"MNIST file {str(folder / stem)!r} not found (nor with .gz); the folder must hold "
        f"{_MNIST_LISTING}: pass `data_dir` DIR naming the folder that holds them"
    )
