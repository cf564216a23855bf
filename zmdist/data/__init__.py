"""Data layer: sources -> RGB images -> WebDataset shards + manifest -> per-rank readers.

Importing this package registers the built-in data sources (``imagefolder``, ``csv``, ``sklearn-digits``
and the benchmark datasets ``cifar10``, ``cifar100``, ``flowers102``, ``dtd``, ``eurosat``, ``resisc45``)
in ``zmdist.data.sources.SOURCES``; Python runs this file before any ``zmdist.data`` module, so
``open_source`` always sees them.
"""

# Built-in sources: each module registers itself (one decorated builder per file).
from zmdist.data.sklearn_digits import open_sklearn_digits
from zmdist.data.source_benchmarks import (
    open_cifar10, open_cifar100, open_dtd, open_eurosat, open_flowers102, open_resisc45,
)
from zmdist.data.source_csv import open_csv
from zmdist.data.source_imagefolder import open_imagefolder

from zmdist.data.images import CorruptImageError, load_image, read_rgb, to_rgb
from zmdist.data.manifest import Manifest, ManifestError
from zmdist.data.reader import ShardDataset, assign_shards, iter_shard, make_loader
from zmdist.data.shards import write_shards
from zmdist.data.sources import SOURCES, Sample, Source, open_source

__all__ = [
    "SOURCES",
    "CorruptImageError",
    "Manifest",
    "ManifestError",
    "Sample",
    "ShardDataset",
    "Source",
    "assign_shards",
    "iter_shard",
    "load_image",
    "make_loader",
    "open_cifar10",
    "open_cifar100",
    "open_csv",
    "open_dtd",
    "open_eurosat",
    "open_flowers102",
    "open_imagefolder",
    "open_resisc45",
    "open_sklearn_digits",
    "open_source",
    "read_rgb",
    "to_rgb",
    "write_shards",
]
