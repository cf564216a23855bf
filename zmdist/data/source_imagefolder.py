"""``imagefolder:PATH``: one sub-folder per class, optionally below ``train/``, ``val/``, ``test/`` split folders.

Sorted class-folder names give the class indices; images may sit in nested folders below a class folder.
When every top-level folder of PATH is one of ``train``, ``val``, ``test`` and ``train`` holds folders,
those are the splits (named after the folders) and the class list is the sorted union over them, so
indices agree between splits. Image files are found by extension (png, jpg, jpeg, bmp, gif, webp, tif,
tiff, any case). Anything else, and files that are not inside a class folder, is listed in ``skipped``
with the reason. An empty class folder is a warning, not an error: it keeps its class index (a class may
be empty on purpose, e.g. a zero-shot-only class). Keys are the path relative to PATH (``make_keys``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

from PIL import Image

from zmdist.data.sources import SOURCES, Sample, Source, display_path, make_keys, require_argument

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_FOLDERS = ("train", "val", "test")


def _walk_files(folder: Path) -> Iterable[Path]:
    """Every file below ``folder``, in sorted order (never filesystem listing order)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_split_layout(root: Path, top_dirs: list[Path]) -> bool:
    names = {d.name for d in top_dirs}
    return "train" in names and names <= set(SPLIT_FOLDERS) and any(p.is_dir() for p in (root / "train").iterdir())


@SOURCES.register("imagefolder")
def open_imagefolder(spec: str, argument: str) -> Source:
    """``imagefolder:PATH``: classes from sub-folder names, splits from ``train/``, ``val/``, ``test/``."""
    root = Path(require_argument(spec, argument, "PATH")).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{spec}: {root} is not a folder")
    top = sorted(root.iterdir())
    top_dirs = [p for p in top if p.is_dir()]
    split_layout = _is_split_layout(root, top_dirs)
    split_roots = {d.name: d for d in top_dirs} if split_layout else {"train": root}
    skipped: list[dict[str, str]] = []
    if split_layout:
        skipped += [{"origin": display_path(p), "reason": "not inside a split folder"} for p in top if not p.is_dir()]
    class_dirs: dict[str, list[Path]] = {}
    for split, folder in split_roots.items():
        entries = sorted(folder.iterdir())
        class_dirs[split] = [p for p in entries if p.is_dir()]
        skipped += [{"origin": display_path(p), "reason": "not inside a class folder"} for p in entries if not p.is_dir()]
    classes = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    if not classes:
        raise ValueError(f"{spec}: no class folders in {root}: expected {root}/<class>/<image> (or {root}/train/<class>/...)")
    index = {name: i for i, name in enumerate(classes)}
    warnings: list[str] = []
    found: list[tuple[str, Path, int]] = []
    for split, dirs in class_dirs.items():
        for class_dir in dirs:
            images = 0
            for path in _walk_files(class_dir):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((split, path, index[class_dir.name]))
                    images += 1
                else:
                    reason = f"not an image file (extension {path.suffix or 'none'!r})"
                    skipped.append({"origin": display_path(path), "reason": reason})
            if images == 0:
                warnings.append(f"class folder {display_path(class_dir)} has no images")
    if not found:
        raise ValueError(f"{spec}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    keys = make_keys([path.relative_to(root).as_posix() for _, path, _ in found])
    samples: dict[str, list[Sample]] = {split: [] for split in split_roots}
    for key, (split, path, label) in zip(keys, found):
        samples[split].append(Sample(key, display_path(path), functools.partial(Image.open, path), label))
    return Source(spec, classes, samples, own_splits=split_layout, skipped=skipped, warnings=warnings)
