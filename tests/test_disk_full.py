"""A full disk, for real: a tiny tmpfs mounted for the test (needs root, like the SLURM tests).

Each stage must stop with one line naming the path and what is free (exit status 74), keep what it
finished, and complete when rerun after space is freed. A read-only --out (a tmpfs remounted read-only:
as root, chmod 0o555 would not stop a write) stops with one line too (exit status 73). Temp files a killed
run left are removed by the rerun, which ends as an uninterrupted run does."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_stages import TEACHER, _embedded_keys, _env
from zmdist.atomic import TEMP_PREFIX, atomic_copy, atomic_path, atomic_safetensors, atomic_save_npy, atomic_torch_save
from zmdist.cli import main
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.io_errors import EXIT_DISK_FULL, EXIT_NOT_WRITABLE, OutputError, describe


@pytest.fixture
def tiny_disk(tmp_path):
    """``make(name, size)`` mounts a ``size`` (64 KiB) tmpfs at tmp_path/name and returns (path, grow);
    ``grow()`` enlarges it to 64 MiB (space freed). Unmounted at the end."""
    mounted: list[Path] = []

    def make(name: str, size: str = "64k"):
        disk = tmp_path / name
        disk.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, f"the disk-full tests need root to mount a tmpfs: {proc.stderr}"
        mounted.append(disk)
        return disk, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)

    yield make
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _zmdist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zmdist", *args], capture_output=True, text=True, env=_env(),
                          timeout=300)


def test_shard_and_embed_on_a_full_disk_say_so_and_finish_after_space_is_freed(tiny_disk, tmp_path):
    """Catches: a traceback (or a silent partial output) on ENOSPC, and a rerun that cannot finish."""
    disk, grow = tiny_disk("shard-disk")
    shard_args = ["shard", "--source", "sklearn-digits", "--out", str(disk / "shards"), "shard_size=300",
                  "progress=false"]
    full = _zmdist(*shard_args)
    assert full.returncode == 74, full.stderr[-2000:]
    message = full.stderr.strip().splitlines()[-1]
    assert "disk full (errno 28) writing" in message and "bytes free" in message and "Traceback" not in full.stderr
    grow()
    done = _zmdist(*shard_args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((disk / "shards" / "manifest.json").read_text())["splits"]["train"]["total"] == 1797

    disk, grow = tiny_disk("embed-disk")
    embed_args = ["embed", "--shards", str(tmp_path / "shard-disk" / "shards"), "--out", str(disk / "emb"), *TEACHER,
                  "num_workers=0", "progress=false"]
    full = _zmdist(*embed_args)
    assert full.returncode == 74, full.stderr[-2000:]
    assert "disk full (errno 28)" in full.stderr.strip().splitlines()[-1]
    grow()
    done = _zmdist(*embed_args)
    assert done.returncode == 0, done.stderr[-2000:]
    keys = _embedded_keys(disk / "emb")
    assert len(keys) == len(set(keys)) == 1797  # every key exactly once across the two runs


# --- every stage that writes models: one line, exit 74/73, and the rerun finishes ----------------------

TRAIN = ["student=cnn-tiny", "img_size=16", "batch_size=16", "hflip=false", "num_workers=0", "progress=false",
         "method.name=supervised", "steps=6", "eval_every=3", "checkpoint_every=2", "warmup_steps=2"]
PROMPT = ["n_ctx=4", "optim.epochs=1", "optim.batch_size=64", "optim.warmup_epochs=0", "progress=false",
          "strategy=ifpl", "rounds=2"]
UPDP = ["strategy=updp", "budget=10", "updp.steps=5", "progress=false"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Real digit shards, their embeddings by zmdist-micro-vit and zero-shot pseudolabels."""
    root = tmp_path_factory.mktemp("full-disk-digits")
    prepare_digits(root, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return root


@pytest.fixture
def fit_table(tmp_path) -> Path:
    path = tmp_path / "tasks.csv"
    path.write_text("task,iimm,gain,forgetting\na,0,1,0.5\nb,1,3,0.1\nc,2,2,0.2\nd,3,5,0.6\n")
    return path


def _cli(capsys, *args: str) -> tuple[int, str]:
    """(exit status, stderr) of ``zmdist ARGS`` through the real entry point, in this process."""
    capsys.readouterr()
    status = main(list(args))
    return status, capsys.readouterr().err


def _error_line(err: str) -> str:
    """The one error line a stopped stage ends with (and no traceback before it)."""
    assert "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"{TEMP_PREFIX}*"))


def test_wrapped_library_errors_of_a_full_or_read_only_disk_name_the_file_being_written(tiny_disk, tmp_path):
    """safetensors (a Rust error without errno), torch.save (a RuntimeError) and numpy's short write (an
    OSError without errno) on a real full disk all leave the atomic helpers as OutputError(ENOSPC, target),
    with no temp file left; on a read-only disk as EROFS. Catches: a writer whose failure is not recognised
    (a traceback at the CLI) or that names the temp file instead of the target."""
    disk, _ = tiny_disk("lib-disk")
    big = torch.zeros(100_000)
    writers = {
        "model.safetensors": lambda p: atomic_safetensors(p, {"w": big}),
        "optimizer.pt": lambda p: atomic_torch_save(p, {"w": big}),
        "probs.npy": lambda p: atomic_save_npy(p, np.zeros(100_000, np.float32)),
    }
    for name, write in writers.items():
        with pytest.raises(OutputError) as caught:
            write(disk / "run" / name)
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "run" / name), name
        failure = describe(caught.value, disk / "run")
        assert failure.exit_status == EXIT_DISK_FULL and f"writing {disk / 'run' / name}: " in failure.message
        assert _temp_files(disk) == [] and not (disk / "run" / name).exists()
    other, _ = tiny_disk("raw-disk")  # (torch keeps the file open: this disk cannot be remounted)
    with pytest.raises(RuntimeError) as raw:  # torch.save into a path (as DeepSpeed saves): "unexpected pos"
        torch.save({"w": big}, other / "raw.pt")
    assert describe(raw.value, other).exit_status == EXIT_DISK_FULL

    source = tmp_path / "source.npy"
    np.save(source, np.zeros(10))
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    for name, write in {**writers, "copy.npy": lambda p: atomic_copy(source, p)}.items():
        with pytest.raises(OutputError) as caught:
            write(disk / name)
        assert caught.value.errno == errno.EROFS and caught.value.filename == str(disk / name), name
        failure = describe(caught.value, disk)
        assert failure.exit_status == EXIT_NOT_WRITABLE and failure.message.startswith(f"--out {disk} is not writable")
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.png"))
    with pytest.raises(PermissionError) as caught, atomic_path(tmp_path / "out" / "shard.tar"):
        raise unreadable  # an input read while writing: not a failed write of the output
    assert caught.value is unreadable and describe(unreadable, tmp_path / "out") is None


