"""The data layer: the :class:`Dataset` type, loaders for every format, splits, stats."""

from diffmm.data.dataset import SPLITS, Dataset, build_dataset
from diffmm.data.formats import load_authors, load_dataset, load_mmrec, load_table
from diffmm.data.split import split_labels
from diffmm.data.stats import dataset_stats, format_stats
from diffmm.data.synthetic import is_synthetic_spec, make_synthetic

__all__ = [
    "SPLITS",
    "Dataset",
    "build_dataset",
    "dataset_stats",
    "format_stats",
    "is_synthetic_spec",
    "load_authors",
    "load_dataset",
    "load_mmrec",
    "load_table",
    "make_synthetic",
    "split_labels",
]
