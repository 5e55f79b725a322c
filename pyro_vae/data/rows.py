"""Rows of a data set, read a block at a time: from memory, or memory-mapped from a file.

:class:`Rows` is what training, evaluation, encoding and inspection ask of a data set
that may not fit in memory: its ``shape``, the ``dtype`` it is stored in, and
:meth:`Rows.read` / :meth:`Rows.gather` of some rows as float32. Two kinds implement it:

- :class:`ArrayRows`: a NumPy array in its own dtype, in memory or mapped from a file
  (:class:`MappedFile`); each read gathers the rows, converts them to float32 (scaling
  integer images to [0, 1] where the format says so) and hands back a fresh array, so
  resident memory holds one minibatch, not the data set.
- :class:`TensorRows`: a float32 tensor already on its device (what ``fit`` took before
  rows existed; indexing it is exactly ``tensor[rows]``).

Mapped pages live in the operating system's page cache, which every process that maps
the same file shares: under ``torchrun`` the processes of one machine hold one copy of
the data between them. A mapped page also counts in the resident memory (RSS) of each
process that touched it, and a fault maps far more than the row asked for: 64 KiB around
the page (``fault_around_bytes``), or a whole large folio where the file system caches
files in them (ext4 on Linux 6.18 here: 1.7 MB of RSS per random 784-byte row, measured).
A process reading random rows of a large file would see its RSS climb to the file's size.
A :class:`MappedFile` therefore releases its pages from the process (``madvise
MADV_DONTNEED``: the page cache keeps them) whenever the file-backed memory it holds
(``/proc/self/statm``, on Linux; elsewhere an estimate) has grown by more than
:data:`RESIDENT_BYTES` since the last release.

Example:
    >>> x = np.arange(12, dtype=np.uint8).reshape(4, 3)
    >>> rows = ArrayRows(x, scale=255.0)
    >>> rows.shape, rows.dtype, rows.read(np.array([2, 0])).dtype
    ((4, 3), dtype('uint8'), dtype('float32'))
    >>> rows.select(slice(1, 3)).read(slice(None)) * 255
    array([[3., 4., 5.],
           [6., 7., 8.]], dtype=float32)
"""

from __future__ import annotations

import abc
import mmap
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch

from ..errors import DataError

__all__ = [
    "Rows",
    "ArrayRows",
    "TensorRows",
    "MappedFile",
    "as_rows",
    "chunk_rows",
    "part",
    "sample_rows",
    "CHUNK_BYTES",
    "RESIDENT_BYTES",
    "FAULT_AROUND_BYTES",
]

#: Rows selected by position: a slice, integer positions (NumPy, a CPU tensor, a list).
Index = Union[slice, np.ndarray, torch.Tensor, Sequence[int]]

#: Float32 bytes of one block when rows are streamed (evaluation, checks, encoding): a
#: block of 16 MiB is 5,349 rows of 784 features.
CHUNK_BYTES = 1 << 24

#: Mapped bytes a process keeps resident per file before handing them back to the page
#: cache (see :class:`MappedFile`); a file no larger than this is never released.
RESIDENT_BYTES = 1 << 29

#: What Linux maps per page fault on a file (``fault_around_bytes``, 64 KiB by default):
#: a random row costs at least this much RSS until released (the estimate where
#: ``/proc/self/statm`` cannot be read).
FAULT_AROUND_BYTES = 1 << 16

_PAGE_BYTES = mmap.PAGESIZE


def _file_resident_bytes() -> int | None:
    """File-backed (and shared) memory resident in this process, from ``/proc/self/statm``;
    None where it cannot be read (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def chunk_rows(x_dim: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of ``x_dim`` float32 features in one streamed block (at least 1).

    Example:
        >>> chunk_rows(784), chunk_rows(10**9)
        (5349, 1)
    """
    return max(1, chunk_bytes // (4 * max(1, x_dim)))


class Rows(abc.ABC):
    """N data points of D features, read as float32 a block at a time.

    Subclasses say how the rows are stored (:attr:`dtype`, :attr:`shape`) and implement
    :meth:`read` and :meth:`select`; everything else is built on those.
    """

    #: The device the rows already live on (a tensor's), or None for host memory.
    device: torch.device | None = None

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(N, D)``."""

    @property
    @abc.abstractmethod
    def dtype(self) -> np.dtype:
        """How the values are stored (uint8 pixels stay uint8 until read)."""

    @abc.abstractmethod
    def read(self, index: Index) -> np.ndarray:
        """Rows ``index`` as a new float32 array ``(B, D)``, converted as the format says."""

    @abc.abstractmethod
    def select(self, index: Index) -> "Rows":
        """A view of rows ``index`` (a split, a shard); nothing is read."""

    @property
    def mapped(self) -> bool:
        """Whether the rows are read from a memory-mapped file."""
        return False

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def x_dim(self) -> int:
        """D, the number of features of one row."""
        return self.shape[1]

    def gather(self, index: Index, device: torch.device | str | None = None, *, pin: bool = False) -> torch.Tensor:
        """Rows ``index`` as a float32 tensor ``(B, D)`` on ``device``.

        Args:
            index: The rows.
            device: Where the tensor goes; None keeps it on the host.
            pin: Copy through pinned memory, asynchronously (for CUDA).
        """
        x = torch.from_numpy(self.read(index))  # (B, D)
        if device is None or torch.device(device).type == "cpu":
            return x
        if pin:
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(rows, values)`` for consecutive blocks of rows, in order, each float32.

        Args:
            rows: Rows per block; default :func:`chunk_rows` (16 MiB of float32).
        """
        step = rows or chunk_rows(self.x_dim)
        n = len(self)
        for lo in range(0, n, step):
            span = slice(lo, min(lo + step, n))
            yield span, self.read(span)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, mapped={self.mapped})"