def test_training_checkpoint_on_a_full_disk_says_so_and_the_rerun_finishes(tiny_disk, digits, capsys):
    """Catches: the SafetensorError of a checkpoint's model file as a traceback; a rerun that trips over the
    failed run's partial checkpoint or a killed run's temp export instead of finishing."""
    disk, grow = tiny_disk("train-disk")
    args = ["train", f"shards={digits / 'shards'}", f"pseudolabels={digits / 'pseudolabels'}", *TRAIN,
            "--out", str(disk / "train")]
    status, err = _cli(capsys, *args)
    line = _error_line(err)
    assert status == EXIT_DISK_FULL, err[-3000:]
    assert f"disk full (errno 28) writing {disk / 'train' / 'checkpoints' / '.partial-step-0000002'}/" in line
    assert "bytes free on that file system" in line and "rerun the same command" in line
    grow()
    (disk / "train" / f"{TEMP_PREFIX}final.safetensors.k1l2m3.safetensors").write_bytes(b"half")  # a kill's leftover
    status, err = _cli(capsys, *args)
    assert status == 0, err[-3000:]
    assert load_file(str(disk / "train" / "final.safetensors"))
    assert json.loads((disk / "train" / "summary.json").read_text())["stage"] == "train"
    assert _temp_files(disk) == [] and not list(disk.rglob(".partial-*"))


