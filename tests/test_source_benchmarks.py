"""The benchmark sources read the layouts torchvision/torchgeo leave on disk, with the official splits and the
class names prompts use; each test writes a tiny but real copy of a layout (pickles, JPEGs, .mat files)."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from zmdist.cli import main as cli_main
from zmdist.data.benchmark_classes import (
    CIFAR10_CLASSES, CIFAR100_CLASSES, DTD_CLASSES, EUROSAT_CLASSES, EUROSAT_FOLDER_NAMES, FLOWERS102_CLASSES,
    RESISC45_CLASSES, RESISC45_FOLDER_NAMES,
)
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.data.sources import Source, open_source
from zmdist.teacher.templates import get_templates

CIFAR10_TRAIN_LABELS = {1: [0, 9], 2: [1, 2], 3: [3, 4], 4: [5, 6], 5: [7, 8]}  # two rows per data_batch_N
CIFAR10_TEST_LABELS = [9, 0, 5]


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _as_chw(row: np.ndarray) -> np.ndarray:
    """What a CIFAR row must decode to (HWC), written independently of the code under test."""
    return np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)], axis=-1)


def fake_cifar10(root: Path) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` as the official archive unpacks (str keys), 10 train + 3 test rows."""
    base = root / "cifar-10-batches-py"
    arrays = {}
    batches = {f"data_batch_{i}": labels for i, labels in CIFAR10_TRAIN_LABELS.items()} | {"test_batch": CIFAR10_TEST_LABELS}
    for seed, (name, labels) in enumerate(batches.items()):
        arrays[name] = _rows(len(labels), seed)
        _pickle(base / name, {"batch_label": name, "labels": labels, "data": arrays[name],
                              "filenames": [f"img_{i}.png" for i in range(len(labels))]})
    _pickle(base / "batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_vis": 3072})
    return arrays


def fake_cifar100(root: Path) -> dict[str, np.ndarray]:
    """``root/cifar-100-python`` with bytes keys and names (as ``encoding="bytes"`` readers see them)."""
    base = root / "cifar-100-python"
    arrays = {"train": _rows(6, 10), "test": _rows(4, 11)}
    labels = {"train": [0, 1, 99, 42, 1, 58], "test": [83, 0, 1, 99]}
    for name in arrays:
        _pickle(base / name, {b"data": arrays[name], b"fine_labels": labels[name], b"coarse_labels": [0] * len(labels[name])})
    _pickle(base / "meta", {b"fine_label_names": [n.replace(" ", "_").encode() for n in CIFAR100_CLASSES],
                            b"coarse_label_names": [b"x"] * 20})
    return arrays


def _jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


def _close(img: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(np.asarray(img.convert("RGB"), dtype=int) - colour).max() <= 4)  # JPEG is lossy


def _by_key(src: Source) -> dict[str, tuple[str, object]]:
    """``key -> (split, sample)``, asserting keys are unique across all splits."""
    pairs = [(s.key, (split, s)) for split, samples in src.samples.items() for s in samples]
    assert len({k for k, _ in pairs}) == len(pairs)
    return dict(pairs)


def _sizes(src: Source) -> dict[str, int]:
    return {split: len(samples) for split, samples in src.samples.items()}


# ---------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_pickled_batches_with_the_official_splits(tmp_path):
    """Catches swapped train/test files, a wrong CHW->HWC decode (pixels, transposed images) or labels."""
    arrays = fake_cifar10(tmp_path)
    src = open_source(f"cifar10:{tmp_path}")
    assert src.own_splits and src.classes == CIFAR10_CLASSES
    assert _sizes(src) == {"train": 10, "test": 3}
    samples = _by_key(src)
    split, sample = samples["data_batch_2__00001"]
    assert split == "train" and sample.label == 2 and src.classes[sample.label] == "bird"
    img = sample.loader()
    assert img.mode == "RGB" and img.size == (32, 32)
    row = arrays["data_batch_2"][1]
    assert img.getpixel((5, 3)) == (row[3 * 32 + 5], row[1024 + 3 * 32 + 5], row[2048 + 3 * 32 + 5])
    assert np.array_equal(np.asarray(img), _as_chw(row))
    assert [samples[f"test_batch__{i:05d}"][1].label for i in range(3)] == CIFAR10_TEST_LABELS
    assert {samples[f"test_batch__{i:05d}"][0] for i in range(3)} == {"test"}
    assert sample.origin.endswith("data_batch_2#1")