class MappedFile:
    """A file mapped read-only, its pages shared through the page cache.

    Each read is preceded by :meth:`check`: a file that was truncated, rewritten or
    replaced since it was opened is a :class:`~pyro_vae.errors.DataError`, never a crash
    (reading a page past the end of a truncated mapping kills the process with SIGBUS)
    nor a silent mix of old and new rows. Each read reports the bytes it may have mapped
    (:meth:`touched`); past ``resident_bytes`` the pages are released from this process.

    Args:
        path: The file.
        resident_bytes: Mapped bytes kept resident before releasing them; 0 never releases.

    Raises:
        DataError: The file cannot be opened or is empty.
    """

    def __init__(self, path: str | os.PathLike, *, resident_bytes: int = RESIDENT_BYTES) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_size == 0:
                    raise DataError(f"data file {str(self.path)!r} is empty (0 bytes); pass a file that holds rows")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as err:
            raise DataError(
                f"cannot map data file {str(self.path)!r}: {err.strerror or err}; check the file and its permissions"
            ) from None
        self._stamp = _stamp(stat)
        self.size = stat.st_size
        self.resident_bytes = resident_bytes
        self.releases = 0  # how many times the pages were handed back (for tests and benchmarks)
        self._touched = 0
        self._lock = threading.Lock()
        # What else is file-backed and resident (libraries): growth past it is this file's.
        self._baseline = _file_resident_bytes()
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            # Minibatches read rows in random order: reading ahead would only waste the cache.
            self._map.madvise(mmap.MADV_RANDOM)

    def array(self, offset: int, dtype: np.dtype, shape: tuple[int, ...], *, fortran: bool = False) -> np.ndarray:
        """A read-only array over the file's bytes from ``offset``."""
        return np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offset, order="F" if fortran else "C")

    def check(self) -> None:
        """Raise if the file is not the one that was mapped (size, time, or inode changed)."""
        try:
            now = _stamp(os.stat(self.path))
        except OSError:
            now = None
        if now == self._stamp:
            return
        if now is None:
            what = "was deleted or cannot be read any more"
        elif now[0] != self._stamp[0]:
            what = f"changed size from {self._stamp[0]:,} to {now[0]:,} bytes"
        elif now[2:] != self._stamp[2:]:
            what = "was replaced by another file"
        else:
            what = "was modified"
        raise DataError(
            f"data file {str(self.path)!r} {what} while it was being read; it must stay unchanged while a run "
            "reads it: restore it (or let the writer finish), then start the run again or resume it"
        )

    def touched(self, nbytes: int) -> None:
        """Count ``nbytes`` as mapped by a read; release the pages once past the budget."""
        if not self.resident_bytes or self.size <= self.resident_bytes:
            return  # the whole file fits in the budget: nothing to release
        with self._lock:
            self._touched += nbytes
            # Measured where possible (one small read of /proc, ~10 us): the estimate
            # cannot know how much a fault maps (large folios map megabytes per row).
            now = _file_resident_bytes() if self._baseline is not None else None
            grown = self._touched if now is None or self._baseline is None else now - self._baseline
            if grown > self.resident_bytes:
                self.release()

    def release(self) -> None:
        """Hand this process's mapped pages back (they stay in the page cache)."""
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
            self.releases += 1
        self._touched = 0
        if self._baseline is not None:
            # Re-measured: libraries loaded since (CUDA's, say) must not count as this file's.
            self._baseline = _file_resident_bytes() or self._baseline


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)


