"""``zmdist al-sim``: simulate active learning on embedding files, several strategies x seeds in one run.

Oracle labels come from the embedding files (the shards' ground truth). Round 0 labels
``start_per_class`` per class chosen by each initial strategy (``inits``), each later round
``step_per_class`` per class more chosen by each query strategy (``strategies``); after every round a
dropout linear probe is trained on the labels and scored on ``test_split`` (accuracy and class-weighted
accuracy). Writes ``OUT/cells/<init>+<query>-seed<s>.json`` per finished cell (a rerun skips them:
resumable per cell), and once every cell is done ``OUT/curves.csv``, ``OUT/learning_curve.png`` and
``OUT/summary.json``. Ranks and job-array tasks (``task_index``/``num_tasks``, default from SLURM)
take disjoint shares of the cells, each worker holding ``OUT/.lock-task{i}-rank{r}`` over its share
(``zmdist.stages.common.WorkerLock``: a second run on the same folder is refused); the worker that finds
all cells done writes the merged files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist import dist
from zmdist.atomic import atomic_write_text
from zmdist.config import option, to_dict
from zmdist.progress import Progress
from zmdist.provenance import hash_json, provenance, write_run_files
from zmdist.selection.pool import load_pool
from zmdist.selection.probe import ProbeConfig
from zmdist.selection.simulate import Cell, curves, headline, my_cells, plan_cells, plot_curves, run_cell, to_csv
from zmdist.selection.strategies import RuleConfig
from zmdist.selection.updp import UpdpConfig
from zmdist.stages.common import WorkerLock, check_run_info, resolve_device, warn_single_class
from zmdist.stages.outdir import claim_output

NAME = "al-sim"
HELP = "simulate active learning rounds on embeddings: strategies x seeds, learning-curve CSV and PNG"
INFO_FILE = "al_sim_info.json"
log = logging.getLogger("zmdist")
InitStrategy = Literal["random", "centroid", "typiclust", "probcover", "updp"]
QueryStrategy = Literal["dropquery", "random", "entropy", "margin", "least-confidence", "coreset"]


@dataclass
class Config:
    embeddings: str = option(help="output of `zmdist embed` with a train and a test split")
    shards: str = option("", "where the shard set's manifest is now; empty = where `embed` read it")
    train_split: str = option("train", "the pool labels are chosen from")
    test_split: str = option("test", "the split each round's probe is scored on")
    inits: list[InitStrategy] = option(factory=lambda: ["random", "centroid"], help="round-0 strategies")
    strategies: list[QueryStrategy] = option(
        factory=lambda: ["dropquery", "random", "entropy", "margin", "least-confidence", "coreset"],
        help="query strategies of rounds 1, 2, ...")
    seeds: list[int] = option(factory=lambda: [0, 1, 2], help="one cell per (init, strategy, seed)")
    rounds: int = option(10, "rounds per cell, round 0 included", min=1)
    start_per_class: int = option(1, "labels per class chosen in round 0 (budget = this x classes)", min=1)
    step_per_class: int = option(1, "labels per class added each later round (budget = this x classes)", min=1)
    device: str = option("auto", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    task_index: int | None = option(None, "this job-array task's index; default from SLURM_ARRAY_TASK_ID", min=0)
    num_tasks: int | None = option(None, "number of job-array tasks; default from SLURM_ARRAY_TASK_COUNT", min=1)
    progress: bool = option(True, "show cells done (rank 0)")
    rules: RuleConfig = option(factory=RuleConfig, help="k-means, DropQuery, TypiClust and ProbCover settings")
    probe: ProbeConfig = option(factory=ProbeConfig, help="the dropout linear probe (selection and scoring)")
    updp: UpdpConfig = option(factory=UpdpConfig, help="UP-DP training (init strategy updp)")


def _settings(cfg: Config) -> dict[str, Any]:
    """What the cells' numbers depend on (not where or how fast they are computed)."""
    skip = {"shards", "device", "task_index", "num_tasks", "progress", "inits", "strategies", "seeds"}
    return {k: v for k, v in to_dict(cfg).items() if k not in skip}


