"""From result to use: a trained student exported as a plain model, loaded, and used by `zmdist predict`.

Real tiny training runs on the digit shards: a timm student under ZeroMatch (DualHead weights to unwrap,
batch norm and dropout that must be in eval mode), and the registered cnn-small under ZeroMatch with an
informative teacher, so that its accuracy is far from chance and a preprocessing mistake would show."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import zmdist
from test_stages import _env
from test_train import digits, oracle  # noqa: F401  (module fixtures: the digit shards and an always-right teacher)
from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.models import DualHead, create_student
from zmdist.models.export import CONFIG_FILE, WEIGHTS_FILE
from zmdist.models.predict import PredictionShard
from zmdist.stages import export, predict, train
from zmdist.train.augment import make_views
from zmdist.train.evaluation import main_logits

BASE = ["img_size=16", "batch_size=16", "hflip=false", "num_workers=0", "progress=false", "log_every=100",
        "eval_every=100", "warmup_steps=2", "method.name=zeromatch"]
TIMM = ["student=timm:test_resnet", "student_options={drop_rate: 0.5}", "method.stage0_steps=2", "steps=4"]
CNN = ["student=cnn-small", "method.stage0_steps=20", "steps=20", "lr=3e-3"]


def _train(digits, out: Path, *extra: str, pl: Path | None = None) -> dict:
    """A tiny run on one torch thread (these small models run faster on one thread than on shared cores)."""
    shards, default_pl = digits
    args = [f"shards={shards}", f"pseudolabels={pl or default_pl}", *BASE, *extra]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train.run(load_config(train.Config, None, args), out)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def timm_run(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("timm") / "run"
    _train(digits, out, *TIMM)
    return out


@pytest.fixture(scope="module")
def cnn_run(digits, oracle, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("cnn") / "run"
    _train(digits, out, *CNN, pl=oracle)
    return out


@pytest.fixture(scope="module")
def cnn_predicted(digits, cnn_run, tmp_path_factory) -> tuple[Path, dict]:
    """One-process predictions of the cnn run's export on its test split."""
    out = tmp_path_factory.mktemp("pred") / "one"
    return out, _predict(cnn_run / "export", out, f"shards={digits[0]}", "split=test")


def _predict(model: Path, out: Path, *extra: str, **kw) -> dict:
    cfg = load_config(predict.Config, None, [f"model={model}", *extra, "num_workers=0", "progress=false", "top_k=3"])
    return predict.run(cfg, out, **kw)


def _test_images(digits, n: int) -> list[Image.Image]:
    manifest = Manifest.load(digits[0])
    return [s["image"] for s, _ in zip(iter_shard(manifest.shard_paths("test")[0]), range(n))]


def test_timm_export_loads_with_timm_alone_and_gives_the_trained_logits(digits, timm_run, tmp_path):
    """Catches: DualHead keys left in the export (timm's load_state_dict fails), `main` put back in the wrong
    place, the auxiliary head exported instead of the main one, or a train-mode comparison (dropout 0.5)."""
    out = tmp_path / "exported"
    results = export.run(load_config(export.Config, None, [f"run={timm_run}"]), out)
    config = json.loads((out / CONFIG_FILE).read_text())
    summary = json.loads((timm_run / "summary.json").read_text())
    assert config["accuracy"]["top1"] == summary["accuracy"] == results["accuracy"]["top1"]
    assert config["accuracy"]["split"] == "test" and config["accuracy"]["checkpoint"] == "final"
    assert config["label_names"] == Manifest.load(digits[0]).classes and config["num_classes"] == 10
    assert config["model_args"] == {"drop_rate": 0.5} and config["architecture"] == "test_resnet"
    assert config["pretrained_cfg"]["input_size"] == [3, 16, 16] and config["zmdist_version"] == zmdist.__version__

    trained = DualHead(create_student("timm:test_resnet", 10, drop_rate=0.5))
    trained.load_state_dict(load_file(str(timm_run / "stage1" / "final.safetensors")))
    plain = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    plain.load_state_dict(load_file(str(out / WEIGHTS_FILE)))  # strict: exactly the plain model's keys
    trained.eval()
    plain.eval()
    views = make_views(16, hflip=False)
    x = torch.stack([views.eval(image) for image in _test_images(digits, 32)])
    with torch.inference_mode():
        expected = main_logits(trained, x)
        assert torch.equal(plain(x), expected)
        # timm's own folder loading and data config give the same model and the same input tensors
        hub = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert torch.equal(hub(x), expected)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=hub))
    image = _test_images(digits, 1)[0]
    assert torch.equal(transform(image), views.eval(image))
    # the train run wrote the same export of its headline model itself
    assert load_file(str(timm_run / "export" / WEIGHTS_FILE)).keys() == load_file(str(out / WEIGHTS_FILE)).keys()


