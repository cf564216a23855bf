"""Damaged inputs are refused by name: non-finite or repeated rows of embedding files, truncated `.npz` and
JSON files, CSVs with a byte-order mark, single-class labelled sets, and `transfer predict` inputs it cannot
honestly predict from.

The embedding runs are real: tiny tar shards (tests/conftest.py) embedded by `zmdist embed` with the random
micro teacher, then damaged with the project's own writer (``EmbeddingShard.save``) or by cutting bytes."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_uneven_shards
from test_stages import zmdist_cli
from zmdist.config import load_config
from zmdist.data.reader import iter_shard
from zmdist.data.shards import write_shards
from zmdist.formats import EmbeddingShard, first_duplicate
from zmdist.stages import al_sim, embed, prompt_tune, select, shard, train, transfer
from zmdist.stages.common import check_run_info, warn_single_class

TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random", "num_workers=0", "progress=false"]
PROMPT_FAST = ["n_ctx=2", "optim.epochs=1", "optim.batch_size=16", "optim.warmup_epochs=0", "progress=false",
               "templates=simple"]
SELECT_FAST = ["progress=false", "probe.steps=5", "rules.kmeans_iterations=5"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Two train shards of 12 samples (keys ``s{i}_{j}``, label ``(i + j) % 3``) and their embeddings."""
    root = tmp_path_factory.mktemp("integrity")
    write_uneven_shards(root / "shards", [12, 12], num_classes=3)
    embed.run(load_config(embed.Config, None, [f"shards={root / 'shards'}", *TEACHER]), root / "emb")
    return root / "emb"


def _copy(tiny_run: Path, tmp_path: Path) -> Path:
    emb = tmp_path / "emb"
    shutil.copytree(tiny_run, emb)
    return emb


def _rewrite(path: Path, **fields: np.ndarray) -> None:
    """Replace fields of an embedding file, written by the project's writer."""
    emb = EmbeddingShard.load(path)
    EmbeddingShard(**{"keys": emb.keys, "labels": emb.labels, "embeddings": emb.embeddings, **fields}).save(path)


def _select(emb: Path, out: Path, *overrides: str) -> dict:
    return select.run(load_config(select.Config, None, [f"embeddings={emb}", "budget=2", *SELECT_FAST, *overrides]),
                      out)


def _prompt_tune(emb: Path, out: Path, *overrides: str) -> dict:
    return prompt_tune.run(load_config(prompt_tune.Config, None, [f"embeddings={emb}", *PROMPT_FAST, *overrides]), out)


def _score(emb: Path, out: Path) -> dict:
    return transfer.run(load_config(transfer.Config, None, [f"embeddings={emb}", "baselines=[]", "progress=false"]),
                        out)


# -- item 3: non-finite embeddings ---------------------------------------------------------------------------------


def test_a_nan_row_is_refused_by_every_reader_naming_file_row_and_key(tiny_run, tmp_path):
    """The issue: prompt-tune wrote an all-NaN classifier with exit 0, select / al-sim took NaN rows. Now the
    loader refuses, so every stage does, and nothing is written."""
    emb = _copy(tiny_run, tmp_path)
    bad = emb / "train-000001.npz"
    vectors = EmbeddingShard.load(bad).embeddings.copy()
    vectors[5] = np.nan
    _rewrite(bad, embeddings=vectors)
    message = r"train-000001.npz: row 5 \(key 's1_5'\) of 'embeddings' holds NaN or inf \(1 of 12 rows.*zmdist embed"
    with pytest.raises(ValueError, match=message):
        EmbeddingShard.load(bad)
    with pytest.raises(ValueError, match=message):
        _prompt_tune(emb, tmp_path / "pt")
    assert not (tmp_path / "pt" / "classifier.npy").exists()
    with pytest.raises(ValueError, match=message):
        _select(emb, tmp_path / "sel", "strategy=centroid")
    assert not (tmp_path / "sel" / select.SELECTED_FILE).exists()
    with pytest.raises(ValueError, match=message):
        al_sim.run(load_config(al_sim.Config, None, [f"embeddings={emb}", "inits=[random]", "strategies=[random]",
                                                     "seeds=[0]", "rounds=1", "progress=false"]), tmp_path / "al")
    with pytest.raises(ValueError, match=message):
        _score(emb, tmp_path / "score")


