"""Issue 8, "nothing lost, nothing mixed": resume by content fingerprints, verified shard counts,
`shard --verify`, seeded random teachers, one writer per worker, and the stages' option ranges."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_uneven_shards
from zmdist.config import ConfigError, load_config
from zmdist.data.manifest import Manifest, ShardInfo, SplitInfo
from zmdist.formats import EmbeddingShard
from zmdist.stages import embed, pseudolabel, shard
from zmdist.stages.common import WorkerLock
from zmdist.teacher import load_teacher

TEACHER = ["teacher.model=zmdist-micro-vit", "teacher.pretrained=random"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID"):
        env.pop(var, None)
    return env


def _shard(out: Path, seed: int, *extra: str) -> Path:
    cfg = load_config(shard.Config, None, ["source=sklearn-digits", "shard_size=150", "test_fraction=0.2",
                                           f"seed={seed}", "progress=false", *extra])
    shard.run(cfg, out)
    return out


def _embed(shards: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(embed.Config, None, [f"shards={shards}", *TEACHER, "num_workers=0", "batch_size=128",
                                           "progress=false", "splits=[test]", *extra])
    return embed.run(cfg, out)


def _pseudolabel(emb: Path, out: Path, *extra: str) -> dict:
    cfg = load_config(pseudolabel.Config, None, [f"embeddings={emb}", "templates=digits", *extra])
    return pseudolabel.run(cfg, out)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return _shard(tmp_path_factory.mktemp("digits") / "shards", seed=0)


# --- 1. resume compares content fingerprints, not paths ---------------------------------------------------

def test_shards_rebuilt_in_place_with_another_seed_are_refused(digits, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(digits, shards)
    _embed(shards, tmp_path / "emb")
    _shard(shards, 1, "overwrite=true")  # same folder, same path, other keys in every shard
    with pytest.raises(ValueError, match=r"other settings: shards changed.*new --out folder, or delete"):
        _embed(shards, tmp_path / "emb")


def test_a_moved_shard_folder_resumes(digits, tmp_path):
    first = _embed(digits, tmp_path / "emb")
    moved = tmp_path / "moved"
    shutil.copytree(digits, moved)
    again = _embed(moved, tmp_path / "emb")  # other path, same content: nothing to redo
    assert again["shards_written"] == 0 and again["shards_skipped_done"] == first["shards_total"]
    assert json.loads((tmp_path / "emb" / embed.INFO_FILE).read_text())["shards"] == str(moved.resolve())


def _save_checkpoint(path: Path, shift: float) -> None:
    from safetensors.torch import save_file

    state = load_teacher("zmdist-micro-vit", "random").model.state_dict()
    save_file({k: (v + shift if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(path))


def test_a_checkpoint_overwritten_in_place_is_refused(digits, tmp_path):
    ckpt = tmp_path / "teacher.safetensors"
    _save_checkpoint(ckpt, 0.0)
    _embed(digits, tmp_path / "emb", f"teacher.pretrained={ckpt}")
    _save_checkpoint(ckpt, 0.5)  # other weights under the same file name
    with pytest.raises(ValueError, match=r"teacher changed.*file sha256"):
        _embed(digits, tmp_path / "emb", f"teacher.pretrained={ckpt}")


def test_pseudolabel_refuses_new_embeddings_and_other_prompts_naming_which(digits, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(digits, shards)
    _embed(shards, tmp_path / "emb")
    _pseudolabel(tmp_path / "emb", tmp_path / "pl")
    with pytest.raises(ValueError, match=r"prompts changed"):
        _pseudolabel(tmp_path / "emb", tmp_path / "pl", "templates=simple")
    # the shard set rebuilt with another seed and re-embedded into the same (emptied) folder
    _shard(shards, 1, "overwrite=true")
    shutil.rmtree(tmp_path / "emb")
    _embed(shards, tmp_path / "emb")
    with pytest.raises(ValueError, match=r"shards changed"):
        _pseudolabel(tmp_path / "emb", tmp_path / "pl")


def test_pseudolabel_refuses_a_teacher_changed_since_embed(digits, tmp_path):
    ckpt = tmp_path / "teacher.safetensors"
    _save_checkpoint(ckpt, 0.0)
    _embed(digits, tmp_path / "emb", f"teacher.pretrained={ckpt}")
    _save_checkpoint(ckpt, 0.5)
    with pytest.raises(ValueError, match=r"teacher has changed since .* was embedded"):
        _pseudolabel(tmp_path / "emb", tmp_path / "pl")


# --- 2. verified counts -----------------------------------------------------------------------------------

def _undercount(root: Path, shard_index: int, count: int) -> None:
    raw = json.loads((root / "manifest.json").read_text())
    split = raw["splits"]["train"]
    split["shards"][shard_index]["count"] = count
    split["total"] = split["labelled"] = sum(s["count"] for s in split["shards"])
    (root / "manifest.json").write_text(json.dumps(raw))


def test_embed_refuses_a_manifest_that_undercounts_a_shard(tmp_path, make_shards):
    shards, _ = make_shards([5, 4])
    _undercount(shards, 0, 4)
    with pytest.raises(ValueError, match=r"train-000000.tar holds 5 samples but manifest.json says 4.*--overwrite"):
        embed.run(load_config(embed.Config, None, [f"shards={shards}", *TEACHER, "num_workers=0", "progress=false"]),
                  tmp_path / "emb")
    assert not (tmp_path / "emb" / "train-000000.npz").exists()  # nothing written with 4 of 5 rows


def test_embed_reading_path_checks_the_count_too(tmp_path, make_shards):
    shards, _ = make_shards([5])
    job = embed.ShardJob(0, "train", "train-000000.tar", 4, shards / "train-000000.tar", tmp_path / "x.npz")
    teacher = load_teacher("zmdist-micro-vit", "random")
    with pytest.raises(ValueError, match=r"holds 5 samples but the manifest says 4"):
        list(embed._ShardImages([job], teacher.preprocess))


def _bad_set(root: Path) -> None:
    """train: 3 samples listed as 2, one corrupted image; test: keys clashing with train and a bad key."""
    write_uneven_shards(root / "t", [3], "test")
    write_uneven_shards(root, [3], "train")
    (root / "t" / "test-000000.tar").rename(root / "test-000000.tar")
    path = root / "train-000000.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("s0_1.png")
        offset, size = member.offset_data, member.size
    data = bytearray(path.read_bytes())
    data[offset: offset + size] = b"\x00" * size
    path.write_bytes(bytes(data))
    with tarfile.open(root / "extra-000000.tar", "w") as tar:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format="PNG")
        info = tarfile.TarInfo("bad key!.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    Manifest(source="test", classes=["a", "b", "c"], image_format="png", splits={
        "train": SplitInfo([ShardInfo("train-000000.tar", 2)], 2, 2),
        "test": SplitInfo([ShardInfo("test-000000.tar", 3)], 3, 3),
        "extra": SplitInfo([ShardInfo("extra-000000.tar", 1)], 1, 0),
    }).save(root)


def test_shard_verify_passes_a_sound_set_and_lists_every_problem(digits, tmp_path):
    cli = [sys.executable, "-m", "zmdist", "shard"]
    good = subprocess.run([*cli, "--verify", str(digits), "--out", str(tmp_path / "ok")],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["ok"] and summary["problems"] == [] and summary["samples"] == 1797

    bad = tmp_path / "bad"
    _bad_set(bad)
    res = subprocess.run([*cli, "--verify", str(bad), "--out", str(bad)], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 1
    problems = json.loads((bad / "verify.json").read_text())["problems"]  # the set's own summary is kept
    text = "\n".join(problems)
    assert "train-000000.tar: holds 3 samples but manifest.json says 2" in text
    assert "'s0_1' has an undecodable image" in text
    assert "train-000000.tar: key 's0_0' is also in test-000000.tar" in text  # splits in name order
    assert "key 'bad key!' is not made of [A-Za-z0-9_-]" in text
    assert len(problems) == 6  # count, undecodable, 3 clashing keys, bad key
    assert "problem(s) in the shard set" in res.stderr and "s0_1" in res.stderr


# --- 3. random-weight teachers are seeded --------------------------------------------------------------------

def test_random_teacher_is_the_same_in_every_process_and_rerun(digits, tmp_path):
    torch.manual_seed(123)
    a, b = load_teacher("zmdist-micro-vit", "random"), load_teacher("zmdist-micro-vit", "random")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    assert not all(torch.equal(x, y) for x, y in zip(
        a.model.state_dict().values(), load_teacher("zmdist-micro-vit", "random", seed=1).model.state_dict().values()))
    # two runs (as two ranks would) embed identically; another seed is another teacher and is refused
    _embed(digits, tmp_path / "e1")
    _embed(digits, tmp_path / "e2")
    for f in sorted((tmp_path / "e1").glob("*.npz")):
        assert np.array_equal(EmbeddingShard.load(f).embeddings, EmbeddingShard.load(tmp_path / "e2" / f.name).embeddings)
    with pytest.raises(ValueError, match=r"teacher changed.*random, seed 0.*random, seed 1"):
        _embed(digits, tmp_path / "e1", "seed=1")


# --- 4. one writer per worker ---------------------------------------------------------------------------------

def _fake_lock(out: Path, name: str, shards: list[str], pid: int, host: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "shards": shards}))
    return path


def test_a_second_embed_on_a_running_output_refuses_and_keeps_its_temp_files(digits, tmp_path):
    out = tmp_path / "emb"
    names = [s.name for s in Manifest.load(digits).split("test").shards]
    # a run in progress (this very process is alive) with a half-written file
    lock = _fake_lock(out, ".lock-task0-rank0", names, os.getpid())
    temp = out / f".tmp-{names[0].replace('.tar', '.npz')}.abc.npz"
    temp.write_bytes(b"being written")
    with pytest.raises(ValueError, match=r"being written by another `zmdist embed` run .*pid %d" % os.getpid()):
        _embed(digits, out)
    assert temp.exists() and lock.exists()
    # the same with another layout: its worker is rank 1 of 2, but it owns a shard we would clean
    lock.unlink()
    _fake_lock(out, ".lock-task0-rank1", names[:1], os.getpid())
    with pytest.raises(ValueError, match=r"being written by another"):
        _embed(digits, out)
    assert temp.exists()


def test_stale_locks_are_taken_over_and_released(digits, tmp_path):
    out = tmp_path / "emb"
    names = [s.name for s in Manifest.load(digits).split("test").shards]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _fake_lock(out, ".lock-task0-rank0", names, int(dead.stdout))  # killed run on this host
    other = _fake_lock(out, ".lock-task0-rank1", names, 1, host="some-other-node")  # silent for too long
    os.utime(other, (time.time() - WorkerLock.stale_s - 10,) * 2)
    res = _embed(digits, out)
    assert res["complete"] and not list(out.glob(".lock-task0-rank0*"))  # taken over, then released


def test_array_tasks_of_one_run_do_not_block_each_other(digits, tmp_path):
    out = tmp_path / "emb"
    # task 0 of 2 is running (live lock over its own shards); task 1 works on the others meanwhile
    first = _embed(digits, tmp_path / "probe", "task_index=0", "num_tasks=2")
    mine0 = sorted(p.name.replace(".npz", ".tar") for p in (tmp_path / "probe").glob("*.npz"))
    assert first["shards_written"] == len(mine0) > 0
    _fake_lock(out, ".lock-task0-rank0", mine0, os.getpid())
    second = _embed(digits, out, "task_index=1", "num_tasks=2")
    assert second["shards_written"] == second["shards_total"] - len(mine0)


# --- ranges ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage,args,key", [
    (embed, ["shards=x", "batch_size=0"], "batch_size"),
    (embed, ["shards=x", "num_workers=-1"], "num_workers"),
    (pseudolabel, ["embeddings=x", "topk=0"], "topk"),
    (pseudolabel, ["embeddings=x", "ece_bins=0"], "ece_bins"),
    (shard, ["source=x", "shard_size=0"], "shard_size"),
    (shard, ["source=x", "jpeg_quality=0"], "jpeg_quality"),
    (shard, ["source=x", "jpeg_quality=101"], "jpeg_quality"),
    (shard, ["source=x", "test_fraction=-0.1"], "test_fraction"),
])
def test_stage_options_out_of_range_are_config_errors(stage, args, key):
    with pytest.raises(ConfigError, match=key):
        load_config(stage.Config, None, args)


def test_shard_without_source_or_verify_says_what_to_give(tmp_path):
    with pytest.raises(ValueError, match="source: give the dataset"):
        shard.run(load_config(shard.Config, None, []), tmp_path)


def test_another_hosts_lock_is_waited_on_then_taken_over_or_refused(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(WorkerLock, "stale_s", 1.0)
    monkeypatch.setattr(WorkerLock, "heartbeat_s", 0.3)
    # a requeued job: the killed run's lock on another node is not refreshed -> taken over after stale_s
    _fake_lock(tmp_path, ".lock-task0-rank0", ["a.tar"], 1, host="node-that-died")
    start = time.time()
    with WorkerLock(tmp_path, 0, 0, ["a.tar"], "embed") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert 0.5 < time.time() - start < 10 and not lock.path.exists()
    # a live run on another node refreshes its lock -> refused
    path = _fake_lock(tmp_path, ".lock-task0-rank0", ["a.tar"], 1, host="busy-node")
    stop = threading.Event()

    def beat():
        while not stop.wait(0.1):
            os.utime(path)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(ValueError, match=r"busy-node"):
            WorkerLock(tmp_path, 0, 0, ["a.tar"], "embed").acquire()
    finally:
        stop.set()
        thread.join()
    assert json.loads(path.read_text())["host"] == "busy-node"
