"""The standard benchmark datasets, read as torchvision (RESISC45: torchgeo) leaves them on disk.

``ROOT`` is the folder one would give torchvision as ``root``; the official splits are kept
(``own_splits=True``) where a dataset has them, so numbers are comparable with the papers':

- ``cifar10:ROOT``: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``,
  train 50,000 / test 10,000;
- ``cifar100:ROOT``: ``ROOT/cifar-100-python/{train, test, meta}``, fine labels, train 50,000 / test 10,000;
- ``flowers102:ROOT``: ``ROOT/flowers-102/{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}``,
  train 1,020 / val 1,020 / test 6,149 (``trnid``/``valid``/``tstid`` of ``setid.mat``);
- ``dtd:ROOT`` or ``dtd:ROOT#N``: ``ROOT/dtd/dtd/{images/<class>/.., labels/{train,val,test}N.txt}``,
  partition N of 1..10 (default 1), 1,880 images per split;
- ``eurosat:ROOT``: ``ROOT/eurosat/2750/<ClassFolder>/*.jpg`` (RGB, 27,000). EuroSAT has no official
  split: everything is ``train`` and the shard stage's ``test_fraction`` makes the (stratified) holdout;
- ``resisc45:ROOT``: ``ROOT/NWPU-RESISC45/<class>/*.jpg`` (31,500). No official split either, unless
  torchgeo's split files ``ROOT/resisc45-{train,val,test}.txt`` (image file names) lie in ROOT: then
  those are the splits (18,900 / 6,300 / 6,300) and unlisted images are skipped.

``flowers102`` and ``resisc45`` also take ``split_file`` (the shard stage's ``split_file=``): the splits
the ELEVATER/FRAMED releases ship, which ZeroMatch and GRIP train and test on, instead of the above. It is
a path with ``{split}`` in it, e.g. ``/data/framed/Flowers102/{split}.txt`` or
``/data/framed/RESICS45/{split}.json``; ``train`` and ``test`` must exist (``val`` is read when present).
A ``.txt`` has one image per line, ``[ARCHIVE@]RELPATH [LABEL]`` (``train.zip@000/image_06736.jpg 0``;
LABEL 0-based, the dataset's class order); a ``.json`` is COCO-like, ``{"images": [{"file_name":
"[ARCHIVE@]RELPATH"}, ...]}``. Entries are matched to the images on disk by file name (``image_06736.jpg``,
``airplane_001.jpg``: unique in both datasets); a label, or a RESISC45 class folder in RELPATH, that
disagrees with the dataset's own, and a listed image that is not on disk, are errors (the file is for
another copy of the dataset); images no split lists are skipped with that reason.

Classes are the readable names zero-shot prompts use (``zmdist.data.benchmark_classes``), because the
zero-shot classifier builds its prompts from the manifest's classes: ``aquarium fish``, not
``aquarium_fish``. Reading is our own code (no torchvision needed); only ``download=true`` uses
torchvision's dataset classes to fetch a missing dataset, so a run never reaches the internet unasked.
CIFAR batches are Python pickles (read only files you trust); their arrays stay in memory (about the
size of the files) and each image is made from its 3,072-byte CHW row only when asked. Keys come from
the path below the dataset folder (``data_batch_1/00042``, ``jpg/image_00001.jpg``) via ``make_keys``.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from zmdist.data.benchmark_classes import (
    CIFAR10_CLASSES, CIFAR100_CLASSES, DTD_CLASSES, EUROSAT_CLASSES, EUROSAT_FOLDER_NAMES, FLOWERS102_CLASSES,
    RESISC45_CLASSES, RESISC45_FOLDER_NAMES,
)
from zmdist.data.source_imagefolder import IMAGE_EXTENSIONS
from zmdist.data.sources import SOURCES, Sample, Source, display_path, make_keys, require_argument

log = logging.getLogger("zmdist")

DOWNLOAD_HINT = "pass download=true to fetch it with torchvision (needs internet)"
CIFAR_ROW_BYTES = 3 * 32 * 32
DTD_PARTITIONS = range(1, 11)
SPLITS = ("train", "val", "test")
_DTD_ARGUMENT = re.compile(r"^(?P<root>.+)#(?P<partition>\d+)$")


@dataclass(frozen=True)
class _Listed:
    """One image a split file lists: its file name, the folder and label it gives (if any), file:line."""

    split: str
    name: str
    folder: str
    label: int | None
    origin: str


@dataclass(frozen=True)
class _Entry:
    """One image found on disk before keys are made; ``rel`` (below the dataset folder) gives its key."""

    split: str
    rel: str
    origin: str
    loader: Callable[[], Image.Image]
    label: int


# ---------------------------------------------------------------- shared: layout checks, download, assembly


def _root(spec: str, argument: str) -> Path:
    return Path(require_argument(spec, argument, "ROOT")).expanduser()


def _missing(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if not p.exists()]


def _fetch_with_torchvision(spec: str, root: Path, dataset: str, kwargs: dict[str, Any]) -> None:
    """``torchvision.datasets.<dataset>(root, download=True, **kwargs)``: torchvision's own download."""
    try:
        from torchvision import datasets  # lazy: only a download needs torchvision
    except ImportError as err:
        raise ImportError(f"{spec}: download=true fetches {dataset} with torchvision, which cannot be imported "
                          f"({err}); install torchvision, or download the dataset into {root} yourself") from err
    log.info("%s: downloading %s into %s with torchvision", spec, dataset, root)
    try:
        getattr(datasets, dataset)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as err:  # no network, bad checksum, full disk
        raise RuntimeError(f"{spec}: torchvision could not download {dataset} into {root}: {err}") from err


