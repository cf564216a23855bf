"""The documented CLI path on a user's ImageFolder: shard -> embed -> pseudolabel, as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from test_stages import zmdist_cli
from zmdist.formats import PseudolabelShard


def _photo_folder(root: Path) -> int:
    """3 classes of 64x64 crops of scikit-learn's sample photos, with odd modes and one corrupt file."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    n = 0
    for c, name in enumerate(["red_panda", "tulip", "pagoda"]):
        (root / name).mkdir(parents=True)
        for i in range(14):
            y, x = rng.integers(0, 300, size=2)
            img = Image.fromarray(photos[c % 2][y : y + 64, x : x + 64])
            if i == 0:
                img = img.convert("L")
            elif i == 1:
                img = img.convert("RGBA")
            img.save(root / name / f"img_{i:02d}.png")
            n += 1
    (root / "tulip" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return n


def test_imagefolder_through_the_cli(tmp_path):
    n = _photo_folder(tmp_path / "photos")
    shards, emb, pl = tmp_path / "shards", tmp_path / "emb", tmp_path / "pl"
    r = zmdist_cli("shard", "--source", f"imagefolder:{tmp_path / 'photos'}", "--out", str(shards),
                   "--shard_size", "10", "--progress", "false")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((shards / "summary.json").read_text())
    assert s["splits"]["train"]["samples"] == n and s["splits"]["train"]["shards"] == 5
    assert [x["origin"].endswith("broken.jpg") for x in s["skipped"]] == [True]  # listed, with a reason
    assert s["converted"].get("L->RGB") == 3 and s["converted"].get("RGBA->RGB") == 3

    r = zmdist_cli("embed", "--shards", str(shards), "--out", str(emb), "--teacher.model", "zmdist-micro-vit",
                   "--teacher.pretrained", "random", "--num_workers", "2", "--batch_size", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "img/s" in r.stderr  # the progress bar reports throughput
    r = zmdist_cli("pseudolabel", "--embeddings", str(emb), "--out", str(pl), "templates=imagenet7", "topk=2")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((pl / "summary.json").read_text())
    assert summary["samples"] == n
    assert set(summary["pseudolabel_histogram"]) == {"pagoda", "red_panda", "tulip"}
    info = json.loads((pl / "pseudolabel_info.json").read_text())
    assert info["classnames"] == ["pagoda", "red panda", "tulip"]  # prompt names read naturally
    rows = sum(len(PseudolabelShard.load(f).keys) for f in pl.glob("train-*.npz"))
    assert rows == n