def test_an_inf_row_is_refused_by_the_prompt_tune_command_with_exit_1(tiny_run, tmp_path):
    emb = _copy(tiny_run, tmp_path)
    bad = emb / "train-000000.npz"
    vectors = EmbeddingShard.load(bad).embeddings.copy()
    vectors[2, 7] = np.inf
    _rewrite(bad, embeddings=vectors)
    proc = zmdist_cli("prompt-tune", f"embeddings={emb}", "--out", str(tmp_path / "pt"), *PROMPT_FAST)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("zmdist prompt-tune: error: ") and "row 2 (key 's0_2')" in last and "train-000000.npz" in last
    assert not (tmp_path / "pt" / "classifier.npy").exists()


# -- item 4: repeated keys -----------------------------------------------------------------------------------------


def test_a_key_twice_in_one_file_is_refused_by_prompt_tune_select_and_transfer_score(tiny_run, tmp_path):
    emb = _copy(tiny_run, tmp_path)
    bad = emb / "train-000000.npz"
    keys = EmbeddingShard.load(bad).keys.copy()
    keys[7] = keys[3]
    _rewrite(bad, keys=keys)
    message = r"train-000000.npz: key 's0_3' appears twice \(rows 3 and 7\).*delete it and rerun `zmdist embed`"
    with pytest.raises(ValueError, match=message):
        _prompt_tune(emb, tmp_path / "pt")
    with pytest.raises(ValueError, match=message):
        _select(emb, tmp_path / "sel", "strategy=random")
    with pytest.raises(ValueError, match=message):
        _score(emb, tmp_path / "score")


def test_a_key_in_two_files_of_a_split_is_refused_naming_both(tiny_run, tmp_path):
    """Each file is fine on its own; the split's key -> row map would silently keep one of the two rows."""
    emb = _copy(tiny_run, tmp_path)
    second = emb / "train-000001.npz"
    keys = EmbeddingShard.load(second).keys.copy()
    keys[2] = "s0_4"
    _rewrite(second, keys=keys)
    EmbeddingShard.load(second)  # no repeat inside the file
    message = r"split 'train': key 's0_4' is in two embedding files, \S*train-000000.npz and \S*train-000001.npz"
    with pytest.raises(ValueError, match=message):
        _select(emb, tmp_path / "sel", "strategy=random")
    with pytest.raises(ValueError, match=message):
        _prompt_tune(emb, tmp_path / "pt")


def test_first_duplicate_finds_the_earliest_repeat_in_row_order():
    assert first_duplicate(np.array(["b", "a", "c", "a", "b"])) == (1, 3)
    assert first_duplicate(np.array(["x", "y", "z"])) is None
    assert first_duplicate(np.array([], dtype=str)) is None


# -- item 7: truncated and garbled files ---------------------------------------------------------------------------


def test_a_truncated_npz_is_named_and_rebuilt_by_rerunning_embed(tiny_run, tmp_path):
    """zipfile.BadZipFile is neither OSError nor ValueError: it escaped the loader's handler. Following the
    message (delete the file, rerun embed) gives the original file back."""
    emb = _copy(tiny_run, tmp_path)
    bad = emb / "train-000001.npz"
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"train-000001.npz is unreadable, truncated or corrupt.*delete it and rerun "
                                         r"`zmdist embed`"):
        _select(emb, tmp_path / "sel", "strategy=random")
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # inside the embeddings array: the zip's CRC check fails
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="train-000001.npz is unreadable, truncated or corrupt"):
        EmbeddingShard.load(bad)
    bad.unlink()
    shards = json.loads((emb / "embed_info.json").read_text())["shards"]
    embed.run(load_config(embed.Config, None, [f"shards={shards}", *TEACHER]), emb)
    assert bad.read_bytes() == whole


def test_a_garbled_embed_info_json_is_named(tiny_run, tmp_path):
    emb = _copy(tiny_run, tmp_path)
    info = emb / "embed_info.json"
    info.write_text(info.read_text()[:40])
    with pytest.raises(ValueError, match=r"embed_info.json is not valid JSON, it is truncated or garbled.*rerun "
                                         r"`zmdist embed` into a fresh folder"):
        _select(emb, tmp_path / "sel", "strategy=random")
    info.write_text("[1, 2]")
    with pytest.raises(ValueError, match="embed_info.json holds a JSON list, not an object"):
        _score(emb, tmp_path / "score")


