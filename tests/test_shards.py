"""Sources -> shards -> manifest on real files: odd modes, broken files, keys, splits, reruns."""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zmdist.data.images import to_rgb
from zmdist.data.manifest import FORMAT, Manifest, ManifestError
from zmdist.data.reader import iter_shard
from zmdist.data.shards import write_shards
from zmdist.data.sources import holdout_split, make_keys, open_source


def _save(img: Image.Image, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)


def _odd_folder(root: Path) -> dict[str, str | None]:
    """A class-per-folder tree with every awkward case; returns relative path -> expected conversion
    (None: already RGB) for decodable images."""
    rng = np.random.default_rng(0)
    expected: dict[str, str | None] = {}
    for i in range(3):
        _save(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), root / "cat" / f"{i:03d}.jpg")
        expected[f"cat/{i:03d}.jpg"] = None
    _save(Image.new("RGB", (8, 8), (10, 200, 30)), root / "cat" / "x.y.png")
    _save(Image.new("RGB", (8, 8), (30, 200, 10)), root / "cat" / "x_y.PNG")  # key collision + upper-case ext
    expected.update({"cat/x.y.png": None, "cat/x_y.PNG": None})
    _save(Image.new("L", (8, 8), 77), root / "cat" / "gray.png")
    expected["cat/gray.png"] = "L->RGB"
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half opaque white, bottom half transparent white
    _save(Image.fromarray(rgba, "RGBA"), root / "dog" / "alpha.png")
    expected["dog/alpha.png"] = "RGBA->RGB"
    _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), root / "dog" / "cmyk.jpg")
    expected["dog/cmyk.jpg"] = "CMYK->RGB"
    _save(Image.fromarray(np.linspace(1000, 3000, 64).reshape(8, 8).astype(np.uint16)), root / "dog" / "deep.png")
    expected["dog/deep.png"] = "I;16->RGB"
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    _save(palette, root / "dog" / "palette.png")
    expected["dog/palette.png"] = "P->RGB"
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    _save(frames[0], root / "dog" / "anim.gif", save_all=True, append_images=frames[1:])
    expected["dog/anim.gif"] = "P->RGB"
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (root / "dog" / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level file")
    (root / "empty_class").mkdir()
    return expected


def _tar_records(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def test_imagefolder_every_file_written_or_listed(tmp_path):
    root = tmp_path / "pets"
    expected = _odd_folder(root)
    m = write_shards(f"imagefolder:{root}", tmp_path / "out", shard_size=3, progress=False)

    assert m.classes == ["cat", "dog", "empty_class"]
    assert any("empty_class" in w for w in m.warnings)
    assert m.splits.keys() == {"train"}
    n = len(expected)
    assert m.split("train").total == n == m.split("train").labelled
    assert len(m.counts("train")) == math.ceil(n / 3) and m.counts("train")[:-1] == [3] * (len(m.counts("train")) - 1)

    records = {k: v for p in m.shard_paths("train") for k, v in _tar_records(p).items()}
    metas = {k: json.loads(v["json"]) for k, v in records.items()}
    written = {Path(meta["origin"]).relative_to(root).as_posix(): meta for meta in metas.values()}
    skipped = {Path(s["origin"]).relative_to(root).as_posix(): s["reason"] for s in m.skipped}
    every_file = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert written.keys() == expected.keys()
    assert written.keys() | skipped.keys() == every_file and not written.keys() & skipped.keys()
    assert "Truncated" in skipped["dog/broken.jpg"] or "truncated" in skipped["dog/broken.jpg"]
    assert skipped["dog/notes.txt"].startswith("not an image file")
    assert skipped["README.md"] == "not inside a class folder"

    conversions = Counter(c for c in expected.values() if c)
    conversions["multi-frame->first frame"] = 1
    assert m.converted == dict(conversions)

    for key, rec in records.items():  # stored bytes are RGB, labels agree with the folder
        assert Image.open(io.BytesIO(rec["png"])).mode == "RGB"
        folder = Path(metas[key]["origin"]).parent.name
        assert int(rec["cls"]) == metas[key]["label"] == m.classes.index(folder)
        assert metas[key]["key"] == key and "." not in key and "/" not in key
    assert len(records) == len(set(records)) == n
    assert written["cat/000.jpg"]["key"] == "cat__000"
    assert {written["cat/x.y.png"]["key"][:8], written["cat/x_y.PNG"]["key"][:8]} == {"cat__x_y"}

    images = {s["key"]: s["image"] for p in m.shard_paths("train") for s in iter_shard(p)}
    alpha = np.asarray(images[written["dog/alpha.png"]["key"]])
    assert (alpha[:4] == 255).all() and (alpha[4:] == 0).all()  # transparency composited on black
    deep = np.asarray(images[written["dog/deep.png"]["key"]])
    assert deep.min() == 0 and deep.max() == 255  # rescaled by the actual range, not clipped
    assert np.asarray(images[written["dog/palette.png"]["key"]])[0, 0].tolist() == [250, 10, 10]
    assert np.asarray(images[written["dog/anim.gif"]["key"]])[0, 0].tolist() == [255, 0, 0]  # first frame

    assert Manifest.load(tmp_path / "out") == m
    again = write_shards(f"imagefolder:{root}", tmp_path / "again", shard_size=3, progress=False)
    for a, b in zip(m.shard_paths("train"), again.shard_paths("train")):
        assert a.read_bytes() == b.read_bytes()  # same keys, same order, same bytes
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []


def test_refuses_existing_manifest_and_overwrites_cleanly(tmp_path):
    root = tmp_path / "src"
    for i in range(5):
        _save(Image.new("RGB", (4, 4), (i, 0, 0)), root / "a" / f"{i}.png")
    out = tmp_path / "out"
    write_shards(f"imagefolder:{root}", out, shard_size=2, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards(f"imagefolder:{root}", out, progress=False)
    m = write_shards(f"imagefolder:{root}", out, shard_size=5, overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar"] and m.counts("train") == [5]


def test_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in .*zmdist shard"):
        Manifest.load(tmp_path)
    root = tmp_path / "src"
    for i in range(4):
        _save(Image.new("RGB", (4, 4)), root / "a" / f"{i}.png")
    m = write_shards(f"imagefolder:{root}", tmp_path / "out", shard_size=2, progress=False)
    (tmp_path / "out" / "train-000001.tar").unlink()
    with pytest.raises(ManifestError, match="train-000001.tar"):
        Manifest.load(tmp_path / "out")
    raw = m.to_dict() | {"format": "zmdist-shards/0"}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=FORMAT):
        Manifest.load(tmp_path / "out")
    with pytest.raises(KeyError, match="'val' is not in .*has: train"):
        m.counts("val")


def test_imagefolder_with_split_folders(tmp_path):
    root = tmp_path / "ds"
    for split, classes in {"train": ["a", "b"], "val": ["a", "c"]}.items():
        for c in classes:
            _save(Image.new("RGB", (4, 4)), root / split / c / "1.png")
    src = open_source(f"imagefolder:{root}")
    assert src.classes == ["a", "b", "c"] and src.own_splits
    assert {s: [(x.key, x.label) for x in v] for s, v in src.splits().items()} == {
        "train": [("train__a__1", 0), ("train__b__1", 1)],
        "val": [("val__a__1", 0), ("val__c__1", 2)],
    }
    with pytest.raises(ValueError, match="own splits.*test_fraction"):
        src.splits(test_fraction=0.2)


def test_csv_source(tmp_path):
    for name in ["x/1.png", "x/2.png", "3.png", "4.png"]:
        _save(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "list.csv").write_text(
        "path,label\nx/1.png,zebra\nx/2.png,ant\n3.png,\ngone.png,ant\n4.png,zebra\nx/1.png,ant\n"
    )
    m = write_shards(f"csv:{tmp_path / 'imgs' / 'list.csv'}", tmp_path / "out", progress=False)
    assert m.classes == ["ant", "zebra"]
    assert m.split("train").total == 4 and m.split("train").labelled == 3
    reasons = {Path(s["origin"]).name: s["reason"] for s in m.skipped}
    assert reasons == {"gone.png": "missing file", "1.png": "duplicate of line 2"}
    samples = {s["key"]: s["label"] for s in iter_shard(m.shard_paths("train")[0])}
    assert samples == {"x__1": 1, "x__2": 0, "3": -1, "4": 1}
    records = _tar_records(m.shard_paths("train")[0])
    assert "cls" not in records["3"] and json.loads(records["3"]["json"])["label"] is None


def test_csv_split_column_and_bad_header(tmp_path):
    _save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    _save(Image.new("RGB", (4, 4)), tmp_path / "b.png")
    (tmp_path / "s.csv").write_text("path,label,split\na.png,one,train\nb.png,two,test\n")
    src = open_source(f"csv:{tmp_path / 's.csv'}")
    assert src.own_splits and {k: [s.key for s in v] for k, v in src.splits().items()} == {"train": ["a"], "test": ["b"]}
    (tmp_path / "bad.csv").write_text("file,label\na.png,one\n")
    with pytest.raises(ValueError, match=r"bad.csv: needs a header with a 'path' column"):
        open_source(f"csv:{tmp_path / 'bad.csv'}")


def test_make_keys_stable_and_unique():
    paths = ["cat/001.jpg", "a.b.png", "a_b.png", "sp ace/é.png"]
    keys = make_keys(paths)
    assert keys[0] == "cat__001" and keys[3] == "sp_ace___"
    assert keys[1] != keys[2] and keys[1].startswith("a_b_") and keys[2].startswith("a_b_")
    assert make_keys(paths[::-1]) == keys[::-1]  # independent of order


def test_sklearn_digits_stratified_holdout_is_deterministic(tmp_path):
    src = open_source("sklearn-digits")
    assert src.classes[:3] == ["zero", "one", "two"] and len(src.classes) == 10
    split = src.splits(test_fraction=0.2, seed=3)
    assert len(split["train"]) + len(split["test"]) == 1797
    per_class = Counter(s.label for s in src.samples["train"])
    test_per_class = Counter(s.label for s in split["test"])
    assert all(test_per_class[c] == math.floor(n * 0.2 + 0.5) for c, n in per_class.items())
    shuffled = list(src.samples["train"])
    random.Random(1).shuffle(shuffled)
    same = holdout_split(shuffled, 0.2, seed=3)
    assert [s.key for s in same["test"]] == [s.key for s in split["test"]]
    assert [s.key for s in src.splits(0.2, seed=4)["test"]] != [s.key for s in split["test"]]

    m = write_shards(src, tmp_path / "out", shard_size=1000, test_fraction=0.2, seed=3, progress=False)
    assert m.num_classes == 10 and m.converted == {"L->RGB": 1797}
    assert m.counts("train") == [1000, 1797 - 1000 - len(split["test"])] and m.counts("test") == [len(split["test"])]
    first = next(iter_shard(m.shard_paths("test")[0]))
    assert first["image"].size == (8, 8) and first["image"].mode == "RGB" and first["key"].startswith("digits-")
    test_keys = {s["key"] for s in iter_shard(m.shard_paths("test")[0])}
    assert test_keys == {s.key for s in split["test"]}


def test_to_rgb_high_bit_depth_and_float():
    img = Image.fromarray(np.array([[-2.0, 0.0], [2.0, np.nan]], dtype=np.float32))
    rgb, conversion = to_rgb(img)
    assert conversion == "F->RGB" and np.asarray(rgb)[..., 0].tolist() == [[0, 128], [255, 0]]
    flat, _ = to_rgb(Image.fromarray(np.full((2, 2), 7, dtype=np.int32)))
    assert np.asarray(flat).max() == 0
