"""Human labels in (`train labels=FILE.csv`, `select labelled=FILE.csv`) and what `select` hands an annotator
(`to_label.csv`, the contact sheet).

Real shards: colour images written by `zmdist shard` from a CSV source (so their origins are real file paths),
and tiny shards without any label (tests/conftest.py); the select runs embed them with the random micro teacher."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_uneven_shards
from zmdist.config import ConfigError, load_config
from zmdist.data.labels_csv import read_labels_csv
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.data.shards import write_shards
from zmdist.formats import EmbeddingShard
from zmdist.selection import annotate
from zmdist.stages import embed, select, train
from zmdist.train.augment import make_views
from zmdist.train.data import LabelledSet

CLASSES = ["cat", "dog", "bird"]
TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random", "num_workers=0", "progress=false"]
SELECT_FAST = ["progress=false", "probe.steps=5", "rules.kmeans_iterations=5", "budget=4"]
TRAIN_FAST = ["method.name=supervised", "eval_split=train", "student=cnn-tiny", "img_size=8", "batch_size=8",
              "hflip=false", "num_workers=0", "progress=false", "warmup_steps=0", "checkpoint_every=0", "log_every=1"]


def _write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


# -- the parser --------------------------------------------------------------------------------------------------


def test_names_indices_bom_blank_lines_extra_columns_and_repeated_rows_are_read(tmp_path):
    """Excel's BOM is not part of the first column's name; `to_label.csv`'s extra columns are ignored; a row
    repeated with the same label (by name or by index) counts once."""
    path = _write(tmp_path / "l.csv", "key,origin,label\n\ns1,/a.png,dog\n s2 , /b.png , 2 \n,,\ns1,/a.png,1\n",
                  bom=True)
    labels = read_labels_csv(path, CLASSES)
    assert dict(labels) == {"s1": 1, "s2": 2}
    assert labels.lines == {"s1": 3, "s2": 4}


def test_a_class_name_wins_over_an_index(tmp_path):
    """Class names that are digits: "1" is the class named "1" (index 0), not index 1; columns in any order."""
    path = _write(tmp_path / "l.csv", "label,key\n1,a\n2,b\n")
    assert dict(read_labels_csv(path, ["1", "0", "x"])) == {"a": 0, "b": 2}


@pytest.mark.parametrize("text, message", [
    ("key,label\na,cat\nb,dgo\n", r":3: label 'dgo' is not a class of the shard set \(did you mean 'dog'\?\)"),
    ("key,label\na,3\n", r":2: class index 3 is out of range: the shard set has 3 classes \(0\.\.2\)"),
    ("key,label\na,-1\n", r":2: class index -1 is out of range"),
    ("key,label\na,cat\nb,dog\na,bird\n", r":4: key 'a' is labelled 'bird' here but 'cat' on line 2"),
    ("", r":1: the file is empty"),
    ("\n\n", r":1: the file is empty"),
    ("key,label\n\n", r":1: the file has a header but no rows"),
    ("key,class\na,cat\n", r":1: the header has no 'label' column"),
    ("a,cat\nb,dog\n", r":1: the header has no 'key' or 'label' column"),
    ("key,label\na,cat\nb,\n", r":3: key 'b' has no label: fill it in or delete the row"),
    ("key,label\n,cat\n", r":2: the row has no key"),
])
def test_each_bad_file_is_refused_naming_its_line(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.") + message):
        read_labels_csv(path, CLASSES)


def test_unknown_keys_are_named_by_line_and_a_missing_file_by_path(tmp_path):
    path = _write(tmp_path / "l.csv", "key,label\na,cat\nzz,dog\nb,cat\nyy,cat\n")
    with pytest.raises(ValueError, match=r"l\.csv:3: key 'zz' is not in split 'train' .*1 more unknown keys, e\.g\. "
                                         r"\['yy'\]"):
        read_labels_csv(path, CLASSES).require_known({"a", "b"}, "split 'train'")
    with pytest.raises(FileNotFoundError, match="nope.csv: no such labels file"):
        read_labels_csv(tmp_path / "nope.csv", CLASSES)


# -- shards ------------------------------------------------------------------------------------------------------

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory) -> Path:
    """24 images, 8 per class, each its class's pure colour with a little per-image noise, sharded by `zmdist
    shard`'s writer from a CSV source (classes: blue, green, red; shard size 10)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in COLOURS.items():
        for i in range(8):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 21, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{name}{i}.png")
            rows.append(f"{name}{i}.png,{name}")
    _write(root / "images.csv", "path,label\n" + "\n".join(rows) + "\n")
    write_shards(f"csv:{root / 'images.csv'}", root / "shards", shard_size=10, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def colour_emb(colour_shards) -> Path:
    """The colour shards' embeddings by the random micro teacher (beside the shards)."""
    embed.run(load_config(embed.Config, None, [f"shards={colour_shards}", *TEACHER]), colour_shards.parent / "emb")
    return colour_shards.parent / "emb"


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    """Two shards of 12 samples without any label (classes c0, c1, c2), and their embeddings (labels -1)."""
    root = tmp_path_factory.mktemp("unlabelled")
    write_uneven_shards(root / "shards", [12, 12], labelled=False)
    embed.run(load_config(embed.Config, None, [f"shards={root / 'shards'}", *TEACHER]), root / "emb")
    return root


def _truth(shards: Path) -> dict[str, int]:
    manifest = Manifest.load(shards)
    return {s["key"]: s["label"] for path in manifest.shard_paths("train") for s in iter_shard(path)}


def _shifted_csv(shards: Path, path: Path) -> dict[str, int]:
    """A labels file giving every training image the next class's name: label (y + 1) % 3."""
    classes = Manifest.load(shards).classes
    shifted = {k: (y + 1) % len(classes) for k, y in _truth(shards).items()}
    _write(path, "key,label\n" + "".join(f"{k},{classes[y]}\n" for k, y in sorted(shifted.items())))
    return shifted


def test_labelled_set_yields_the_files_labels_not_the_shards(colour_shards, unlabelled, tmp_path):
    """The data path: shifted labels come out of the labelled set and its batches; shards without labels work
    with a labels file and are refused without one; a key the split lacks is named by its line."""
    manifest = Manifest.load(colour_shards)
    shifted = _shifted_csv(colour_shards, tmp_path / "shifted.csv")
    human = read_labels_csv(tmp_path / "shifted.csv", manifest.classes)
    views = make_views(8, hflip=False)
    labelled = LabelledSet(manifest, "train", sorted(human), views, 0, labels=human)
    assert dict(zip(labelled.keys, labelled.labels)) == shifted != _truth(colour_shards)

    plain = Manifest.load(unlabelled / "shards")
    _write(tmp_path / "u.csv", "key,label\ns0_0,c2\ns1_5,0\n")
    human = read_labels_csv(tmp_path / "u.csv", plain.classes)
    got = LabelledSet(plain, "train", sorted(human), views, 0, labels=human)
    assert dict(zip(got.keys, got.labels)) == {"s0_0": 2, "s1_5": 0}
    with pytest.raises(ValueError, match=r"'s0_0' \(shard train-000000\.tar\) has no label in the shards: give its "
                                         r"label with labels=FILE"):
        LabelledSet(plain, "train", ["s0_0"], views, 0)
    _write(tmp_path / "typo.csv", "key,label\ns0_0,c2\ns9_9,c1\n")
    human = read_labels_csv(tmp_path / "typo.csv", plain.classes)
    with pytest.raises(ValueError, match=r"typo\.csv:3: key 's9_9' is not in split 'train' of the shards"):
        LabelledSet(plain, "train", sorted(human), views, 0, labels=human)


def test_training_on_shifted_labels_shifts_the_predictions(colour_shards, tmp_path, one_torch_thread):
    """End to end: a student trained on labels (y + 1) % 3 predicts the shifted class of the training images
    (the confusion matrix is against the shards' labels, so its mass sits beside the diagonal); the run
    records the labels it used."""
    shifted = _shifted_csv(colour_shards, tmp_path / "shifted.csv")
    cfg = load_config(train.Config, None, [f"shards={colour_shards}", f"labels={tmp_path / 'shifted.csv'}",
                                           *TRAIN_FAST, "steps=30", "lr=0.05", "eval_every=30"])
    res = train.run(cfg, tmp_path / "run")
    confusion = np.array(res["confusion_matrix"])
    assert confusion.sum() == 24
    assert sum(confusion[y, (y + 1) % 3] for y in range(3)) >= 22, confusion
    assert res["accuracy"] <= 0.1
    with open(tmp_path / "run" / "labels.csv", newline="") as fh:
        recorded = {r["key"]: Manifest.load(colour_shards).classes.index(r["label"]) for r in csv.DictReader(fh)}
    assert recorded == shifted


def test_train_refuses_labels_with_labelled_keys_and_names_an_unknown_key_before_training(colour_shards, tmp_path):
    keys = _write(tmp_path / "keys.txt", "x\n")
    labels = _write(tmp_path / "l.csv", "key,label\nnot_a_key,red\n")
    with pytest.raises(ConfigError, match=r"labels=.*l\.csv and labelled_keys=.*keys\.txt: both say"):
        train.run(load_config(train.Config, None, [f"shards={colour_shards}", f"labels={labels}",
                                                    f"labelled_keys={keys}", *TRAIN_FAST, "steps=2", "eval_every=2"]),
                  tmp_path / "both")
    assert not (tmp_path / "both").exists()
    with pytest.raises(ValueError, match=r"l\.csv:2: key 'not_a_key' is not in split 'train' of the shards"):
        train.run(load_config(train.Config, None, [f"shards={colour_shards}", f"labels={labels}", *TRAIN_FAST,
                                                    "steps=2", "eval_every=2"]), tmp_path / "typo")
    assert not (tmp_path / "typo" / "final.safetensors").exists()


# -- select --------------------------------------------------------------------------------------------------------


def _select(emb: Path, out: Path, *overrides: str) -> dict:
    return select.run(load_config(select.Config, None, [f"embeddings={emb}", *SELECT_FAST, *overrides]), out)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_select_takes_csv_labels_where_the_embeddings_have_none(colour_emb, tmp_path):
    """margin trains its probe on the labels so far. On embeddings whose labels are all -1 (rewritten by the
    project's writer) a key list is refused; a CSV runs, and its labels steer the picks: the colour names and
    the same keys with two classes swapped choose differently."""
    emb = tmp_path / "emb"
    shutil.copytree(colour_emb, emb)
    for path in emb.glob("train-*.npz"):
        shard = EmbeddingShard.load(path)
        EmbeddingShard(shard.keys, np.full_like(shard.labels, -1), shard.embeddings).save(path)
    truth = _truth(colour_emb.parent / "shards")
    keys = sorted(truth)[::4]
    _write(tmp_path / "keys.txt", "\n".join(keys) + "\n")
    with pytest.raises(ValueError, match=r"keys without a label in the embedding files.*labelled=FILE\.csv"):
        _select(emb, tmp_path / "txt", "strategy=margin", f"labelled={tmp_path / 'keys.txt'}")
    picks = []
    for name, swap in {"true": [0, 1, 2], "swapped": [1, 0, 2]}.items():
        path = _write(tmp_path / f"{name}.csv", "key,label\n" + "".join(f"{k},{swap[truth[k]]}\n" for k in keys))
        res = _select(emb, tmp_path / name, "strategy=margin", f"labelled={path}", "budget=8", "probe.steps=40")
        chosen = (tmp_path / name / select.SELECTED_FILE).read_text().split()
        assert res["labelled_before"] == len(keys) and res["labels_from"] == "labelled= CSV"
        assert len(chosen) == 8 and not set(chosen) & set(keys)
        picks.append(chosen)
    assert picks[0] != picks[1]
    _write(tmp_path / "typo.csv", "key,label\nnope,red\n")
    with pytest.raises(ValueError, match=r"typo\.csv:2: key 'nope' is not in split 'train' of the embeddings"):
        _select(emb, tmp_path / "typo", "strategy=margin", f"labelled={tmp_path / 'typo.csv'}")


def test_to_label_csv_round_trips_into_select_and_train(colour_shards, colour_emb, tmp_path, one_torch_thread):
    """to_label.csv lists the chosen keys with the image files they came from; filled in, it is a labels file
    for the next select (a label-based strategy) and for train."""
    _select(colour_emb, tmp_path / "r0", "strategy=centroid", "budget=6")
    rows = _rows(tmp_path / "r0" / select.TO_LABEL_FILE)
    chosen = (tmp_path / "r0" / select.SELECTED_FILE).read_text().split()
    assert list(rows[0]) == ["key", "origin", "shard", "label"] and [r["key"] for r in rows] == chosen
    truth = _truth(colour_shards)
    classes = Manifest.load(colour_shards).classes
    for r in rows:
        assert r["label"] == "" and r["shard"].startswith("train-") and r["shard"].endswith(".tar")
        assert Path(r["origin"]).name.startswith(classes[truth[r["key"]]])  # blue3.png for a blue key
        assert Path(r["origin"]).is_file()
        r["label"] = classes[truth[r["key"]]]  # the annotator
    with open(tmp_path / "filled.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = _select(colour_emb, tmp_path / "r1", "strategy=dropquery", f"labelled={tmp_path / 'filled.csv'}")
    assert res["labelled_before"] == 6
    assert not set((tmp_path / "r1" / select.SELECTED_FILE).read_text().split()) & set(chosen)
    out = train.run(load_config(train.Config, None, [f"shards={colour_shards}", f"labels={tmp_path / 'filled.csv'}",
                                                     *TRAIN_FAST, "steps=2", "eval_every=2"]), tmp_path / "train")
    assert sorted((tmp_path / "train" / "labelled_keys.txt").read_text().split()) == sorted(chosen)
    assert out["method"] == "supervised"


def test_contact_sheet_has_one_tile_per_chosen_key(unlabelled, tmp_path):
    """Each tile's centre is the colour of its key's image (red = j, green = i for key s{i}_{j}), in the order
    of selected_keys.txt; the tiles after the last are empty; the HTML page names every key and origin."""
    res = _select(unlabelled / "emb", tmp_path / "sheet", "strategy=random", "budget=11", "contact_sheet=true")
    chosen = (tmp_path / "sheet" / select.SELECTED_FILE).read_text().split()
    assert res["contact_sheet"] == [str(tmp_path / "sheet" / select.SHEET_PNG),
                                    str(tmp_path / "sheet" / select.SHEET_HTML)]
    sheet = Image.open(tmp_path / "sheet" / select.SHEET_PNG).convert("RGB")
    assert sheet.size == (8 * (annotate.THUMB + 2 * annotate.PAD), 2 * (annotate.THUMB + annotate.CAPTION
                                                                       + 2 * annotate.PAD))
    for index in range(16):
        left, top, right, bottom = annotate.tile_box(index)
        centre = sheet.getpixel(((left + right) // 2, (top + bottom) // 2))
        if index < len(chosen):
            i, j = map(int, chosen[index][1:].split("_"))
            assert centre == (j, i, 0), (index, chosen[index])
        else:
            assert centre == annotate.BACKGROUND
    page = (tmp_path / "sheet" / select.SHEET_HTML).read_text()
    assert page.count("<figure>") == 11 and all(f"<b>{k}</b><br>test:{k}<br>" in page for k in chosen)
    assert json.loads((tmp_path / "sheet" / "summary.json").read_text())["to_label_file"].endswith("to_label.csv")
    _select(unlabelled / "emb", tmp_path / "plain", "strategy=random", "budget=3")
    assert not (tmp_path / "plain" / select.SHEET_PNG).exists()