def test_cifar100_reads_fine_labels_and_bytes_keys(tmp_path):
    arrays = fake_cifar100(tmp_path)
    src = open_source(f"cifar100:{tmp_path}")
    assert src.classes == CIFAR100_CLASSES and src.classes[1] == "aquarium fish"
    assert _sizes(src) == {"train": 6, "test": 4}
    samples = _by_key(src)
    assert samples["train__00001"][1].label == 1 and samples["train__00005"][1].label == 58
    assert src.classes[samples["test__00003"][1].label] == "worm"
    assert np.array_equal(np.asarray(samples["test__00002"][1].loader()), _as_chw(arrays["test"][2]))


def test_cifar_files_that_are_not_the_official_ones_are_refused(tmp_path):
    """Catches names silently attached to the wrong labels (a meta file with other names or another
    order) and rows of the wrong width (which would decode as garbage)."""
    fake_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": list(reversed(CIFAR10_CLASSES))})
    with pytest.raises(ValueError, match=r"batches\.meta.*label_names"):
        open_source(f"cifar10:{tmp_path}")
    fake_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch.*3072"):
        open_source(f"cifar10:{tmp_path}")


# ---------------------------------------------------------------- Flowers102, DTD


def fake_flowers(root: Path) -> Path:
    """6 JPEGs (image i is (10+i) x 8, grey level 40*i), 1-based labels, setid with 2/1/3 images."""
    base = root / "flowers-102"
    for i in range(1, 7):
        _jpeg(base / "jpg" / f"image_{i:05d}.jpg", (10 + i, 8), (40 * i, 40 * i, 40 * i))
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 102, 5, 5, 1, 77]], dtype=np.uint8)})
    savemat(base / "setid.mat", {"trnid": np.array([[2, 1]], np.uint16), "valid": np.array([[3]], np.uint16),
                                 "tstid": np.array([[4, 5, 6]], np.uint16)})
    return base


def test_flowers102_uses_setid_splits_and_one_based_labels(tmp_path):
    """Catches a lost 1-based shift (every flower named after its neighbour), split ids mixed up, and a
    one-image split lost to scipy's squeeze (a scalar, not a list)."""
    base = fake_flowers(tmp_path)
    src = open_source(f"flowers102:{tmp_path}")
    assert src.own_splits and src.classes == FLOWERS102_CLASSES
    assert _sizes(src) == {"train": 2, "val": 1, "test": 3}
    samples = _by_key(src)
    names = {key: src.classes[sample.label] for key, (_, sample) in samples.items()}
    assert names["jpg__image_00001"] == "pink primrose" and names["jpg__image_00002"] == "blackberry lily"
    assert names["jpg__image_00003"] == "english marigold" and names["jpg__image_00006"] == "passion flower"
    assert {key: split for key, (split, _) in samples.items()} == {
        "jpg__image_00001": "train", "jpg__image_00002": "train", "jpg__image_00003": "val",
        "jpg__image_00004": "test", "jpg__image_00005": "test", "jpg__image_00006": "test"}
    img = samples["jpg__image_00004"][1].loader()
    assert img.size == (14, 8) and _close(img, (160, 160, 160))

    (base / "jpg" / "image_00005.jpg").unlink()
    src = open_source(f"flowers102:{tmp_path}")
    assert _sizes(src)["test"] == 2
    assert [(Path(s["origin"]).name, s["reason"]) for s in src.skipped] == [("image_00005.jpg", "missing file")]