def _ensure_layout(spec: str, root: Path, required: Sequence[Path], download: bool, dataset: str,
                   **kwargs: Any) -> None:
    """Raise unless every ``required`` path exists; with ``download``, fetch the dataset first if not.

    Nothing is fetched when the files are there, so ``download=true`` costs nothing on a second run.
    """
    missing = _missing(required)
    if missing and download:
        _fetch_with_torchvision(spec, root, dataset, kwargs)
        missing = _missing(required)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        why = (f"torchvision's {dataset} download into {root} did not create it" if download
               else f"expected the layout torchvision's {dataset} leaves under {root}; {DOWNLOAD_HINT}")
        raise FileNotFoundError(f"{spec}: {display_path(missing[0])}{more} does not exist: {why}")


def _file_entry(split: str, base: Path, path: Path, label: int) -> _Entry:
    rel = path.relative_to(base).as_posix()
    return _Entry(split, rel, display_path(path), functools.partial(Image.open, path), label)


def _assemble(spec: str, classes: list[str], entries: list[_Entry], splits: Sequence[str], own_splits: bool,
              skipped: list[dict[str, str]], warnings: list[str] | None = None) -> Source:
    """The Source of ``entries``; an image listed twice (in two split files) is kept once, the repeat skipped."""
    first_split: dict[str, str] = {}
    kept: list[_Entry] = []
    for entry in entries:
        if entry.rel in first_split:
            reason = f"listed again (already in split {first_split[entry.rel]!r})"
            skipped.append({"origin": entry.origin, "reason": reason})
            continue
        first_split[entry.rel] = entry.split
        kept.append(entry)
    if not kept:
        raise ValueError(f"{spec}: no images found ({len(skipped)} skipped, e.g. {skipped[:2]})")
    samples: dict[str, list[Sample]] = {split: [] for split in splits}
    for key, entry in zip(make_keys([e.rel for e in kept]), kept):
        samples[entry.split].append(Sample(key, entry.origin, entry.loader, entry.label))
    return Source(spec, list(classes), samples, own_splits=own_splits, skipped=skipped, warnings=warnings or [])


def _check_label(spec: str, where: object, label: int, n_classes: int, first: int = 0) -> int:
    """``label - first`` (0-based), or a ``ValueError`` naming the file when it is out of range."""
    if not first <= label < first + n_classes:
        raise ValueError(f"{spec}: {display_path(where)}: label {label} is outside {first}..{first + n_classes - 1}; "
                         "the file is not the official one (delete the dataset folder and download it again)")
    return label - first


# ---------------------------------------------------------------- split files (ELEVATER / FRAMED)


def _relpath(text: str) -> str:
    """``train.zip@000/image_06736.jpg`` -> ``000/image_06736.jpg`` (the archive prefix dropped)."""
    return text.strip().rpartition("@")[2]


