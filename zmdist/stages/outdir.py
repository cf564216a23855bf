"""Who may write an output folder: one stage per folder, one run of it at a time.

Every stage calls one of these at the top of its ``run``, before writing anything into ``OUT``:

- ``own_output(out, stage, main=...)`` (a context manager) for stages whose files one process writes
  (shard, train, prompt-tune, select, transfer, bench, quickstart): the main process claims ``OUT`` for
  ``stage`` and holds its writer lock (``OUT/.lock-task0-rank0``, ``WorkerLock.whole_folder``) until the
  block ends; other ranks only check the claim.
- ``claim_output(out, stage, mark=...)`` for stages whose workers each write their own files (embed,
  pseudolabel, al-sim): every worker checks the claim, the main one of each task marks the folder, and
  each worker then holds its own ``WorkerLock`` over its share.

Why: a second run into the same folder (other settings, a moment later) would interleave its files with
the first one's, and a stage pointed at another stage's folder would replace that stage's
``summary.json`` and ``config.yaml``; both exit 0 and leave a folder no one can trust.

A folder's stage is recorded in ``OUT/.zmdist-stage`` (``{"stage": NAME}``) when it is claimed.
Folders written before that marker existed are recognised by the stage's info file (``STAGE_FILES``) and
by ``summary.json``'s ``stage``. Ownership is per folder: a stage's subfolders (train's phases, bench's
steps, quickstart's stages) belong to whichever stage writes them.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from zmdist.atomic import TEMP_PREFIX
from zmdist.jsonfile import read_json
from zmdist.stages.common import WorkerLock

OWNER_FILE = ".zmdist-stage"
# files only one stage writes into its output folder, so they say which stage made a folder
STAGE_FILES = {
    "manifest.json": "shard",
    "embed_info.json": "embed",
    "pseudolabel_info.json": "pseudolabel",
    "prompt_tune_info.json": "prompt-tune",
    "select_info.json": "select",
    "al_sim_info.json": "al-sim",
    "transfer_info.json": "transfer",
    "predict_info.json": "predict",
}
SUMMARY_FILE = "summary.json"


def folder_owners(out: Path) -> list[tuple[str, Path]]:
    """Every (stage, file that says so) of ``out``: its ownership marker, the info files only one stage
    writes, and ``summary.json``'s ``stage``. Empty for a new or empty folder."""
    owners: list[tuple[str, Path]] = []
    marker = out / OWNER_FILE
    if marker.is_file():
        owners.append((str(_read(marker).get("stage")), marker))
    owners += [(stage, out / name) for name, stage in STAGE_FILES.items() if (out / name).is_file()]
    summary = out / SUMMARY_FILE
    if summary.is_file() and "stage" in (data := _read(summary)):
        owners.append((str(data["stage"]), summary))
    return owners


def _read(path: Path) -> dict:
    return read_json(path, f"it says which stage wrote {path.parent}; delete {path} if that folder is yours "
                           "to reuse, or use a new --out folder")


def check_output(out: Path, stage: str) -> None:
    """Refuse ``out`` when it holds another stage's results, naming that stage and the file that says so."""
    others: dict[str, list[str]] = {}
    for owner, path in folder_owners(out):
        if owner != stage:
            others.setdefault(owner, []).append(path.name)
    if others:
        which = "; ".join(f"`zmdist {owner}` ({', '.join(files)} in it {'says' if len(files) == 1 else 'say'} so)"
                          for owner, files in others.items())
        raise ValueError(f"--out {out} holds the results of {which}: each output folder belongs to one stage, and "
                         f"`zmdist {stage}` would replace them. Give `zmdist {stage}` its own --out folder.")


def claim_output(out: Path, stage: str, *, mark: bool = True) -> None:
    """Refuse ``out`` when it holds another stage's results; with ``mark`` (the main process) also record
    ``stage`` as its owner in ``OUT/.zmdist-stage``. The marker is created atomically and only when missing
    (hard link of a complete temp file), so of two stages claiming one new folder at once, one is refused."""
    check_output(out, stage)
    if not mark:
        return
    out.mkdir(parents=True, exist_ok=True)
    marker = out / OWNER_FILE
    if not marker.is_file():
        temp = out / f"{TEMP_PREFIX}{OWNER_FILE}.{os.getpid()}"
        temp.write_text(json.dumps({"stage": stage}) + "\n")
        try:
            os.link(temp, marker)
        except FileExistsError:
            pass  # claimed in between: checked below
        finally:
            temp.unlink()
    check_output(out, stage)


@contextmanager
def own_output(out: Path, stage: str, *, main: bool = True) -> Iterator[None]:
    """For the block's duration, ``out`` is ``stage``'s and this run its only writer: the ``main`` process
    claims it and holds ``OUT/.lock-task0-rank0`` (a second run is refused naming the holder's host and
    pid; a killed run's lock is taken over); other processes of the run only check the claim."""
    claim_output(out, stage, mark=main)
    if not main:
        yield
        return
    with WorkerLock.whole_folder(out, stage):
        yield