def fake_dtd(root: Path) -> Path:
    data = root / "dtd" / "dtd"
    colours = {"banded": (200, 0, 0), "polka-dotted": (0, 200, 0), "zigzagged": (0, 0, 200)}
    for cls, colour in colours.items():
        for i in (1, 2):
            _jpeg(data / "images" / cls / f"{cls}_{i:04d}.jpg", (6, 5), colour)
    lists = {
        "train1": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0001.jpg", ""],
        "val1": ["polka-dotted/polka-dotted_0001.jpg"],
        "test1": ["banded/banded_0002.jpg", "zigzagged/zigzagged_0002.jpg", "zigzagged/missing.jpg", "notaclass/x.jpg",
                  "banded/banded_0001.jpg"],  # also in train1: kept there once
        "train2": ["zigzagged/zigzagged_0002.jpg"],
        "val2": ["banded/banded_0001.jpg"],
        "test2": ["banded/banded_0002.jpg", "polka-dotted/polka-dotted_0001.jpg", "zigzagged/zigzagged_0001.jpg"],
    }
    (data / "labels").mkdir(parents=True)
    for name, lines in lists.items():
        (data / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return data


def test_dtd_reads_the_partition_lists(tmp_path):
    """Catches labels not taken from the class folder, splits from the wrong list, a partition ignored, and
    an image listed in two splits (it would leak test images into training, or break the keys)."""
    fake_dtd(tmp_path)
    src = open_source(f"dtd:{tmp_path}")
    assert src.own_splits and src.classes == DTD_CLASSES
    assert _sizes(src) == {"train": 2, "val": 1, "test": 2}
    samples = _by_key(src)
    split, sample = samples["zigzagged__zigzagged_0001"]
    assert split == "train" and src.classes[sample.label] == "zigzagged" and sample.label == 46
    split, sample = samples["polka-dotted__polka-dotted_0001"]
    assert split == "val" and sample.label == 30
    img = sample.loader()
    assert img.size == (6, 5) and _close(img, (0, 200, 0))
    reasons = sorted(s["reason"] for s in src.skipped)
    assert reasons == ["'notaclass/x.jpg' is not <class>/<file> of one of DTD's 47 classes",
                       "listed again (already in split 'train')", "missing file"]

    src2 = open_source(f"dtd:{tmp_path}#2")
    assert _sizes(src2) == {"train": 1, "val": 1, "test": 3}
    assert _by_key(src2)["zigzagged__zigzagged_0002"][0] == "train"
    with pytest.raises(ValueError, match="partitions 1..10"):
        open_source(f"dtd:{tmp_path}#11")


# ---------------------------------------------------------------- EuroSAT, RESISC45


def test_eurosat_has_no_own_split_and_readable_names(tmp_path):
    """Catches EuroSAT claiming an official split (test_fraction would then be refused), folder names
    leaking into the classes, and strays not listed as skipped."""
    data = tmp_path / "eurosat" / "2750"
    for folder, n in {"AnnualCrop": 2, "HerbaceousVegetation": 1, "SeaLake": 2}.items():
        for i in range(1, n + 1):
            _jpeg(data / folder / f"{folder}_{i}.jpg", (4, 4), (10, 120, 250))
    (data / "SeaLake" / "readme.txt").write_text("not an image")
    (data / "Extra").mkdir()
    src = open_source(f"eurosat:{tmp_path}")
    assert not src.own_splits and src.classes == EUROSAT_CLASSES and _sizes(src) == {"train": 5}
    samples = _by_key(src)
    assert src.classes[samples["AnnualCrop__AnnualCrop_2"][1].label] == "annual crop land"
    assert src.classes[samples["HerbaceousVegetation__HerbaceousVegetation_1"][1].label] == "brushland or shrubland"
    assert src.classes[samples["SeaLake__SeaLake_1"][1].label] == "lake or sea"
    assert _close(samples["SeaLake__SeaLake_1"][1].loader(), (10, 120, 250))
    assert sorted(Path(s["origin"]).name for s in src.skipped) == ["Extra", "readme.txt"]
    assert len(src.warnings) == 7  # the 7 class folders this fake copy lacks
    held_out = src.splits(test_fraction=0.5, seed=0)
    assert {k: len(v) for k, v in held_out.items()} == {"train": 2, "test": 3}  # one per class: stratified


def fake_resisc45(root: Path) -> None:
    for folder, n in {"airplane": 3, "sea_ice": 2, "wetland": 1}.items():
        for i in range(1, n + 1):
            _jpeg(root / "NWPU-RESISC45" / folder / f"{folder}_{i:03d}.jpg", (8, 8), (90, 90, 30))


def test_resisc45_without_and_with_torchgeo_split_files(tmp_path):
    fake_resisc45(tmp_path)
    src = open_source(f"resisc45:{tmp_path}")
    assert not src.own_splits and src.classes == RESISC45_CLASSES and _sizes(src) == {"train": 6}
    samples = _by_key(src)
    assert src.classes[samples["sea_ice__sea_ice_002"][1].label] == "sea ice"
    assert samples["wetland__wetland_001"][1].label == 44

    lists = {"train": "airplane_001.jpg\nsea_ice_001.jpg\nwetland_001.jpg\n", "val": "airplane_002.jpg\n",
             "test": "sea_ice_002.jpg\nghost_001.jpg\n"}
    for split, text in lists.items():
        (tmp_path / f"resisc45-{split}.txt").write_text(text)
    src = open_source(f"resisc45:{tmp_path}")
    assert src.own_splits and _sizes(src) == {"train": 3, "val": 1, "test": 1}
    samples = _by_key(src)
    assert samples["airplane__airplane_002"][0] == "val" and samples["sea_ice__sea_ice_002"][0] == "test"
    assert [Path(s["origin"]).name for s in src.skipped] == ["airplane_003.jpg"]
    assert any("1 image(s) listed" in w for w in src.warnings)  # ghost_001.jpg

    (tmp_path / "resisc45-val.txt").unlink()
    with pytest.raises(ValueError, match="resisc45-val.txt"):
        open_source(f"resisc45:{tmp_path}")


def test_flowers102_split_file_gives_elevaters_splits_and_checks_its_labels(tmp_path):
    """ELEVATER's Flowers102 lists (``train.zip@000/image_00002.jpg 101``) replace setid.mat: catches the
    archive prefix kept (no image found), labels read from the list instead of checked, and an image no
    list names silently kept or dropped."""
    fake_flowers(tmp_path)
    lists = tmp_path / "framed" / "Flowers102"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("train.zip@000/image_00002.jpg 101\ntrain.zip@001/image_00003.jpg 4\n")
    (lists / "test.txt").write_text("test.zip@000/image_00001.jpg 0\n\ntest.zip@002/image_00006.jpg 76\n")
    src = open_source(f"flowers102:{tmp_path}", split_file=str(lists / "{split}.txt"))
    assert src.own_splits and src.classes == FLOWERS102_CLASSES
    assert _sizes(src) == {"train": 2, "test": 2}
    samples = _by_key(src)
    assert samples["jpg__image_00002"][0] == "train" and samples["jpg__image_00002"][1].label == 101
    assert samples["jpg__image_00006"][0] == "test"
    assert src.classes[samples["jpg__image_00006"][1].label] == "passion flower"
    unlisted = "not listed in any split_file split"
    assert sorted((Path(s["origin"]).name, s["reason"]) for s in src.skipped) == [
        ("image_00004.jpg", unlisted), ("image_00005.jpg", unlisted)]

    (lists / "train.txt").write_text("train.zip@000/image_00002.jpg 3\n")  # another class order
    with pytest.raises(ValueError, match=r"train.txt:1: image_00002.jpg has label 3 .* the dataset labels it 101"):
        open_source(f"flowers102:{tmp_path}", split_file=str(lists / "{split}.txt"))
    (lists / "train.txt").write_text("train.zip@000/image_00099.jpg 3\n")
    with pytest.raises(ValueError, match=r"lists 1 image\(s\) that are not in .*image_00099.jpg, .*train.txt:1"):
        open_source(f"flowers102:{tmp_path}", split_file=str(lists / "{split}.txt"))
    (lists / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.txt does not exist \(train and test split files are needed"):
        open_source(f"flowers102:{tmp_path}", split_file=str(lists / "{split}.txt"))
    with pytest.raises(ValueError, match=r"with \{split\}"):
        open_source(f"flowers102:{tmp_path}", split_file=str(lists / "train.txt"))
    with pytest.raises(ValueError, match="'dtd' takes no split_file"):
        open_source(f"dtd:{tmp_path}", split_file=str(lists / "{split}.txt"))


def test_resisc45_split_file_reads_elevaters_coco_json_and_checks_class_folders(tmp_path):
    fake_resisc45(tmp_path)
    (tmp_path / "resisc45-train.txt").write_text("airplane_001.jpg\n")  # torchgeo's lists: split_file wins
    lists = tmp_path / "RESICS45"
    lists.mkdir()
    coco = lambda *names: json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
                                      "categories": [{"id": 0, "name": "airplane"}]})
    (lists / "train.json").write_text(coco("train.zip@airplane/airplane_001.jpg", "train.zip@sea_ice/sea_ice_002.jpg",
                                           "train.zip@wetland/wetland_001.jpg"))
    (lists / "val.json").write_text(coco("val.zip@airplane/airplane_003.jpg"))
    (lists / "test.json").write_text(coco("test.zip@airplane/airplane_002.jpg", "test.zip@sea_ice/sea_ice_001.jpg"))
    src = open_source(f"resisc45:{tmp_path}", split_file=str(lists / "{split}.json"))
    assert src.own_splits and _sizes(src) == {"train": 3, "val": 1, "test": 2}
    samples = _by_key(src)
    assert samples["sea_ice__sea_ice_002"][0] == "train" and samples["sea_ice__sea_ice_001"][0] == "test"
    assert src.classes[samples["wetland__wetland_001"][1].label] == "wetland" and src.skipped == []

    (lists / "test.json").write_text(coco("test.zip@wetland/airplane_002.jpg"))
    with pytest.raises(ValueError, match=r"test.json: images\[0\]: airplane_002.jpg is listed under class folder "
                                         r"'wetland' but lies in 'airplane'"):
        open_source(f"resisc45:{tmp_path}", split_file=str(lists / "{split}.json"))
    (lists / "test.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="test.json: not a COCO-like split"):
        open_source(f"resisc45:{tmp_path}", split_file=str(lists / "{split}.json"))


def test_zmdist_shard_takes_split_file(tmp_path):
    """The shard stage's split_file reaches the source: the manifest has the lists' splits."""
    fake_flowers(tmp_path)
    (tmp_path / "train.txt").write_text("train.zip@000/image_00001.jpg 0\n")
    (tmp_path / "test.txt").write_text("test.zip@000/image_00002.jpg 101\n")
    out = tmp_path / "shards"
    argv = ["shard", "--source", f"flowers102:{tmp_path}", "--out", str(out), f"split_file={tmp_path}/{{split}}.txt",
            "progress=false"]
    assert cli_main(argv) == 0
    m = Manifest.load(out)
    assert sorted(m.splits) == ["test", "train"] and sum(m.counts("train")) == 1 and sum(m.counts("test")) == 1


# ---------------------------------------------------------------- missing data and download=true


@pytest.mark.parametrize("scheme, expected", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar100", "cifar-100-python/train"),
    ("flowers102", "flowers-102/jpg"), ("dtd", "dtd/dtd/images"), ("eurosat", "eurosat/2750"),
])
def test_a_missing_dataset_names_the_expected_path_and_download(tmp_path, scheme, expected):
    with pytest.raises(FileNotFoundError) as err:
        open_source(f"{scheme}:{tmp_path / 'none'}")
    msg = str(err.value)
    assert str(tmp_path / "none" / expected) in msg and "pass download=true" in msg


def test_resisc45_missing_says_how_to_get_it(tmp_path):
    """torchvision cannot fetch RESISC45: the error must say so and point to a way that works."""
    with pytest.raises(FileNotFoundError) as err:
        open_source(f"resisc45:{tmp_path}", download=True)
    msg = str(err.value)
    assert str(tmp_path / "NWPU-RESISC45") in msg and "torchvision has no RESISC45" in msg and "torchgeo" in msg


@pytest.fixture
def fake_torchvision(monkeypatch) -> list[tuple[str, str, dict]]:
    """A stand-in ``torchvision.datasets`` (no network): CIFAR10 writes the fake copy, DTD writes nothing."""
    calls: list[tuple[str, str, dict]] = []

    def cifar10(root: str, **kwargs) -> None:
        calls.append(("CIFAR10", root, kwargs))
        fake_cifar10(Path(root))

    def dtd(root: str, **kwargs) -> None:
        calls.append(("DTD", root, kwargs))

    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10, datasets.DTD = cifar10, dtd
    module = types.ModuleType("torchvision")
    module.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", module)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls


def test_download_fetches_only_when_missing_and_only_when_asked(tmp_path, fake_torchvision):
    root = tmp_path / "cifar"
    with pytest.raises(FileNotFoundError):
        open_source(f"cifar10:{root}")
    assert fake_torchvision == []  # never fetched unasked
    src = open_source(f"cifar10:{root}", download=True)
    assert fake_torchvision == [("CIFAR10", str(root), {"download": True, "train": True})]
    assert _sizes(src) == {"train": 10, "test": 3}
    open_source(f"cifar10:{root}", download=True)
    assert len(fake_torchvision) == 1  # already there: nothing fetched again
    with pytest.raises(FileNotFoundError, match="did not create it"):
        open_source(f"dtd:{tmp_path / 'dtd-root'}", download=True)


def test_download_errors_are_clear(tmp_path, monkeypatch):
    """Catches a source silently ignoring download=true, and a bare ImportError without torchvision."""
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="'imagefolder' cannot download.*cifar10"):
        open_source(f"imagefolder:{tmp_path / 'pets'}", download=True)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if it were not installed
    with pytest.raises(ImportError, match="download=true fetches CIFAR10 with torchvision"):
        open_source(f"cifar10:{tmp_path / 'cifar'}", download=True)