def test_prompt_tune_on_a_full_disk_says_so_and_the_rerun_finishes(tiny_disk, digits, capsys):
    """Catches: numpy's short write of a round file (an OSError without errno) as a traceback."""
    disk, grow = tiny_disk("prompt-disk")
    args = ["prompt-tune", f"embeddings={digits / 'embeddings'}", *PROMPT, "--out", str(disk / "pt")]
    status, err = _cli(capsys, *args)
    line = _error_line(err)
    assert status == EXIT_DISK_FULL, err[-3000:]
    assert f"disk full (errno 28) writing {disk / 'pt' / 'round-00'}/" in line and "bytes free" in line
    grow()
    status, err = _cli(capsys, *args)
    assert status == 0, err[-3000:]
    assert np.load(disk / "pt" / "classifier.npy").shape == (10, 32) and _temp_files(disk) == []


def test_select_updp_on_a_full_disk_says_so_and_the_rerun_finishes(tiny_disk, digits, capsys):
    """Catches: the SafetensorError of UP-DP's model file as a traceback."""
    disk, grow = tiny_disk("select-disk")
    args = ["select", f"embeddings={digits / 'embeddings'}", *UPDP, "--out", str(disk / "sel")]
    status, err = _cli(capsys, *args)
    line = _error_line(err)
    assert status == EXIT_DISK_FULL, err[-3000:]
    assert f"disk full (errno 28) writing {disk / 'sel' / 'updp.safetensors'}: " in line and "bytes free" in line
    grow()
    status, err = _cli(capsys, *args)
    assert status == 0, err[-3000:]
    assert len((disk / "sel" / "selected_keys.txt").read_text().split()) == 10 and _temp_files(disk) == []


def test_transfer_fit_on_a_full_disk_names_the_figure_and_the_rerun_finishes(tiny_disk, fit_table, capsys):
    """Catches: the figure's failed write naming only the --out folder (matplotlib's error has no file name)."""
    disk, grow = tiny_disk("fit-disk", "20k")  # fit.json fits, the ~44 KB fit.png does not
    args = ["transfer", "fit", "--table", str(fit_table), "--out", str(disk / "fit")]
    status, err = _cli(capsys, *args)
    line = _error_line(err)
    assert status == EXIT_DISK_FULL, err[-3000:]
    assert f"disk full (errno 28) writing {disk / 'fit' / 'fit.png'}: " in line
    grow()
    status, err = _cli(capsys, *args)
    assert status == 0, err[-3000:]
    assert (disk / "fit" / "fit.png").read_bytes()[:4] == b"\x89PNG" and _temp_files(disk) == []


def test_a_read_only_out_is_one_line_not_a_traceback(tiny_disk, digits, fit_table, capsys):
    """A read-only file system (root ignores chmod 0o555, a read-only mount it cannot): an existing --out and
    one still to be created both stop with one line naming --out, exit status 73. Catches: EROFS re-raised
    as a traceback, or reported as a full disk."""
    disk, _ = tiny_disk("ro-disk", "1m")
    (disk / "fit").mkdir()
    (disk / "sel").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    for out, args in [(disk / "fit", ["transfer", "fit", "--table", str(fit_table)]),
                      (disk / "new" / "fit", ["transfer", "fit", "--table", str(fit_table)]),
                      (disk / "sel", ["select", f"embeddings={digits / 'embeddings'}", *UPDP])]:
        status, err = _cli(capsys, *args, "--out", str(out))
        line = _error_line(err)
        assert status == EXIT_NOT_WRITABLE, err[-3000:]
        assert f"error: --out {out} is not writable (read-only file system, errno 30, writing {disk}" in line
        assert "point --out elsewhere" in line