def test_export_of_the_best_checkpoint_records_its_own_accuracy(timm_run, tmp_path):
    """Catches: which=best exporting the final weights, or claiming the final model's accuracy."""
    export.run(load_config(export.Config, None, [f"run={timm_run}", "which=best"]), tmp_path / "best")
    config = json.loads((tmp_path / "best" / CONFIG_FILE).read_text())
    summary = json.loads((timm_run / "summary.json").read_text())
    assert config["accuracy"]["checkpoint"] == "best" and config["run"]["weights"] == "stage1/best.safetensors"
    assert config["accuracy"]["top1"] == summary["best_checkpoint"]["top1"]
    assert config["accuracy"]["step"] == summary["best_checkpoint"]["step"]


def test_load_student_of_a_registered_student_is_in_eval_mode_with_the_runs_preprocessing(digits, cnn_run):
    """Catches: a loaded student left in train mode (batch-norm batch statistics), or preprocessing that
    differs from the run's evaluation view (size, interpolation, mean/std, grey images not made RGB)."""
    model = zmdist.load_student(cnn_run / "export")
    assert not model.training and model.label_names == Manifest.load(digits[0]).classes
    views = make_views(16, hflip=False)
    images = _test_images(digits, 8)
    for image in images:
        assert torch.equal(model.preprocess(image), views.eval(image))
    grey = images[0].convert("L")
    assert torch.equal(model.preprocess(grey), views.eval(grey.convert("RGB")))
    trained = DualHead(create_student("cnn-small", 10))
    trained.load_state_dict(load_file(str(cnn_run / "stage1" / "final.safetensors")))
    x = torch.stack([model.preprocess(image) for image in images])
    with torch.inference_mode():
        assert torch.equal(model(x), main_logits(trained.eval(), x))


def test_predict_on_the_test_split_reproduces_the_runs_accuracy(digits, cnn_run, cnn_predicted):
    """Catches: predictions that do not match what the run measured (other preprocessing, train mode,
    another head), rows lost or duplicated, a CSV that does not name classes."""
    out, results = cnn_predicted
    summary = json.loads((cnn_run / "summary.json").read_text())
    assert summary["accuracy"] > 0.5  # an informative student: a preprocessing mistake would change it
    assert results["accuracy"] == {"test": summary["accuracy"]}
    assert results["metrics"]["test"]["samples"] == Manifest.load(digits[0]).split("test").total
    rows = list(csv.DictReader((out / predict.CSV_FILE).open()))
    assert len(rows) == len({r["key"] for r in rows}) == results["metrics"]["test"]["samples"]
    assert set(rows[0]) == {"key", "split", "label", "confidence", "true_label", "top2_label", "top2_confidence",
                            "top3_label", "top3_confidence"}
    assert sum(r["label"] == r["true_label"] for r in rows) / len(rows) == summary["accuracy"]
    assert all(float(r["confidence"]) >= float(r["top2_confidence"]) >= float(r["top3_confidence"]) for r in rows)
    shard = PredictionShard.load(out / "test-000000.npz")
    assert shard.topk_classes.shape == (len(shard.keys), 3) and (shard.topk_classes[:, 0] == shard.prediction).all()