def test_zmdist_shard_writes_cifar10_with_readable_classes_and_official_splits(tmp_path, fake_torchvision):
    """End to end through the CLI: --download true reaches the source, the manifest has CIFAR's names
    and splits, and the shards hold the exact pixels (PNG) and labels of the pickles."""
    root, out = tmp_path / "cifar", tmp_path / "shards"
    argv = ["shard", "--source", f"cifar10:{root}", "--download", "true", "--out", str(out), "shard_size=4", "progress=false"]
    assert cli_main(argv) == 0
    assert len(fake_torchvision) == 1
    arrays = fake_cifar10(tmp_path / "expected")  # same seeds: the same rows
    m = Manifest.load(out)
    assert m.classes == CIFAR10_CLASSES and sorted(m.splits) == ["test", "train"]
    assert sum(m.counts("train")) == 10 and sum(m.counts("test")) == 3 and len(m.counts("train")) == 3
    records = {r["key"]: r for split in m.splits for p in m.shard_paths(split) for r in iter_shard(p)}
    record = records["data_batch_4__00001"]
    assert record["label"] == 6 and m.classes[record["label"]] == "frog"
    assert np.array_equal(np.asarray(record["image"]), _as_chw(arrays["data_batch_4"][1]))
    assert {k for k in records if k.startswith("test_batch")} == {f"test_batch__{i:05d}" for i in range(3)}
    assert json.loads((out / "summary.json").read_text())["source"] == f"cifar10:{root}"
    assert "download: true" in (out / "config.yaml").read_text()


