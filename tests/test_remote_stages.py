"""embed, pseudolabel and train on shards served over HTTP (127.0.0.1) and through ``pipe:cat``: the same
keys, embeddings, pseudolabels and trained weights as the local run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_train import FAST
from zmdist.config import load_config
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.formats import EmbeddingShard, PseudolabelShard
from zmdist.stages import embed, pseudolabel, shard, train

TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random", "num_workers=0", "batch_size=128", "progress=false"]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root


def _arrays(folder: Path, cls) -> dict[str, dict[str, np.ndarray]]:
    return {p.name: vars(cls.load(p)) for p in sorted(folder.glob("*.npz"))}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        for field, value in a[name].items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, b[name][field]), (name, field)


def test_embed_and_pseudolabel_from_http_and_pipe_match_the_local_run(local, http_root, tmp_path):
    shards_url, emb_url = http_root(local / "shards"), http_root(local / "embeddings")
    for i, remote in enumerate([shards_url, f"pipe:cat {local / 'shards'}/{{name}}"]):
        out = tmp_path / f"emb{i}"
        res = embed.run(load_config(embed.Config, None, [f"shards={remote}", *TEACHER]), out)
        assert res["complete"] and res["images_embedded"] == 1797
        _same(_arrays(out, EmbeddingShard), _arrays(local / "embeddings", EmbeddingShard))
    pl = tmp_path / "pl"
    pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={emb_url}", f"shards={shards_url}",
                                                         "templates=digits"]), pl)
    _same(_arrays(pl, PseudolabelShard), _arrays(local / "pseudolabels", PseudolabelShard))


def test_pseudolabel_refuses_shards_that_were_not_embedded(local, http_root, tmp_path):
    other = tmp_path / "other"
    shard.run(load_config(shard.Config, None, ["source=sklearn-digits", "shard_size=300", "test_fraction=0.25",
                                               "seed=1", "progress=false"]), other / "shards")
    with pytest.raises(ValueError, match="is not the shard set .* was embedded from"):
        pseudolabel.run(load_config(pseudolabel.Config, None, [
            f"embeddings={local / 'embeddings'}", f"shards={http_root(other / 'shards')}", "templates=digits"]),
            tmp_path / "pl")


def test_training_on_http_shards_and_pseudolabels_matches_the_local_stream_run(local, http_root, tmp_path):
    args = [*FAST, "method.name=fixmatch", "steps=6", "shuffle_buffer=64"]
    runs = {
        "local": [f"shards={local / 'shards'}", f"pseudolabels={local / 'pseudolabels'}", "shard_access=stream"],
        "http": [f"shards={http_root(local / 'shards')}", f"pseudolabels={http_root(local / 'pseudolabels')}"],
    }
    weights, results = {}, {}
    for name, where in runs.items():
        results[name] = train.run(load_config(train.Config, None, [*where, *args]), tmp_path / name)
        weights[name] = load_file(str(tmp_path / name / "final.safetensors"))
    assert results["http"]["accuracy"] == results["local"]["accuracy"]
    for key, value in weights["local"].items():
        assert torch.equal(value, weights["http"][key]), key