def run(cfg: Config, out: Path) -> dict[str, Any]:
    info = dist.detect(cfg.task_index, cfg.num_tasks)
    dist.init_distributed(info)
    device = resolve_device(cfg.device, info)
    log.info("al-sim: %s", dist.describe(info))
    claim_output(out, NAME, mark=info.is_main)
    train = load_pool(cfg.embeddings, cfg.train_split, cfg.shards)
    test = load_pool(cfg.embeddings, cfg.test_split, cfg.shards)
    for split, pool in ((cfg.train_split, train), (cfg.test_split, test)):
        unlabelled = int((pool.labels < 0).sum())
        if unlabelled:
            raise ValueError(f"split {split!r} of {cfg.embeddings} has {unlabelled} samples without a label: the "
                             "simulation's oracle needs ground truth for every sample")
    warn_single_class(train.labels, train.classes, f"{NAME}: split {cfg.train_split!r} (every labelled set)")
    needed = len(train.classes) * (cfg.start_per_class + cfg.step_per_class * (cfg.rounds - 1))
    if needed > len(train):
        raise ValueError(f"rounds={cfg.rounds} would label {needed} samples but split {cfg.train_split!r} has "
                         f"{len(train)}: use fewer rounds or smaller steps")
    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        check_run_info(out / INFO_FILE, {"settings": hash_json(_settings(cfg))}, "simulation cells",
                       recorded={"settings_values": _settings(cfg)})
    dist.barrier()
    cells = plan_cells(cfg.inits, cfg.strategies, cfg.seeds)
    mine = my_cells(cells, info.worker_index, info.num_workers)
    with WorkerLock(out, info.task_index, info.rank, [c.name for c in mine], NAME):  # disjoint shares
        todo = [c for c in mine if not (cells_dir / f"{c.name}.json").is_file()]
        start = time.perf_counter()
        with Progress(len(mine), "al-sim", "cell", enabled=cfg.progress and info.is_main,
                      initial=len(mine) - len(todo)) as bar:
            for cell in todo:
                rows = run_cell(cell, train, test, rounds=cfg.rounds, start_per_class=cfg.start_per_class,
                                step_per_class=cfg.step_per_class, rules=cfg.rules, probe=cfg.probe, updp=cfg.updp,
                                device=device)
                atomic_write_text(cells_dir / f"{cell.name}.json", json.dumps(rows, indent=1) + "\n")
                bar.update(1)
        per_worker = dist.all_gather_objects({"worker": info.worker_index, "cells_run": len(todo),
                                              "cells_assigned": len(mine), "seconds": time.perf_counter() - start})
        dist.barrier()
        done = [c for c in cells if (cells_dir / f"{c.name}.json").is_file()]
        results: dict[str, Any] = {"stage": NAME, "world_size": info.world_size, "task_index": info.task_index,
                                   "num_tasks": info.num_tasks, "cells_total": len(cells), "cells_done": len(done),
                                   "complete": len(done) == len(cells), "per_worker": per_worker}
        if info.is_main:
            if info.num_tasks > 1:
                atomic_write_text(out / f"summary.task-{info.task_index}-of-{info.num_tasks}.json",
                                  json.dumps(results, indent=2))
            if results["complete"]:
                results.update(merge(cells, cells_dir, out))
                write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seeds[0], classes=train.classes)})
        dist.barrier()
        return results


def merge(cells: list[Cell], cells_dir: Path, out: Path) -> dict[str, Any]:
    """The merged CSV, learning-curve PNG and per-curve summaries of every cell's rows."""
    rows = [row for c in cells for row in json.loads((cells_dir / f"{c.name}.json").read_text())]
    atomic_write_text(out / "curves.csv", to_csv(rows))
    table = curves(rows, "class_weighted_accuracy")
    plot = plot_curves(table, out / "learning_curve.png", "class_weighted_accuracy")
    return {"csv": str(out / "curves.csv"), "plot": str(plot),
            "class_weighted_accuracy": table, "accuracy": curves(rows, "accuracy"),
            "headline_class_weighted_accuracy": headline(table)}