def test_two_process_predict_writes_the_same_predictions(digits, cnn_run, cnn_predicted, tmp_path):
    """Catches: ranks predicting the same shard twice or none, results that depend on the process count,
    a CSV written before every rank is done."""
    one, _ = cnn_predicted
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zmdist",
               "predict", "--model", str(cnn_run / "export"), "--shards", str(digits[0]), "split=test",
               "--out", str(out), "num_workers=0", "progress=false", "top_k=3"]
    proc = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and [w["shards_assigned"] for w in summary["per_worker"]] == [1, 1]
    assert (out / predict.CSV_FILE).read_bytes() == (one / predict.CSV_FILE).read_bytes()
    assert "predict: accuracy on split 'test'" in proc.stderr


def test_a_predict_killed_midway_and_rerun_predicts_each_image_once(digits, cnn_run, cnn_predicted, tmp_path):
    """Catches: a rerun that redoes finished shards, keeps a killed run's half-written file, or loses rows."""
    one, _ = cnn_predicted
    out = tmp_path / "cut"

    def crash(written: int) -> None:
        raise KeyboardInterrupt("killed after the first shard")

    with pytest.raises(KeyboardInterrupt):
        _predict(cnn_run / "export", out, f"shards={digits[0]}", "split=test", on_shard_written=crash)
    assert len(list(out.glob("test-*.npz"))) == 1 and not (out / predict.CSV_FILE).exists()
    (out / ".tmp-test-000001.npz.abc.npz").write_bytes(b"half a file")
    results = _predict(cnn_run / "export", out, f"shards={digits[0]}", "split=test")
    assert results["shards_skipped_done"] == 1 and results["shards_written"] == 1
    assert (out / predict.CSV_FILE).read_bytes() == (one / predict.CSV_FILE).read_bytes()
    assert not list(out.glob(".tmp-*"))


def test_predict_from_a_source_shards_it_first(cnn_run, tmp_path):
    """Catches: source= images preprocessed other than through the shard writer (RGB conversion), class
    names of the source not mapped to the model's by name, unlabelled images without a row."""
    folder = tmp_path / "images"
    (folder / "seven").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), mode="L").save(folder / "seven" / f"{i}.png")
    results = _predict(cnn_run / "export", tmp_path / "out", f"source=imagefolder:{folder}")
    rows = list(csv.DictReader((tmp_path / "out" / predict.CSV_FILE).open()))
    assert [r["true_label"] for r in rows] == ["seven"] * 3 and results["metrics"]["train"]["samples"] == 3
    model = zmdist.load_student(cnn_run / "export")
    with torch.inference_mode():
        for row in rows:
            image = Image.open(folder / "seven" / f"{row['key'].split('__')[1]}.png")
            assert row["label"] == model.label_names[int(model(model.preprocess(image)[None]).argmax())]
    with pytest.raises(ValueError, match="exactly one of shards=DIR"):
        _predict(cnn_run / "export", tmp_path / "both", f"source=imagefolder:{folder}", f"shards={folder}")