class ArrayRows(Rows):
    """Rows of a NumPy array in its own dtype, in memory or mapped from a file.

    Args:
        array: ``(N, D)`` values of any real dtype (e.g. uint8 pixels, big-endian IDX).
        scale: Divide by this after converting to float32 (255 for IDX images), as the
            in-memory loader does: ``x.astype(float32) / float32(scale)``.
        index: Sorted positions in ``array`` of the rows this view holds (a split);
            None for all of them.
        file: The :class:`MappedFile` ``array`` lies in, checked before every read.

    Example:
        >>> rows = ArrayRows(np.array([[0, 255], [51, 102]], dtype=np.uint8), scale=255.0)
        >>> rows.gather([1]).tolist()
        [[0.20000000298023224, 0.4000000059604645]]
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        scale: float | None = None,
        index: np.ndarray | None = None,
        file: MappedFile | None = None,
    ) -> None:
        if array.ndim != 2:
            raise ValueError(f"ArrayRows needs a 2-D array, got shape {array.shape}")
        self._array = array
        self._scale = None if scale is None else np.float32(scale)
        self._index = index
        self._file = file
        # A random row maps a fault-around block; a row wider than that maps itself.
        self._row_bytes = array.shape[1] * array.dtype.itemsize

    @property
    def shape(self) -> tuple[int, int]:
        n = self._array.shape[0] if self._index is None else len(self._index)
        return (int(n), int(self._array.shape[1]))

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def mapped(self) -> bool:
        return self._file is not None

    @property
    def file(self) -> MappedFile | None:
        """The mapped file, or None in memory."""
        return self._file

    @property
    def scale(self) -> float | None:
        """What the stored values are divided by (None: nothing)."""
        return None if self._scale is None else float(self._scale)

    def _positions(self, index: Index) -> slice | np.ndarray:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        elif not isinstance(index, (slice, np.ndarray)):
            index = np.asarray(index, dtype=np.int64)
        if self._index is None:
            return index
        return self._index[index]

    def read(self, index: Index) -> np.ndarray:
        positions = self._positions(index)
        if self._file is not None:
            self._file.check()  # before touching a page: a truncated file would be SIGBUS
        block = self._array[positions]  # (B, D) in the stored dtype
        if self._file is not None:
            count = block.shape[0]
            contiguous = isinstance(positions, slice) and positions.step in (None, 1)
            self._file.touched(
                count * self._row_bytes if contiguous else count * (self._row_bytes + FAULT_AROUND_BYTES)
            )
        out = block.astype(np.float32)  # a copy: never a view of the file or of the caller's array
        if self._scale is not None:
            out /= self._scale
        return out

    def select(self, index: Index) -> "ArrayRows":
        if isinstance(index, slice) and self._index is None:
            view = ArrayRows(self._array[index], file=self._file)  # a view of the array: nothing copied
        else:
            positions = np.asarray(self._positions(index))
            if positions.size and 0 <= positions.min() and positions.max() < np.iinfo(np.int32).max:
                positions = positions.astype(np.int32, copy=False)  # half the memory of int64 for 10^7-row splits
            view = ArrayRows(self._array, index=positions, file=self._file)
        view._scale = self._scale
        return view


class TensorRows(Rows):
    """A float32 tensor as :class:`Rows`: ``gather`` is ``tensor[index]`` on its own device.

    This is how :func:`~pyro_vae.training.loop.fit` sees a tensor it is given, so that
    path reads exactly what it always read.

    Example:
        >>> TensorRows(torch.arange(6.0).reshape(3, 2)).gather(torch.tensor([2])).tolist()
        [[4.0, 5.0]]
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.device = tensor.device if isinstance(tensor, torch.Tensor) else None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.tensor.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(str(self.tensor.dtype).removeprefix("torch."))

    def gather(self, index: Index, device: torch.device | str | None = None, *, pin: bool = False) -> torch.Tensor:
        if isinstance(index, torch.Tensor) and isinstance(self.tensor, torch.Tensor):
            index = index.to(self.tensor.device)
        x = self.tensor[index]
        return x if device is None else x.to(device)

    def read(self, index: Index) -> np.ndarray:
        return self.gather(index).detach().cpu().numpy().astype(np.float32)

    def select(self, index: Index) -> "TensorRows":
        return TensorRows(self.tensor[index])


def as_rows(x: "Rows | torch.Tensor | np.ndarray") -> Rows:
    """``x`` as :class:`Rows`: itself, a tensor as :class:`TensorRows`, an array as :class:`ArrayRows`.

    Example:
        >>> as_rows(np.zeros((3, 2))).shape, as_rows(torch.zeros(3, 2)).device
        ((3, 2), device(type='cpu'))
    """
    if isinstance(x, Rows):
        return x
    if isinstance(x, torch.Tensor):
        return TensorRows(x)
    return ArrayRows(np.asarray(x))


def part(x: "Rows | torch.Tensor", parts: int, which: int) -> "Rows | torch.Tensor":
    """Part ``which`` of ``parts`` contiguous parts of the rows, as ``torch.tensor_split`` cuts them.

    Example:
        >>> [len(part(as_rows(np.zeros((5, 1))), 2, r)) for r in range(2)]
        [3, 2]
    """
    if isinstance(x, torch.Tensor):
        return torch.tensor_split(x, parts)[which]
    n = len(x)
    size, extra = divmod(n, parts)
    lo = which * size + min(which, extra)
    return x.select(slice(lo, lo + size + (which < extra)))


def sample_rows(x: Rows, rows: int | None = None) -> np.ndarray:
    """At most ``rows`` rows spread evenly over ``x`` (all of them if fewer), as float32.

    For a look at the data that needs no full pass (its scale, say).

    Args:
        x: The rows.
        rows: How many; default :func:`chunk_rows` (16 MiB of float32).

    Example:
        >>> sample_rows(as_rows(np.arange(10.0).reshape(10, 1)), 3).ravel().tolist()
        [0.0, 4.0, 9.0]
    """
    n = len(x)
    k = min(n, rows or chunk_rows(x.x_dim))
    return x.read(np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)))