def test_a_garbled_run_info_file_is_a_clear_refusal(tmp_path):
    info = tmp_path / "run" / "pseudolabel_info.json"
    info.parent.mkdir()
    check_run_info(info, {"teacher_fingerprint": "abc"}, "pseudolabels")
    info.write_bytes(info.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"pseudolabel_info.json is not valid JSON.*records what made the "
                                         r"pseudolabels in .*new --out folder"):
        check_run_info(info, {"teacher_fingerprint": "abc"}, "pseudolabels")


# -- item 9: transfer predict, constant targets, BOM CSVs, single-class labelled sets -----------------------------


def _table(path: Path, forgetting: list[float] | None = None, bom: bool = False) -> Path:
    """x = 0..3, gain = 1, 3, 2, 5 (slope 1.1); forgetting as given."""
    forgetting = forgetting or [0.5, 0.1, 0.2, 0.6]
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "iimm", "gain", "forgetting"])
        for i, (gain, forget) in enumerate(zip([1, 3, 2, 5], forgetting)):
            writer.writerow([f"t{i}", i, gain, forget])
    return path


def _fit(table: Path, out: Path, *overrides: str) -> dict:
    return transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}", *overrides]), out)


def _predict(fit: Path, out: Path, scores: str) -> dict:
    return transfer.run(load_config(transfer.Config, None, ["action=predict", f"fit={fit}", f"scores={scores}"]), out)


