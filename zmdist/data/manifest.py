"""The shard folder's table of contents (``manifest.json``): what was written, what was not, and why.

Shard format ``zmdist-shards/1``
--------------------------------
An output folder of ``zmdist shard`` holds ``manifest.json`` and uncompressed WebDataset tar shards
named ``{split}-{i:06d}.tar`` (``train-000000.tar``, ``test-000000.tar``, ...). The manifest is written
last and atomically, so a folder with a manifest is complete; shards are renamed into place only when
whole, so a crash never leaves a half shard under a final name.

Each sample in a tar is three consecutive members sharing a key (file name up to the first dot):

- ``{key}.png`` (or ``{key}.jpg`` when ``image_format`` is ``"jpg"``): the image, always 8-bit RGB;
- ``{key}.cls``: the class index as ASCII decimal text; absent when the sample has no label;
- ``{key}.json``: ``{"key": key, "origin": <source path or id>, "label": <int or null>}``.

Keys are unique within the folder, stable across reruns, and contain only ``[A-Za-z0-9_-]`` (never
``.``, which WebDataset splits on, nor ``/``). Samples are shuffled (seeded) before writing, so a shard
is not one class. Tar members have mtime 0, so rerunning on the same input gives byte-identical shards.

``manifest.json``::

    {"format": "zmdist-shards/1",
     "source": "imagefolder:/data/pets",           # the source spec it was made from
     "classes": ["cat", "dog"],                     # label i is classes[i]
     "image_format": "png",
     "splits": {"train": {"shards": [{"name": "train-000000.tar", "count": 1000,
                                      "keys_sha256": "9f2c..."}, ...],  # sha256 of the keys, one per line
                          "total": 1234, "labelled": 1234},
                "test": {...}},
     "skipped": [{"origin": "/data/pets/cat/x.jpg", "reason": "cannot decode image: ..."}],
     "converted": {"L->RGB": 12, "RGBA->RGB": 3, "multi-frame->first frame": 1},
     "warnings": ["class folder /data/pets/train/bird has no images"]}

Every input file is either a sample in some shard or an entry of ``skipped``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmdist.atomic import atomic_write_text
from zmdist.data.location import Location

FORMAT = "zmdist-shards/1"
MANIFEST_NAME = "manifest.json"
IMAGE_FORMATS = ("png", "jpg")


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or out of step with the shards on disk."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int
    keys_sha256: str | None = None  # ``keys_digest`` of its keys in tar order (None: an older manifest)


def keys_digest(keys: list[str]) -> str:
    """sha256 of a shard's keys in tar order, one per line: the shard's identity for resume checks and for
    matching sidecars, known without reading the tar (a remote shard would have to be streamed)."""
    return hashlib.sha256("".join(f"{k}\n" for k in keys).encode()).hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    shards: list[ShardInfo]
    total: int
    labelled: int


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise ManifestError(f"{where}: {what}; re-run `zmdist shard` (with --overwrite) to rebuild it")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_split(name: str, raw: Any, where: Path) -> SplitInfo:
    _require(isinstance(raw, dict), where, f"splits.{name} must be an object")
    shards_raw = raw.get("shards")
    _require(isinstance(shards_raw, list), where, f"splits.{name}.shards must be a list")
    shards = []
    for i, entry in enumerate(shards_raw):
        ok = (isinstance(entry, dict) and isinstance(entry.get("name"), str) and _is_count(entry.get("count"))
              and isinstance(entry.get("keys_sha256", ""), str))
        _require(ok, where, f"splits.{name}.shards[{i}] must be {{'name': str, 'count': int >= 0, 'keys_sha256': str}}")
        _require("/" not in entry["name"] and entry["name"] not in ("", ".", ".."), where,
                 f"splits.{name}.shards[{i}].name {entry['name']!r} must be a plain file name")
        shards.append(ShardInfo(entry["name"], entry["count"], entry.get("keys_sha256")))
    total, labelled = raw.get("total"), raw.get("labelled")
    _require(_is_count(total) and _is_count(labelled), where, f"splits.{name}.total/labelled must be ints >= 0")
    counted = sum(s.count for s in shards)
    _require(total == counted, where, f"splits.{name}.total is {total} but its shards hold {counted}")
    _require(labelled <= total, where, f"splits.{name}.labelled ({labelled}) exceeds total ({total})")
    return SplitInfo(shards, total, labelled)


@dataclass
class Manifest:
    """Parsed ``manifest.json``; ``location`` is where it lives (set by ``load``/``save``): a local folder
    (``root``) or a remote one (``zmdist.data.location``)."""

    source: str
    classes: list[str]
    image_format: str
    splits: dict[str, SplitInfo]
    skipped: list[dict[str, str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    location: Location | None = field(default=None, compare=False)

    @property
    def root(self) -> Path | None:
        """The local folder (None for a remote or unsaved manifest)."""
        return self.location.path if self.location is not None and self.location.is_local else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        """The split's entry; a clear error listing the splits that do exist."""
        if name not in self.splits:
            raise KeyError(f"split {name!r} is not in {self._where()} (it has: {', '.join(sorted(self.splits)) or 'none'})")
        return self.splits[name]

    def counts(self, split: str) -> list[int]:
        return [s.count for s in self.split(split).shards]

    def shard_paths(self, split: str) -> list[Path | str]:
        """Each shard of ``split`` as readers open it: a local ``Path``, or a URL / ``pipe:`` command."""
        if self.location is None:
            raise ValueError("manifest has no folder yet: call save(dir) or load it with Manifest.load(dir)")
        return [self.location.ref(s.name) for s in self.split(split).shards]

    def _where(self) -> str:
        return str(self.location.ref(MANIFEST_NAME)) if self.location else "the manifest"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "source": self.source,
            "classes": list(self.classes),
            "image_format": self.image_format,
            "splits": {
                name: {
                    "shards": [{"name": s.name, "count": s.count}
                               | ({"keys_sha256": s.keys_sha256} if s.keys_sha256 else {}) for s in info.shards],
                    "total": info.total,
                    "labelled": info.labelled,
                }
                for name, info in self.splits.items()
            },
            "skipped": list(self.skipped),
            "converted": dict(sorted(self.converted.items())),
            "warnings": list(self.warnings),
        }

    def save(self, directory: Path | str) -> None:
        """Write ``manifest.json`` atomically (temp file + ``os.replace``): readers never see half of it."""
        self.location = Location.parse(directory)
        atomic_write_text(self.location.path / MANIFEST_NAME, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path | str) -> "Manifest":
        """Read and validate ``manifest.json`` of a shard location (a folder, URL or ``pipe:`` template),
        including, for a local folder, that every listed shard exists (a remote shard is checked when read)."""
        location = Location.parse(directory)
        path = location.ref(MANIFEST_NAME)
        if location.exists(MANIFEST_NAME) is False:
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {location}: run `zmdist shard` first")
        try:
            raw = json.loads(location.read_bytes(MANIFEST_NAME))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no readable {MANIFEST_NAME} at {location} ({err}): check the URL or command, "
                                    "or run `zmdist shard` first") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path} is not valid JSON ({err}); re-run `zmdist shard` (with --overwrite)") from err
        _require(isinstance(raw, dict), path, "top level must be an object")
        _require(
            raw.get("format") == FORMAT,
            path,
            f"format is {raw.get('format')!r}, this zmdist reads {FORMAT!r}",
        )
        classes = raw.get("classes")
        _require(isinstance(classes, list) and all(isinstance(c, str) for c in classes), path, "classes must be a list of names")
        _require(raw.get("image_format") in IMAGE_FORMATS, path, f"image_format must be one of {IMAGE_FORMATS}")
        _require(isinstance(raw.get("source"), str), path, "source must be a string")
        splits_raw = raw.get("splits")
        _require(isinstance(splits_raw, dict), path, "splits must be an object")
        splits = {name: _parse_split(name, info, path) for name, info in splits_raw.items()}
        for info in splits.values():
            for shard in info.shards:
                if location.exists(shard.name) is False:
                    raise ManifestError(
                        f"shard {shard.name} is listed in {path} but missing from {location}: copy it back or "
                        "re-run `zmdist shard` (with --overwrite)"
                    )
        return cls(
            source=raw["source"],
            classes=classes,
            image_format=raw["image_format"],
            splits=splits,
            skipped=list(raw.get("skipped", [])),
            converted=dict(raw.get("converted", {})),
            warnings=list(raw.get("warnings", [])),
            location=location,
        )
