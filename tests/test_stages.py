"""shard -> embed -> pseudolabel on real digit shards: alignment, resume, kill-and-resume, ranks, arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.formats import EmbeddingShard, PseudolabelShard
from zmdist.methods.pseudolabels import expected_calibration_error
from zmdist.stages import embed, pseudolabel, shard

TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random"]


def _env() -> dict[str, str]:
    """This environment without the launcher / array variables a child process would read as its rank."""
    env = dict(os.environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_TASK_COUNT", "ZMDIST_TASK_INDEX", "ZMDIST_NUM_TASKS"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def zmdist_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmdist", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout)


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "shards"
    cfg = load_config(shard.Config, None, ["source=sklearn-digits", "shard_size=300", "test_fraction=0.25",
                                           "progress=false"])
    shard.run(cfg, out)
    return out


def _all_keys(shards: Path) -> list[str]:
    m = Manifest.load(shards)
    return [s["key"] for split in m.splits for p in m.shard_paths(split) for s in iter_shard(p)]


def _embedded_keys(folder: Path) -> list[str]:
    return [k for f in sorted(folder.glob("*.npz")) for k in EmbeddingShard.load(f).keys.tolist()]


def _embed(shards: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(embed.Config, None, [f"shards={shards}", *TEACHER, "num_workers=0", "batch_size=128",
                                           "progress=false", *extra])
    return embed.run(cfg, out)


def test_embed_and_pseudolabel_end_to_end(digit_shards, tmp_path):
    m = Manifest.load(digit_shards)
    assert sum(m.counts("train")) + sum(m.counts("test")) == 1797
    res = _embed(digit_shards, tmp_path / "emb", "num_workers=2")
    n_shards = len(m.counts("train")) + len(m.counts("test"))
    assert res["shards_written"] == n_shards and res["complete"] and res["images_embedded"] == 1797
    assert res["images_per_second"] > 0
    for split in m.splits:
        for path in m.shard_paths(split):
            emb = EmbeddingShard.load(tmp_path / "emb" / path.with_suffix(".npz").name)
            samples = list(iter_shard(path))
            assert emb.keys.tolist() == [s["key"] for s in samples]  # aligned with the tar, row by row
            assert emb.labels.tolist() == [s["label"] for s in samples]
            assert emb.embeddings.dtype == np.float16 and emb.embeddings.shape == (len(samples), 32)
            assert np.allclose(np.linalg.norm(emb.embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)

    again = _embed(digit_shards, tmp_path / "emb")
    assert again["shards_written"] == 0 and again["shards_skipped_done"] == n_shards

    pl_cfg = load_config(pseudolabel.Config, None, [f"embeddings={tmp_path / 'emb'}", "templates=digits", "topk=3"])
    pl = pseudolabel.run(pl_cfg, tmp_path / "pl")
    assert pl["samples"] == 1797 and pl["labelled_samples"] == 1797
    assert 0.0 <= pl["teacher_zero_shot_accuracy"] <= 1.0 and 0.0 <= pl["ece"] <= 1.0
    assert sum(pl["pseudolabel_histogram"].values()) == 1797
    assert set(pl["zero_shot_accuracy_per_split"]) == {"train", "test"}
    assert (tmp_path / "pl" / "reliability.png").stat().st_size > 1000
    # The summary is accumulated shard by shard; it must equal the statistics of all sidecars at once.
    sides = [PseudolabelShard.load(p) for p in sorted((tmp_path / "pl").glob("*-*.npz"))]
    conf = np.concatenate([s.confidence for s in sides])
    correct = np.concatenate([s.pseudolabel == s.labels for s in sides])
    assert pl["ece"] == pytest.approx(expected_calibration_error(conf, correct, 15), abs=1e-9)
    assert pl["teacher_zero_shot_accuracy"] == pytest.approx(correct.mean())
    assert pl["mean_confidence"] == pytest.approx(conf.mean(), rel=1e-6)
    assert pl["accuracy_at_thresholds"][1]["count"] == int((conf >= 0.5).sum())
    side = PseudolabelShard.load(tmp_path / "pl" / "train-000000.npz")
    emb0 = EmbeddingShard.load(tmp_path / "emb" / "train-000000.npz")
    assert side.keys.tolist() == emb0.keys.tolist()
    assert side.topk_classes.shape == (len(side.keys), 3) and side.probs.shape == (len(side.keys), 10)
    probs16 = side.probs.astype(np.float32)  # the pseudolabel is a top class (float16 may round a near-tie)
    assert np.all(probs16[np.arange(len(probs16)), side.pseudolabel] >= probs16.max(1) - 1e-3)
    assert np.allclose(side.confidence, side.topk_probs[:, 0])
    # Catches: a wrong logit scale in the pseudolabel stage (e.g. halved). Recomputed from the stored
    # embeddings and classifier with the scale of a teacher built by open_clip directly (random weights:
    # open_clip initialises logit_scale to log(1/0.07)).
    import open_clip

    from zmdist.teacher import register_model_configs

    register_model_configs()
    scale = open_clip.create_model("zmdist-micro-vit").logit_scale.exp().item()
    assert scale == pytest.approx(1 / 0.07, rel=1e-5)
    logits = scale * emb0.embeddings.astype(np.float32) @ np.load(tmp_path / "pl" / "classifier.npy").T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.abs(side.probs.astype(np.float32) - expected).max() < 2e-3
    summary = json.loads((tmp_path / "pl" / "summary.json").read_text())
    for field in ("versions", "git_commit", "seed", "classes_hash", "templates_hash", "teacher_zero_shot_accuracy"):
        assert field in summary, field
    assert summary["versions"]["torch"].startswith("2.")
    assert (tmp_path / "pl" / "config.yaml").read_text().count("templates: digits") == 1


def test_kill_and_resume_embeds_every_key_exactly_once(digit_shards, tmp_path):
    out = tmp_path / "emb"
    args = ["embed", "--shards", str(digit_shards), "--out", str(out), *TEACHER, "num_workers=0",
            "batch_size=64", "progress=false"]
    # a real SIGKILL right after the second shard file is written, injected through embed.run's hook
    script = ("import os, signal, sys; from pathlib import Path; from zmdist.config import load_config; "
              "from zmdist.stages import embed; "
              "cfg = load_config(embed.Config, None, sys.argv[2:]); "
              "embed.run(cfg, Path(sys.argv[1]), on_shard_written=lambda n: n >= 2 and os.kill(os.getpid(), signal.SIGKILL))")
    killed = subprocess.run([sys.executable, "-c", script, str(out), f"shards={digit_shards}", *TEACHER,
                             "num_workers=0", "batch_size=64", "progress=false"],
                            capture_output=True, text=True, env=_env(), timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(list(out.glob("*.npz"))) == 2  # killed after its second shard, mid-run
    (out / ".tmp-train-000003.npz.x1y2.npz").write_bytes(b"half a file from the killed run")
    resumed = zmdist_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_skipped_done"] == 2 and summary["complete"]
    keys = _embedded_keys(out)
    assert len(keys) == len(set(keys)) == 1797
    assert sorted(keys) == sorted(_all_keys(digit_shards))
    assert not list(out.glob(".tmp-*"))


def test_two_ranks_under_torchrun_split_the_shards(digit_shards, tmp_path):
    out = tmp_path / "emb"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "zmdist", "embed", "--shards", str(digit_shards), "--out", str(out), *TEACHER,
         "num_workers=0", "progress=false"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(w["worker"] for w in summary["per_worker"]) == [0, 1]
    assert all(w["shards_written"] > 0 for w in summary["per_worker"])  # both ranks really worked
    assert "rank 1/2" in proc.stderr and "backend gloo" in proc.stderr
    keys = _embedded_keys(out)
    assert len(keys) == len(set(keys)) == 1797


def test_job_array_tasks_take_disjoint_shares(digit_shards, tmp_path):
    out = tmp_path / "emb"
    first = _embed(digit_shards, out, "task_index=0", "num_tasks=2")
    assert not first["complete"] and not (out / "summary.json").exists()
    assert (out / "summary.task-0-of-2.json").is_file()
    done_after_first = {p.name for p in out.glob("*.npz")}
    second = _embed(digit_shards, out, "task_index=1", "num_tasks=2")
    assert second["complete"] and (out / "summary.json").is_file()
    assert first["shards_written"] + second["shards_written"] == second["shards_total"]
    assert done_after_first.isdisjoint({p.name for p in out.glob("*.npz")} - done_after_first)
    keys = _embedded_keys(out)
    assert len(keys) == len(set(keys)) == 1797


def test_rerun_with_another_teacher_is_refused(digit_shards, tmp_path):
    _embed(digit_shards, tmp_path / "emb", "splits=[test]")
    with pytest.raises(ValueError, match="already holds embeddings made with other settings.*teacher"):
        _embed(digit_shards, tmp_path / "emb", "splits=[test]", "teacher.model=zmdist-tiny-vit")


def test_cli_help_errors_and_missing_inputs(tmp_path):
    helped = zmdist_cli("embed", "--help")
    assert helped.returncode == 0
    for flag in ("--teacher.pretrained", "--batch_size", "--num_workers", "--task_index", "--out"):
        assert flag in helped.stdout
    bad = zmdist_cli("embed", "--out", str(tmp_path), "--shards", str(tmp_path), "bach_size=3")
    assert bad.returncode == 2 and "Did you mean 'batch_size'" in bad.stderr
    missing = zmdist_cli("pseudolabel", "--out", str(tmp_path / "pl"), "--embeddings", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "run `zmdist embed` first" in missing.stderr


def test_undecodable_sample_in_a_shard_is_reported_not_dropped(tmp_path, make_shards):
    import tarfile

    shards, keys = make_shards([5, 4])
    # corrupt the image of sample s0_2 inside the first tar (same length, so the tar stays valid)
    path = shards / "train-000000.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("s0_2.png")
        offset, size = member.offset_data, member.size
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = b"\x00" * size
    path.write_bytes(bytes(data))
    res = _embed(shards, tmp_path / "emb")
    assert res["complete"] and res["images_embedded"] == len(keys) - 1
    assert [(k["shard"], k["key"]) for k in res["skipped_keys"]] == [("train-000000.tar", "s0_2")]
    assert "undecodable" in res["skipped_keys"][0]["reason"]
    assert sorted(_embedded_keys(tmp_path / "emb")) == sorted(set(keys) - {"s0_2"})