# ---------------------------------------------------------------- class names and templates


def test_class_name_lists_have_the_official_sizes_and_orders():
    """Catches a dropped, doubled or misplaced name (labels are list positions, so one slip renames every
    class after it)."""
    lists = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES, "flowers102": FLOWERS102_CLASSES,
             "dtd": DTD_CLASSES, "eurosat": EUROSAT_CLASSES, "resisc45": RESISC45_CLASSES}
    assert {k: len(v) for k, v in lists.items()} == {"cifar10": 10, "cifar100": 100, "flowers102": 102, "dtd": 47,
                                                     "eurosat": 10, "resisc45": 45}
    for names in lists.values():
        assert len(set(names)) == len(names) and not any("_" in n for n in names)
    underscored = [n.replace(" ", "_") for n in CIFAR100_CLASSES]
    assert underscored == sorted(underscored)  # the official fine_label_names are alphabetical
    assert DTD_CLASSES == sorted(DTD_CLASSES) and list(RESISC45_FOLDER_NAMES) == sorted(RESISC45_FOLDER_NAMES)
    assert list(EUROSAT_FOLDER_NAMES) == sorted(EUROSAT_FOLDER_NAMES) and len(EUROSAT_FOLDER_NAMES) == 10
    assert FLOWERS102_CLASSES[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert FLOWERS102_CLASSES[-1] == "blackberry lily" and FLOWERS102_CLASSES[76] == "passion flower"


@pytest.mark.parametrize("name, count, first", [
    ("cifar10", 18, "a photo of a {}."), ("cifar100", 18, "a photo of a {}."),
    ("flowers102", 1, "a photo of a {}, a type of flower."), ("dtd", 8, "a photo of a {} texture."),
    ("eurosat", 3, "a centered satellite photo of {}."), ("resisc45", 18, "satellite imagery of {}."),
])
def test_benchmark_template_sets_resolve(name, count, first):
    templates = get_templates(name)
    assert len(templates) == len(set(templates)) == count and templates[0] == first
    assert get_templates("zeromatch") == ["This is a photo of {}."]  # the existing sets are unchanged