def test_bad_export_inputs_are_one_line_errors(tmp_path, timm_run):
    """Catches: a folder that is not a train run or not an export failing deep inside with a KeyError."""
    with pytest.raises(FileNotFoundError, match="no summary.json; give the output folder of a finished"):
        export.run(load_config(export.Config, None, [f"run={tmp_path}"]), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="is not an exported student"):
        zmdist.load_student(timm_run)
    with pytest.raises(ValueError, match="is the run folder itself"):
        export.run(load_config(export.Config, None, [f"run={timm_run}"]), timm_run)
    broken = tmp_path / "run"
    shutil.copytree(timm_run, broken)
    (broken / "stage1" / "final.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="final.safetensors is missing"):
        export.run(load_config(export.Config, None, [f"run={broken}"]), tmp_path / "y")


def test_undecodable_images_and_foreign_classes_are_reported_not_dropped(cnn_run, make_shards, tmp_path):
    """Catches: an undecodable image silently missing from the CSV, or an accuracy computed against
    classes the model does not have (the shards' c0..c2 are not digit names)."""
    from webdataset import TarWriter

    shards, keys = make_shards([4])
    with TarWriter(str(shards / "train-000000.tar"), encoder=False, mtime=0) as tar:  # same keys, one image broken
        for j, key in enumerate(keys):
            image = io.BytesIO()
            Image.new("RGB", (4, 4), (j, 0, 0)).save(image, format="PNG")
            tar.write({"__key__": key, "png": b"not a png" if j == 1 else image.getvalue(), "cls": b"0",
                       "json": json.dumps({"key": key, "label": 0}).encode()})
    results = _predict(cnn_run / "export", tmp_path / "out", f"shards={shards}")
    rows = list(csv.DictReader((tmp_path / "out" / predict.CSV_FILE).open()))
    assert [r["key"] for r in rows] == [k for i, k in enumerate(keys) if i != 1]
    assert [s["key"] for s in results["skipped_keys"]] == [keys[1]] and results["images_predicted"] == 3
    assert results["accuracy"] == {} and results["classes_not_in_model"] == ["c0", "c1", "c2"]
    assert {r["true_label"] for r in rows} == {"c0"}


def test_a_run_without_class_names_in_its_summary_takes_them_from_its_shards(digits, timm_run, tmp_path):
    """Catches: runs trained before the summary listed class names failing to export, or exporting with
    the names of a shard set rebuilt since (their hash differs from the one the run recorded)."""
    old = tmp_path / "old"
    shutil.copytree(timm_run, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["classes"]
    (old / "summary.json").write_text(json.dumps(summary))
    export.run(load_config(export.Config, None, [f"run={old}"]), tmp_path / "a")
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["label_names"] == Manifest.load(digits[0]).classes
    (old / "summary.json").write_text(json.dumps({**summary, "classes_hash": "0" * 16}))
    with pytest.raises(ValueError, match="not those .* was trained with"):
        export.run(load_config(export.Config, None, [f"run={old}"]), tmp_path / "b")


def test_a_run_written_before_the_student_section_exports_its_student(timm_run, tmp_path):
    """Catches: runs whose config.yaml has `student: NAME` and `student_options` (and no student_init in the
    summary) no longer exporting, or exporting without their constructor options or 0.5 normalisation."""
    import yaml

    old = tmp_path / "old"
    shutil.copytree(timm_run, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["student"], config["student_options"] = config["student"]["name"], config["student"]["options"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    summary = json.loads((old / "summary.json").read_text())
    del summary["student_init"]
    (old / "summary.json").write_text(json.dumps(summary))
    export.run(load_config(export.Config, None, [f"run={old}"]), tmp_path / "a")
    exported = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert exported["student"] == "timm:test_resnet" and exported["model_args"] == {"drop_rate": 0.5}
    assert exported["pretrained_cfg"]["mean"] == exported["pretrained_cfg"]["std"] == [0.5, 0.5, 0.5]


def test_large_image_exports_record_the_centre_crop_timm_rebuilds():
    """Catches: a >= 96 px run's export recording a plain resize (its eval view resizes the shorter side to
    floor(size / 0.875) and centre-crops), or dropping the run's mean/std: timm's transform and
    load_student's preprocessing would then differ from what the run evaluated."""
    from zmdist.models.export import Preprocess, eval_preprocessing

    mean, std = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
    recorded = eval_preprocessing(128, mean, std)
    assert (recorded["crop_mode"], recorded["crop_pct"], recorded["input_size"]) == ("center", 0.875, [3, 128, 128])
    view = make_views(128, hflip=False, mean=mean, std=std).eval
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=recorded))
    assert torch.equal(transform(image), view(image))
    assert torch.equal(Preprocess(recorded)(image), view(image))
