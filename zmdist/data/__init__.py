"""Data layer: sources -> RGB images -> WebDataset shards + manifest -> per-rank readers."""

from zmdist.data.images import CorruptImageError, load_image, read_rgb, to_rgb
from zmdist.data.manifest import Manifest, ManifestError
from zmdist.data.reader import ShardDataset, assign_shards, iter_shard, make_loader
from zmdist.data.shards import write_shards
from zmdist.data.sources import Sample, Source, open_source

__all__ = [
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
    "open_source",
    "read_rgb",
    "to_rgb",
    "write_shards",
]