def _read_split_list(spec: str, split: str, file: Path) -> list[_Listed]:
    """The images one split file lists (``.txt``: ``[ARCHIVE@]RELPATH [LABEL]`` lines; ``.json``: COCO-like)."""
    where = display_path(file)
    rels: list[tuple[str, int | None, str]] = []  # (relpath, label or None, origin)
    if file.suffix == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            names = [image["file_name"] for image in data["images"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{spec}: split_file {where}: not a COCO-like split, {{'images': [{{'file_name': "
                             f"...}}, ...]}} ({err!r})") from err
        rels = [(_relpath(str(name)), None, f"{where}: images[{i}]") for i, name in enumerate(names)]
    else:
        for line_no, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2 or (len(fields) == 2 and not fields[1].lstrip("-").isdigit()):
                raise ValueError(f"{spec}: split_file {where}:{line_no}: {line.strip()!r} is not "
                                 "'[ARCHIVE@]RELPATH [LABEL]' (LABEL a 0-based class index)")
            rels.append((_relpath(fields[0]), int(fields[1]) if len(fields) == 2 else None, f"{where}:{line_no}"))
    listed = []
    for rel, label, origin in rels:
        folder, _, name = rel.rpartition("/")
        if not name:
            raise ValueError(f"{spec}: split_file {origin}: {rel!r} names no file")
        listed.append(_Listed(split, name, folder, label, origin))
    return listed


def _split_file_lists(spec: str, split_file: str) -> dict[str, list[_Listed]]:
    """Per split, the images the files ``split_file`` (a path with ``{split}``) names; train and test needed."""
    if "{split}" not in split_file:
        raise ValueError(f"{spec}: split_file={split_file}: write the path with {{split}} where the split's name "
                         "goes, e.g. /data/framed/Flowers102/{split}.txt")
    files = {split: Path(split_file.replace("{split}", split)).expanduser() for split in SPLITS}
    absent = [display_path(files[split]) for split in ("train", "test") if not files[split].is_file()]
    if absent:
        raise FileNotFoundError(f"{spec}: split_file: {', '.join(absent)} does not exist (train and test split "
                                "files are needed)")
    return {split: _read_split_list(spec, split, file) for split, file in files.items() if file.is_file()}


def _entries_from_split_file(spec: str, split_file: str, images: dict[str, tuple[Path, int]], base: Path,
                             classes: list[str], skipped: list[dict[str, str]],
                             folders: dict[str, str] | None = None) -> tuple[list[_Entry], list[str]]:
    """(entries, splits) of the images on disk (``file name -> (path, label)``) as ``split_file`` splits them.

    A listed label, or (``folders``: the class folders by name) a listed class folder, must be the image's
    own; a listed image missing on disk is an error, an image on disk no split lists is skipped."""
    lists = _split_file_lists(spec, split_file)
    entries, listed_names, missing = [], set(), []
    for split, listed in lists.items():
        for item in listed:
            listed_names.add(item.name)
            if item.name not in images:
                missing.append(item)
                continue
            path, label = images[item.name]
            if item.label is not None and item.label != label:
                raise ValueError(f"{spec}: split_file {item.origin}: {item.name} has label {item.label} "
                                 f"({classes[item.label] if 0 <= item.label < len(classes) else 'no such class'}) "
                                 f"but the dataset labels it {label} ({classes[label]}); the file is not for this "
                                 "dataset's class order")
            if folders is not None and item.folder and item.folder in folders and item.folder != path.parent.name:
                raise ValueError(f"{spec}: split_file {item.origin}: {item.name} is listed under class folder "
                                 f"{item.folder!r} but lies in {path.parent.name!r}")
            entries.append(_file_entry(split, base, path, label))
    if missing:
        raise ValueError(f"{spec}: split_file lists {len(missing)} image(s) that are not in {display_path(base)} "
                         f"(e.g. {missing[0].name}, {missing[0].origin}): the split file is for another copy of the "
                         "dataset, or images are missing (download it again)")
    skipped += [{"origin": display_path(path), "reason": "not listed in any split_file split"}
                for name, (path, _) in sorted(images.items()) if name not in listed_names]
    return entries, list(lists)


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with ``str`` keys (the official files are Python 2 pickles: latin1)."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{display_path(path)}: not a readable CIFAR pickle ({err}); "
                         "delete it and download again") from err
    if not isinstance(entry, dict):
        raise ValueError(f"{display_path(path)}: a CIFAR pickle holds a dict, this one a {type(entry).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, list[int]]:
    """The (N, 3072) uint8 rows and N labels of one CIFAR batch file, checked."""
    entry = _unpickle(path)
    data, labels = np.asarray(entry.get("data")), entry.get(label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW_BYTES:
        raise ValueError(f"{display_path(path)}: 'data' must be N x {CIFAR_ROW_BYTES} uint8 rows (3x32x32, CHW), "
                         f"got {data.dtype} {data.shape}")
    if labels is None or len(labels) != len(data):
        raise ValueError(f"{display_path(path)}: needs {len(data)} {label_key!r}, got "
                         f"{'none' if labels is None else len(labels)}")
    return data, [int(label) for label in labels]


def _cifar_image(rows: np.ndarray, index: int) -> Image.Image:
    """Row ``index`` (R plane, G plane, B plane of 32x32 each) as a 32x32 RGB image."""
    return Image.fromarray(np.ascontiguousarray(rows[index].reshape(3, 32, 32).transpose(1, 2, 0)), "RGB")


def _check_cifar_meta(spec: str, path: Path, key: str, classes: list[str]) -> None:
    """The meta file's class names must be ours (with ``_`` for spaces), or labels would get wrong names."""
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in _unpickle(path).get(key, [])]
    if [n.replace("_", " ") for n in names] != classes:
        raise ValueError(f"{spec}: {display_path(path)}: {key} {names[:3]}... are not the dataset's "
                         f"{len(classes)} classes in their official order; the file is not the official one")


def _open_cifar(spec: str, root: Path, download: bool, dataset: str, folder: str, batches: dict[str, list[str]],
                meta: tuple[str, str], label_key: str, classes: list[str]) -> Source:
    base = root / folder
    files = [base / name for names in batches.values() for name in names]
    _ensure_layout(spec, root, [*files, base / meta[0]], download, dataset, train=True)
    _check_cifar_meta(spec, base / meta[0], meta[1], classes)
    entries: list[_Entry] = []
    for split, names in batches.items():
        for name in names:
            rows, labels = _read_cifar_batch(base / name, label_key)
            origin = display_path(base / name)
            entries += [
                _Entry(split, f"{name}/{i:05d}", f"{origin}#{i}", functools.partial(_cifar_image, rows, i),
                       _check_label(spec, base / name, label, len(classes)))
                for i, label in enumerate(labels)
            ]
    return _assemble(spec, classes, entries, list(batches), own_splits=True, skipped=[])


@SOURCES.register("cifar10")
def open_cifar10(spec: str, argument: str, download: bool = False) -> Source:
    """``cifar10:ROOT``: the python-pickle CIFAR-10 in ``ROOT/cifar-10-batches-py``, official train/test."""
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    return _open_cifar(spec, _root(spec, argument), download, "CIFAR10", "cifar-10-batches-py", batches,
                       ("batches.meta", "label_names"), "labels", CIFAR10_CLASSES)


@SOURCES.register("cifar100")
def open_cifar100(spec: str, argument: str, download: bool = False) -> Source:
    """``cifar100:ROOT``: the python-pickle CIFAR-100 in ``ROOT/cifar-100-python``, fine labels, train/test."""
    return _open_cifar(spec, _root(spec, argument), download, "CIFAR100", "cifar-100-python",
                       {"train": ["train"], "test": ["test"]}, ("meta", "fine_label_names"), "fine_labels",
                       CIFAR100_CLASSES)


# ---------------------------------------------------------------- Flowers102


def _mat_ints(path: Path, keys: Sequence[str]) -> list[list[int]]:
    """The integer vectors ``keys`` of a MATLAB file (``squeeze_me`` makes a 1-element one a scalar: undone)."""
    from scipy.io import loadmat  # lazy: scipy is slow to import

    try:
        mat = loadmat(path, squeeze_me=True)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"{display_path(path)}: not a readable .mat file ({err}); "
                         "delete it and download again") from err
    absent = [key for key in keys if key not in mat]
    if absent:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{display_path(path)}: has no {', '.join(absent)} (found {found}); not the official file")
    return [[int(v) for v in np.atleast_1d(mat[key]).ravel()] for key in keys]


@SOURCES.register("flowers102")
def open_flowers102(spec: str, argument: str, download: bool = False, split_file: str = "") -> Source:
    """``flowers102:ROOT``: ``ROOT/flowers-102``, splits from ``setid.mat`` (or ``split_file``: ELEVATER's),
    labels from ``imagelabels.mat``.

    The .mat labels are 1-based (1 = pink primrose): they are shifted to the 0-based class indices.
    """
    root = _root(spec, argument)
    base = root / "flowers-102"
    _ensure_layout(spec, root, [base / "jpg", base / "imagelabels.mat", base / "setid.mat"], download, "Flowers102")
    (labels,) = _mat_ints(base / "imagelabels.mat", ["labels"])
    if split_file:
        images = {}
        for i, label in enumerate(labels, 1):
            path = base / "jpg" / f"image_{i:05d}.jpg"
            if path.is_file():
                images[path.name] = (path, _check_label(spec, base / "imagelabels.mat", label,
                                                        len(FLOWERS102_CLASSES), first=1))
        unlisted: list[dict[str, str]] = []
        entries, splits = _entries_from_split_file(spec, split_file, images, base, FLOWERS102_CLASSES, unlisted)
        return _assemble(spec, FLOWERS102_CLASSES, entries, splits, own_splits=True, skipped=unlisted)
    split_keys = {"train": "trnid", "val": "valid", "test": "tstid"}
    entries: list[_Entry] = []
    skipped: list[dict[str, str]] = []
    for (split, key), image_ids in zip(split_keys.items(), _mat_ints(base / "setid.mat", list(split_keys.values()))):
        for image_id in image_ids:
            if not 1 <= image_id <= len(labels):
                raise ValueError(f"{spec}: {display_path(base / 'setid.mat')}: {key} lists image {image_id}, but "
                                 f"imagelabels.mat labels images 1..{len(labels)}")
            path = base / "jpg" / f"image_{image_id:05d}.jpg"
            if not path.is_file():
                skipped.append({"origin": display_path(path), "reason": "missing file"})
                continue
            label = _check_label(spec, base / "imagelabels.mat", labels[image_id - 1], len(FLOWERS102_CLASSES),
                                 first=1)
            entries.append(_file_entry(split, base, path, label))
    return _assemble(spec, FLOWERS102_CLASSES, entries, list(split_keys), own_splits=True, skipped=skipped)


# ---------------------------------------------------------------- DTD


def _dtd_argument(spec: str, argument: str) -> tuple[Path, int]:
    """``ROOT`` (partition 1) or ``ROOT#N``: the root folder and the partition."""
    text = require_argument(spec, argument, "ROOT[#PARTITION]")
    match = _DTD_ARGUMENT.match(text)
    if not match:
        return Path(text).expanduser(), 1
    partition = int(match["partition"])
    if partition not in DTD_PARTITIONS:
        raise ValueError(f"{spec}: DTD has partitions 1..10, got {partition} (write dtd:ROOT#N)")
    return Path(match["root"]).expanduser(), partition


def _dtd_entries(split: str, list_file: Path, images: Path, skipped: list[dict[str, str]]) -> list[_Entry]:
    """The images one ``labels/<split>N.txt`` lists (lines ``<class>/<file>``), class from the folder."""
    index = {name: i for i, name in enumerate(DTD_CLASSES)}
    entries = []
    for line_no, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        rel = line.strip()
        if not rel:
            continue
        folder, _, name = rel.partition("/")
        path = images / rel
        if folder not in index or not name:
            skipped.append({"origin": f"{display_path(list_file)}:{line_no}",
                            "reason": f"{rel!r} is not <class>/<file> of one of DTD's {len(DTD_CLASSES)} classes"})
        elif not path.is_file():
            skipped.append({"origin": display_path(path), "reason": "missing file"})
        else:
            entries.append(_file_entry(split, images, path, index[folder]))
    return entries


@SOURCES.register("dtd")
def open_dtd(spec: str, argument: str, download: bool = False) -> Source:
    """``dtd:ROOT[#N]``: ``ROOT/dtd/dtd``, train/val/test of partition N (default 1) from ``labels/``."""
    root, partition = _dtd_argument(spec, argument)
    data = root / "dtd" / "dtd"
    lists = {split: data / "labels" / f"{split}{partition}.txt" for split in SPLITS}
    _ensure_layout(spec, root, [data / "images", *lists.values()], download, "DTD")
    skipped: list[dict[str, str]] = []
    entries = [e for split, file in lists.items() for e in _dtd_entries(split, file, data / "images", skipped)]
    return _assemble(spec, DTD_CLASSES, entries, SPLITS, own_splits=True, skipped=skipped)


# ---------------------------------------------------------------- EuroSAT / RESISC45: fixed class folders


def _class_folder_images(data: Path, folders: dict[str, str], skipped: list[dict[str, str]],
                         warnings: list[str]) -> list[tuple[Path, int]]:
    """(image, label) below the dataset's own class folders (label = position in ``folders``).

    Anything else at the top (a stray folder or file) and non-image files are skipped with the reason;
    a missing class folder is a warning (the class keeps its index).
    """
    index = {folder: i for i, folder in enumerate(folders)}
    skipped += [{"origin": display_path(p), "reason": f"not one of the dataset's {len(folders)} class folders"}
                for p in sorted(data.iterdir()) if p.name not in index]
    found = []
    for folder, label in index.items():
        if not (data / folder).is_dir():
            warnings.append(f"class folder {display_path(data / folder)} is missing")
            continue
        for path in sorted(p for p in (data / folder).rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append((path, label))
            else:
                reason = f"not an image file (extension {path.suffix or 'none'!r})"
                skipped.append({"origin": display_path(path), "reason": reason})
    return found


@SOURCES.register("eurosat")
def open_eurosat(spec: str, argument: str, download: bool = False) -> Source:
    """``eurosat:ROOT``: RGB EuroSAT in ``ROOT/eurosat/2750``; no official split (use ``test_fraction``)."""
    root = _root(spec, argument)
    data = root / "eurosat" / "2750"
    _ensure_layout(spec, root, [data], download, "EuroSAT")
    skipped: list[dict[str, str]] = []
    warnings: list[str] = []
    entries = [_file_entry("train", data, path, label)
               for path, label in _class_folder_images(data, EUROSAT_FOLDER_NAMES, skipped, warnings)]
    return _assemble(spec, EUROSAT_CLASSES, entries, ["train"], own_splits=False, skipped=skipped, warnings=warnings)


def _resisc45_split_lists(spec: str, root: Path) -> dict[str, str] | None:
    """``image file name -> split`` from torchgeo's ``resisc45-{train,val,test}.txt``; None without them."""
    files = {split: root / f"resisc45-{split}.txt" for split in SPLITS}
    absent = [display_path(f) for f in files.values() if not f.is_file()]
    if len(absent) == len(files):
        return None
    if absent:
        raise ValueError(f"{spec}: torchgeo's RESISC45 split needs all three split files; "
                         f"missing {', '.join(absent)}")
    split_of: dict[str, str] = {}
    for split, file in files.items():
        for name in file.read_text(encoding="utf-8").split():
            split_of.setdefault(name, split)  # a name in two lists stays in the first, as it is read first
    return split_of


@SOURCES.register("resisc45")
def open_resisc45(spec: str, argument: str, download: bool = False, split_file: str = "") -> Source:
    """``resisc45:ROOT``: ``ROOT/NWPU-RESISC45/<class>/``; the splits of ``split_file`` (ELEVATER's) when
    given, else torchgeo's split files in ROOT when there, else none."""
    root = _root(spec, argument)
    data = root / "NWPU-RESISC45"
    if not data.is_dir():
        why = "download=true cannot fetch it: torchvision has no RESISC45 class" if download else "it is not there"
        raise FileNotFoundError(
            f"{spec}: {display_path(data)} does not exist ({why}). Download NWPU-RESISC45 yourself, e.g. with "
            f"torchgeo: `torchgeo.datasets.RESISC45('{root}', download=True)` (which also fetches the split files "
            f"resisc45-{{train,val,test}}.txt), so that {display_path(data)}/<class>/<image>.jpg exists"
        )
    skipped: list[dict[str, str]] = []
    warnings: list[str] = []
    if split_file:
        found = _class_folder_images(data, RESISC45_FOLDER_NAMES, skipped, warnings)
        images = {path.name: (path, label) for path, label in found}
        if len(images) < len(found):
            raise ValueError(f"{spec}: {display_path(data)} holds two images of one file name; split_file matches "
                             "by file name: keep one copy")
        entries, splits = _entries_from_split_file(spec, split_file, images, data, RESISC45_CLASSES, skipped,
                                                   folders=RESISC45_FOLDER_NAMES)
        return _assemble(spec, RESISC45_CLASSES, entries, splits, own_splits=True, skipped=skipped,
                         warnings=warnings)
    split_of = _resisc45_split_lists(spec, root)
    entries = []
    for path, label in _class_folder_images(data, RESISC45_FOLDER_NAMES, skipped, warnings):
        split = "train" if split_of is None else split_of.get(path.name)
        if split is None:
            skipped.append({"origin": display_path(path), "reason": "not listed in resisc45-{train,val,test}.txt"})
        else:
            entries.append(_file_entry(split, data, path, label))
    if split_of is not None:
        unseen = len(set(split_of) - {Path(e.rel).name for e in entries})
        if unseen:
            warnings.append(f"{unseen} image(s) listed in {display_path(root)}/resisc45-*.txt "
                            f"are not under {display_path(data)}")
    splits = ["train"] if split_of is None else list(SPLITS)
    return _assemble(spec, RESISC45_CLASSES, entries, splits, own_splits=split_of is not None, skipped=skipped,
                     warnings=warnings)