def _plant(folder: Path, name: str, content: bytes) -> Path:
    """A temp file as a run killed while writing ``folder/name`` leaves it (half the bytes)."""
    path = folder / f"{TEMP_PREFIX}{name}.x7k2q9{Path(name).suffix}"
    path.write_bytes(content[: len(content) // 2])
    return path


def test_a_killed_runs_temp_files_are_removed_by_the_rerun_which_ends_as_an_uninterrupted_one(digits, tmp_path,
                                                                                            capsys):
    """prompt-tune killed while writing round 1 (its marker not yet written) and select killed while saving
    UP-DP's model leave temp files; the rerun removes them (in OUT and every round folder) and writes what
    an uninterrupted run writes. Catches: leftovers that pile up run after run."""
    whole, killed = tmp_path / "pt-whole", tmp_path / "pt-killed"
    for out in (whole, killed):
        assert _cli(capsys, "prompt-tune", f"embeddings={digits / 'embeddings'}", *PROMPT, "--out", str(out))[0] == 0
    (killed / "round-01" / "metrics.json").unlink()
    prompt = (whole / "round-01" / "prompt.safetensors").read_bytes()
    planted = [_plant(killed / "round-01", "prompt.safetensors", prompt),
               _plant(killed / "round-00", "prompt.safetensors", prompt),
               _plant(killed, "classifier.npy", (whole / "classifier.npy").read_bytes())]
    status, err = _cli(capsys, "prompt-tune", f"embeddings={digits / 'embeddings'}", *PROMPT, "--out", str(killed))
    assert status == 0, err[-3000:]
    assert json.loads((killed / "summary.json").read_text())["resumed_at_round"] == 1
    assert not any(p.exists() for p in planted) and _temp_files(killed) == []
    for name in ("round-01/prompt.safetensors", "round-01/pool_probs.npy", "round-01/pseudolabels.npz",
                 "classifier.npy", "prompt.safetensors"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name

    whole, killed = tmp_path / "sel-whole", tmp_path / "sel-killed"
    assert _cli(capsys, "select", f"embeddings={digits / 'embeddings'}", *UPDP, "--out", str(whole))[0] == 0
    killed.mkdir()
    planted = [_plant(killed, "updp.safetensors", (whole / "updp.safetensors").read_bytes()),
               _plant(killed, "selected_keys.txt", (whole / "selected_keys.txt").read_bytes())]
    status, err = _cli(capsys, "select", f"embeddings={digits / 'embeddings'}", *UPDP, "--out", str(killed))
    assert status == 0, err[-3000:]
    assert not any(p.exists() for p in planted) and _temp_files(killed) == []
    assert (killed / "selected_keys.txt").read_text() == (whole / "selected_keys.txt").read_text()
    saved, again = load_file(str(whole / "updp.safetensors")), load_file(str(killed / "updp.safetensors"))
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


def test_a_cluster_job_fails_with_the_same_one_line(tiny_disk, fit_table, monkeypatch):
    """`zmdist submit`'s task runner raises WriteFailure (the CLI's line and exit status) in place of the
    library's error, so the job's reported error ends in that line. Catches: the raw error reaching the job."""
    from zmdist.cluster import task
    from zmdist.io_errors import WriteFailure

    monkeypatch.setattr(task, "job_environment", lambda: ("local", {}))
    for var in ("ZMDIST_TASK_INDEX", "ZMDIST_NUM_TASKS"):  # the runner sets them: restored after the test
        monkeypatch.setenv(var, "")
    disk, _ = tiny_disk("job-disk", "20k")
    with pytest.raises(WriteFailure) as caught:
        task.StageTask("transfer", ["fit", "--table", str(fit_table), "--out", str(disk / "fit")])()
    assert caught.value.exit_status == EXIT_DISK_FULL and caught.value.__suppress_context__
    assert str(caught.value).startswith(f"disk full (errno 28) writing {disk / 'fit' / 'fit.png'}: ")
