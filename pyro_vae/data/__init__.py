"""Data: file formats (:mod:`.formats`), data sets and splits (:mod:`.datasets`),
and the per-minibatch transforms of training (:mod:`.transforms`)."""

from .datasets import Dataset, load_dataset
from .formats import load_array, read_idx
from .transforms import BatchTransform, binarize

__all__ = ["Dataset", "load_dataset", "load_array", "read_idx", "BatchTransform", "binarize"]