def test_a_table_with_a_byte_order_mark_fits_like_one_without(tmp_path):
    plain = _fit(_table(tmp_path / "plain.csv"), tmp_path / "plain")
    marked = _fit(_table(tmp_path / "bom.csv", bom=True), tmp_path / "bom")
    assert (tmp_path / "bom.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert marked["fits"] == plain["fits"] and marked["fits"]["gain"]["slope"] == pytest.approx(1.1)
    (tmp_path / "latin.csv").write_bytes("task,iimm,gain,forgetting\nd\xe9j\xe0,1,2,3\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv is not UTF-8 text .*save it as CSV UTF-8"):
        _fit(tmp_path / "latin.csv", tmp_path / "latin")


def test_a_constant_target_is_refused_naming_it_and_the_others_still_fit(tmp_path):
    """Was: R^2 0 (the mean of equal floats is off by rounding) and a zero-width interval."""
    table = _table(tmp_path / "t.csv", forgetting=[0.1, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match=r"fitting forgetting on iimm: .*every task has the same target value \(0.1\)"):
        _fit(table, tmp_path / "fit")
    fit = _fit(table, tmp_path / "gain-only", "targets=[gain]")
    assert list(fit["fits"]) == ["gain"] and fit["fits"]["gain"]["r2"] == pytest.approx(1 - 2.7 / 8.75)


def test_predict_flags_extrapolation_and_refuses_non_finite_scores(tmp_path, caplog):
    _fit(_table(tmp_path / "t.csv"), tmp_path / "fit")
    fit = tmp_path / "fit" / "fit.json"
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        result = _predict(fit, tmp_path / "pred", "[1.5, 3.2, -0.5, 9]")
    flags = {row["task"]: row["extrapolated"] for row in result["predictions"]}
    assert flags == {"1.5": False, "3.2": False, "-0.5": True, "9": True}  # fitted 0..3, 10% slack = 0.3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "iimm 9 lies outside the fitted tasks' range [0, 3]" in warned[1]
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert [r["extrapolated"] for r in rows] == ["False", "False", "True", "True"]
    saved = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert [p["extrapolated"] for p in saved["predictions"]] == [False, False, True, True]

    with pytest.raises(ValueError, match=r"scores: 'nan' is not a finite number"):
        _predict(fit, tmp_path / "p2", "[nan]")
    summary = tmp_path / "newtask" / "summary.json"
    summary.parent.mkdir()
    summary.write_text('{"task": "newtask", "scores": {"iimm": NaN}}')
    with pytest.raises(ValueError, match=r"scores: task 'newtask' has iimm nan .*not a finite number"):
        _predict(fit, tmp_path / "p3", f"[{summary.parent}]")


def test_a_garbled_fit_json_is_named(tmp_path):
    _fit(_table(tmp_path / "t.csv"), tmp_path / "fit")
    fit = tmp_path / "fit" / "fit.json"
    fit.write_text(fit.read_text()[:-30])
    with pytest.raises(ValueError, match=r"fit.json is not valid JSON.*rerun `zmdist transfer fit"):
        _predict(fit, tmp_path / "pred", "[1.5]")


def test_a_csv_source_with_a_byte_order_mark_shards_with_its_labels(tmp_path):
    """Was: "needs a header with a 'path' column ... found ['\\ufeffpath', 'label']"."""
    for name in ["a.png", "b.png", "c.png"]:
        Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / name)
    (tmp_path / "list.csv").write_text("path,label\na.png,cat\nb.png,dog\nc.png,cat\n", encoding="utf-8-sig")
    manifest = write_shards(f"csv:{tmp_path / 'list.csv'}", tmp_path / "out", progress=False)
    assert manifest.classes == ["cat", "dog"]
    assert {s["key"]: s["label"] for s in iter_shard(manifest.shard_paths("train")[0])} == {"a": 0, "b": 1, "c": 0}
    (tmp_path / "latin.csv").write_bytes("path,label\na.png,ch\xe2t\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv is not UTF-8 text .*save it as CSV UTF-8"):
        shard.run(load_config(shard.Config, None, [f"source=csv:{tmp_path / 'latin.csv'}", "progress=false"]),
                  tmp_path / "out2")


def test_select_warns_when_the_labelled_set_is_one_class(tiny_run, tmp_path, caplog):
    """Keys s0_0, s0_3, s0_6 all have label 0 (class 'c0'); adding s0_1 (class 'c1') silences the warning."""
    one_class = tmp_path / "one.txt"
    one_class.write_text("s0_0\ns0_3\ns0_6\n")
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        _select(tiny_run, tmp_path / "sel", "strategy=entropy", f"labelled={one_class}")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("all 3 labelled samples are of class 'c0' (index 0)" in m and "one.txt" in m for m in warned), warned
    caplog.clear()
    two_classes = tmp_path / "two.txt"
    two_classes.write_text("s0_0\ns0_3\ns0_1\n")
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        _select(tiny_run, tmp_path / "sel2", "strategy=entropy", f"labelled={two_classes}")
    assert not [r for r in caplog.records if "labelled samples are of class" in r.getMessage()]


def test_prompt_tune_warns_when_its_labelled_rows_are_one_class(tiny_run, tmp_path, caplog):
    """TRZSL with one seen class: every labelled row is class 'c1'."""
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        _prompt_tune(tiny_run, tmp_path / "pt", "setting=trzsl", "seen_classes=[1]", "strategy=none")
    assert any("prompt-tune: setting=trzsl: all 8 labelled samples are of class 'c1'" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_train_warns_when_its_labelled_keys_are_one_class_and_still_trains(tiny_run, tmp_path, caplog):
    keys = tmp_path / "one.txt"
    keys.write_text("s0_0\ns0_3\ns0_6\n")
    cfg = load_config(train.Config, None, [
        f"shards={tiny_run.parent / 'shards'}", "method.name=supervised", f"labelled_keys={keys}", "eval_split=train",
        "student=cnn-tiny", "img_size=16", "batch_size=4", "hflip=false", "num_workers=0", "progress=false", "steps=2",
        "eval_every=2", "warmup_steps=0", "checkpoint_every=0"])
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        train.run(cfg, tmp_path / "train")
    assert any("train[train]: labelled set: all 3 labelled samples are of class 'c0'" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert (tmp_path / "train" / "final.safetensors").is_file()


def test_warn_single_class_ignores_unlabelled_rows(caplog):
    with caplog.at_level(logging.WARNING, logger="zmdist"):
        assert warn_single_class(np.array([2, -1, 2]), ["a", "b", "c"], "x") is True
        assert warn_single_class([0, 1, -1], ["a", "b"], "y") is False
        assert warn_single_class([-1, -1], ["a", "b"], "z") is False
    assert [r.getMessage()[:45] for r in caplog.records] == ["x: all 2 labelled samples are of class 'c' (i"]
