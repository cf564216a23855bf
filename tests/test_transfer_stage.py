"""`zmdist transfer score|fit|predict` on real digit shards embedded by a tiny random-weight teacher."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zmdist.config import ConfigError, load_config
from zmdist.data.manifest import Manifest
from zmdist.formats import EmbeddingShard, sidecar_name
from zmdist.methods.transfer import LineFit, h_score, iimm, logme
from zmdist.stages import embed, parse_stage_args, shard, transfer
from test_stages import _env


@pytest.fixture(scope="module")
def digits_embedded(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("transfer")
    shard.run(load_config(shard.Config, None, ["source=sklearn-digits", "shard_size=250", "test_fraction=0.25",
                                               "progress=false"]), root / "shards")
    embed.run(load_config(embed.Config, None, [f"shards={root / 'shards'}", "teacher.model=zmdist-micro-vit",
                                               "teacher.pretrained=random", "num_workers=0", "batch_size=256", "progress=false"]), root / "emb")
    return root / "emb"


def _train_split(emb: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = Manifest.load(json.loads((emb / "embed_info.json").read_text())["shards"])
    files = [EmbeddingShard.load(emb / sidecar_name(s.name)) for s in manifest.split("train").shards]
    return np.concatenate([f.embeddings for f in files]), np.concatenate([f.labels for f in files])


def test_score_equals_the_scores_of_the_whole_split(digits_embedded, tmp_path):
    """The streamed, shard-by-shard score (`transfer score --embeddings ...`) equals the pure functions on the concatenated train
    split with the text embeddings it used. Kills: scoring the test split too, a shard skipped, or
    text embeddings of other class names."""
    module, cfg, out, _ = parse_stage_args("transfer", ["score", "--embeddings", str(digits_embedded),
                                                        "--out", str(tmp_path / "score"), "progress=false"])
    module.run(cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    x, y = _train_split(digits_embedded)
    text = np.load(out / "text_embeddings.npy")
    assert summary["num_images"] == len(y) == 1346 and summary["split"] == "train" and summary["world_size"] == 1
    classes = Manifest.load(json.loads((digits_embedded / "embed_info.json").read_text())["shards"]).classes
    assert summary["classnames"] == [c.replace("_", " ") for c in classes] and text.shape[0] == 10
    scores = summary["scores"]
    assert (scores["iimm"], scores["inter"], scores["intra"]) == pytest.approx(iimm(x, text, y), abs=1e-9)
    assert scores["h_score"] == pytest.approx(h_score(x, y, 10), rel=1e-9)
    assert scores["logme"] == pytest.approx(logme(x, y, 10), rel=1e-9)


def test_two_ranks_under_torchrun_give_the_one_process_score(digits_embedded, tmp_path):
    """2 gloo processes split the shards and all-reduce float64 sums: the same scores as 1 process.
    Kills: a rank scoring only its own shards (no all-reduce), or both ranks reading every shard
    (counts doubled)."""
    one = transfer.run(load_config(transfer.Config, None, [f"embeddings={digits_embedded}", "progress=false"]),
                       tmp_path / "one")
    out = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "zmdist", "transfer", "score", "--embeddings", str(digits_embedded), "--out", str(out),
         "progress=false"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((out / "summary.json").read_text())
    assert two["world_size"] == 2 and "backend gloo" in proc.stderr
    assert len(two["shards_per_rank"]) == 2 and min(two["shards_per_rank"]) > 0  # both ranks really read shards
    assert sum(two["shards_per_rank"]) == two["shards"] == one["shards"]
    assert two["num_images"] == one["num_images"] and two["class_counts"] == one["class_counts"]
    # image-only sums: equal up to float64 addition order (intra to 1e-12; the baselines invert an
    # ill-conditioned covariance, which turns 1e-16 differences into ~1e-9)
    assert two["scores"]["intra"] == pytest.approx(one["scores"]["intra"], abs=1e-12)
    for name in ("h_score", "logme"):
        assert two["scores"][name] == pytest.approx(one["scores"][name], rel=1e-7), name
    # inter also uses the text tower, run in float32 with torchrun's 1 thread per process: its text
    # embeddings differ from the 1-process run's in the 7th digit, so compare the merge with ITS texts
    x, y = _train_split(digits_embedded)
    assert (two["scores"]["iimm"], two["scores"]["inter"], two["scores"]["intra"]) == pytest.approx(
        iimm(x, np.load(out / "text_embeddings.npy"), y), abs=1e-12)
    assert two["scores"]["iimm"] == pytest.approx(one["scores"]["iimm"], abs=1e-6)


def test_options_of_another_action_and_missing_inputs_are_refused(digits_embedded, tmp_path):
    with pytest.raises(ConfigError, match="table: an option of `transfer fit`"):
        transfer.run(load_config(transfer.Config, None, [f"embeddings={digits_embedded}", "table=x.csv"]), tmp_path)
    with pytest.raises(ConfigError, match="needs --embeddings"):
        transfer.run(load_config(transfer.Config, None, []), tmp_path)
    with pytest.raises(ConfigError, match="baselines: unknown"):
        transfer.run(load_config(transfer.Config, None, [f"embeddings={digits_embedded}", "baselines=[sfda]"]), tmp_path)
    with pytest.raises(ValueError, match="splits"):
        transfer.run(load_config(transfer.Config, None, [f"embeddings={digits_embedded}", "split=val",
                                                         "progress=false"]), tmp_path / "x")
    with pytest.raises(ConfigError, match="expected one of 'score' | 'fit' | 'predict'"):
        parse_stage_args("transfer", ["bogus", "--out", str(tmp_path / "y")])


def test_unlabelled_rows_name_the_file(tmp_path):
    from zmdist.transfer.streaming import shard_stats

    emb = EmbeddingShard(np.array(["a", "b"]), np.array([0, -1]), np.eye(2, dtype=np.float16))
    with pytest.raises(ValueError, match="shard-x.npz: 1 of 2 samples have no label"):
        shard_stats(emb, 2, True, "shard-x.npz")


def _table(path: Path) -> Path:
    rows = [("a", 0, 1, 0.5), ("b", 1, 3, 0.1), ("c", 2, 2, 0.2), ("d", 3, 5, 0.6)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "iimm", "logme", "gain", "forgetting"])
        for task, score, gain, forgetting in rows:
            writer.writerow([task, score, -score, gain, forgetting])
    return path


def test_fit_then_predict(tmp_path, digits_embedded):
    """fit: the gain line of the hand-computed toy (x = 0..3, y = 1, 3, 2, 5: slope 1.1, R^2 1 - 2.7/8.75);
    predict: numbers and a `transfer score` folder, intervals as LineFit.predict gives them.
    Kills: fitting on the wrong column, predictions without the interval, a fit.json predict cannot read."""
    table = _table(tmp_path / "tasks.csv")
    module, cfg, out, _ = parse_stage_args("transfer", ["fit", "--table", str(table), "--out", str(tmp_path / "fit")])
    module.run(cfg, out)
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["fits"]["gain"]["slope"] == pytest.approx(1.1) and fit["fits"]["gain"]["r2"] == pytest.approx(1 - 2.7 / 8.75)
    assert (tmp_path / "fit" / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_logme = transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={table}", "score_column=logme"]),
                            tmp_path / "fit-logme")
    assert on_logme["fits"]["gain"]["slope"] == pytest.approx(-1.1)

    score_dir = tmp_path / "newtask"
    transfer.run(load_config(transfer.Config, None, [f"embeddings={digits_embedded}", "baselines=[]",
                                                     "progress=false"]), score_dir)
    module, cfg, out, _ = parse_stage_args("transfer", ["predict", "--fit", str(tmp_path / "fit" / "fit.json"),
                                                        "--out", str(tmp_path / "pred"), f"scores=[1.5, {score_dir}]",
                                                        "level=0.9"])
    module.run(cfg, out)
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    first, second = summary["predictions"]
    line = LineFit(**fit["fits"]["gain"])
    assert (first["gain"]["prediction"], first["gain"]["low"], first["gain"]["high"]) == pytest.approx(line.predict(1.5, 0.9))
    iimm_new = json.loads((score_dir / "summary.json").read_text())["scores"]["iimm"]
    assert second["task"] == "newtask" and second["score"] == pytest.approx(iimm_new)
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    assert [r["task"] for r in rows] == ["1.5", "newtask"] and float(rows[0]["gain_high"]) == pytest.approx(line.predict(1.5, 0.9)[2])


def test_fit_reports_bad_tables(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("task,iimm,gain,forgetting\na,0.1,0.2,0.3\nb,0.2,n/a,0.1\nc,0.3,0.1,0.2\n")
    with pytest.raises(ValueError, match=r"line 3 \(task 'b'\): column 'gain' is 'n/a'"):
        transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={bad}"]), tmp_path / "o")
    with pytest.raises(ValueError, match="no column"):
        transfer.run(load_config(transfer.Config, None, ["action=fit", f"table={bad}", "score_column=gbc"]), tmp_path / "o")


def test_quickstart_part_scores_the_prepared_task(digits_embedded, tmp_path):
    """The quickstart part runs `transfer score` on the prepared embeddings and prints its rows."""
    from zmdist.demo.parts import PartContext
    from zmdist.demo.transfer_part import format_rows, run_part

    shards = json.loads((digits_embedded / "embed_info.json").read_text())["shards"]
    ctx = PartContext(out=tmp_path / "transfer", shards=Path(shards), embeddings=digits_embedded,
                      pseudolabels=tmp_path / "unused", teacher_model="zmdist-micro-vit", teacher_checkpoint="random",
                      templates="digits", seeds=[0], labels_per_class=4, student_overrides=lambda m, s: [])
    results = run_part(ctx)
    x, y = _train_split(digits_embedded)
    text = np.load(tmp_path / "transfer" / "score" / "text_embeddings.npy")
    assert results["scores"]["iimm"] == pytest.approx(iimm(x, text, y)[0], abs=1e-9)
    rows = format_rows(results)
    assert len(rows) == 2 and "IIMM" in rows[1] and "1,346 images" in rows[0]
