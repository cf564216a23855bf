"""``zmdist transfer score|fit|predict``: predict fine-tuning gain and forgetting from zero-shot embeddings.

- ``score``: one streaming pass over a task's embedding shards (``split``, default train) gives IIMM
  (Niss et al. 2024: mean of the inter-modal similarity to the incorrect class texts and the mean
  pairwise image similarity) and the baselines H-score and LogME (and GBC on request;
  ``zmdist.methods.transfer``). Class
  texts come from the manifest's class names and ``templates``, through the text tower of the teacher
  recorded in ``embed_info.json``. Ranks (torchrun) take disjoint shards and merge their float64 sums
  with one all-reduce, so any world size gives the single-process score.
- ``fit``: a CSV of measured tasks (``task_column``, the score column, the targets, e.g. gain and
  forgetting) -> one least-squares line per target with R^2, leave-one-out errors, ``fit.json`` and
  ``fit.png`` (scatter, line, prediction band).
- ``predict``: ``fit.json`` + new tasks' scores (numbers, or ``transfer score`` output folders) ->
  predicted targets with a ``level`` prediction interval (``predictions.csv``); a score more than 10% of the
  fitted range outside it is flagged ``extrapolated`` (and warned about), a non-finite one refused.

Options are flat and belong to one action each (listed per action in ``--help``); an option of another
action is an error, so a misplaced ``--table`` on ``score`` is not silently ignored. ``score`` is one
read of the embeddings (IIMM: about 4 s per 10^6 rows of d=512 on one core; the baselines' d x d second
moment costs about 20x that): a stopped run is simply run again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from zmdist import dist
from zmdist.atomic import atomic_save_npy, atomic_write_text, clean_temp_dir
from zmdist.config import ConfigError, option, to_dict
from zmdist.methods.transfer import (extrapolated, gbc_from_stats, h_score_from_stats, iimm_from_stats,
                                     logme_from_stats)
from zmdist.formats import open_embedding_run
from zmdist.provenance import hash_file, hash_json, provenance, write_run_files
from zmdist.stages.common import check_run_info, plan_shards, resolve_device, shards_fingerprint
from zmdist.stages.outdir import own_output
from zmdist.teacher import get_templates, prompt_names
from zmdist.transfer.plots import fit_figure
from zmdist.transfer.streaming import accumulate, all_reduce
from zmdist.transfer.table import fit_table, line_of, load_fit, read_table, score_of, write_fit
from zmdist.transfer.text import class_text_embeddings

NAME = "transfer"
HELP = "predict fine-tuning gain and forgetting: score (IIMM, H-score, LogME), fit a line, predict new tasks"
log = logging.getLogger("zmdist")

BASELINES = {"h_score": h_score_from_stats, "logme": logme_from_stats, "gbc": gbc_from_stats}
INFO_FILE = "transfer_info.json"
# options naming inputs (compared by their content instead) or where the work runs
_NOT_SETTINGS = {"embeddings", "shards", "table", "fit", "scores", "device"}


@dataclass
class Config:
    action: Literal["score", "fit", "predict"] = option("score", "what to do: score a task, fit measured tasks, "
                                                                 "predict new ones (first bare word: `transfer fit`)")
    # score
    embeddings: str = option("", "score: output of `zmdist embed` (folder, URL or pipe: template)")
    shards: str = option("", "score: where the shards are now; empty = where `embed` read them (same set, checked)")
    split: str = option("train", "score: the split whose embeddings are scored (needs ground-truth labels)")
    templates: str | list[str] = option("simple", "score: prompt template set or list; one template = the paper's "
                                                  "single prompt per class, several = their normalised mean")
    classnames: list[str] = option(factory=list, help="score: names used in prompts, in class order; empty = manifest's")
    baselines: list[str] = option(factory=lambda: ["h_score", "logme"],
                                  help="score: baseline scores besides IIMM (h_score, logme, gbc: needs 2+ images "
                                       "per class); [] = IIMM only, O(N d) instead of O(N d^2)")
    task: str = option("", "score: the task's name in summary.json (used by predict); empty = the --out folder's name")
    device: str = option("auto", "score: device of the text tower (auto, cpu, cuda, cuda:N)")
    # fit
    table: str = option("", "fit: CSV of measured tasks with a header (task, score columns, gain, forgetting)")
    task_column: str = option("task", "fit: the column naming each task")
    score_column: str = option("iimm", "fit: the score column the targets are fitted on (iimm, h_score, logme, ...)")
    targets: list[str] = option(factory=lambda: ["gain", "forgetting"], help="fit: the columns predicted from the score")
    # fit and predict
    level: float = option(0.95, "fit, predict: coverage of the prediction interval", min=0.0, max=1.0,
                          min_exclusive=True)
    # predict
    fit: str = option("", "predict: a `transfer fit` result (DIR/fit.json or DIR)")
    scores: list[str] | str = option(factory=list, help="predict: new tasks' scores: numbers, or `transfer score` "
                                                        "output folders / summary.json files")
    progress: bool = option(True, "show shards read, shards/s and ETA (rank 0)")


# Which options each action reads (``progress`` and ``action`` belong to all).
ACTION_OPTIONS = {
    "score": {"embeddings", "shards", "split", "templates", "classnames", "baselines", "task", "device"},
    "fit": {"table", "task_column", "score_column", "targets", "level"},
    "predict": {"fit", "scores", "level"},
}
REQUIRED = {"score": ["embeddings"], "fit": ["table"], "predict": ["fit", "scores"]}


def check_action_options(cfg: Config) -> None:
    """Refuse options of another action (a set value there would be ignored) and missing required ones."""
    defaults = Config()
    mine = ACTION_OPTIONS[cfg.action]
    for owners in ACTION_OPTIONS.values():
        for key in sorted(owners - mine):
            if getattr(cfg, key) != getattr(defaults, key):
                users = [a for a, keys in ACTION_OPTIONS.items() if key in keys]
                raise ConfigError(f"{key}: an option of `transfer {'/'.join(users)}`, not of `transfer {cfg.action}`; "
                                  f"drop it or run `zmdist transfer {users[0]} ...`")
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
    for key in REQUIRED[cfg.action]:
        if not getattr(cfg, key):
            raise ConfigError(f"{key}: `transfer {cfg.action}` needs --{key} ({helps[key]})")
    unknown = [b for b in cfg.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"baselines: unknown {unknown}; known: {sorted(BASELINES)}")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    check_action_options(cfg)
    with own_output(out, NAME, main=dist.detect(0, 1).is_main):
        return {"score": run_score, "fit": run_fit, "predict": run_predict}[cfg.action](cfg, out)


def check_rerun(cfg: Config, out: Path, inputs: dict[str, Any]) -> Callable[[], None]:
    """Refuse a rerun into ``out`` with another action, other inputs (by content) or other settings, naming
    what changed, before anything is replaced; return what records them in ``OUT/transfer_info.json``, called
    once the results are written (a run that fails midway records nothing and leaves the folder reusable)."""
    path = out / INFO_FILE
    compared = {"action": cfg.action, **inputs,
                **{k: getattr(cfg, k) for k in sorted(ACTION_OPTIONS[cfg.action] - _NOT_SETTINGS)}}
    where = {k: str(getattr(cfg, k)) for k in sorted(ACTION_OPTIONS[cfg.action] & _NOT_SETTINGS)}
    if path.is_file():
        check_run_info(path, {"action": cfg.action}, "transfer results")  # another action: say that alone
        check_run_info(path, compared, "transfer results", where)
    return lambda: check_run_info(path, compared, "transfer results", where)


def run_score(cfg: Config, out: Path) -> dict[str, Any]:
    """IIMM + baselines of one task, streamed over this rank's shards and all-reduced."""
    info = dist.detect(0, 1)
    dist.init_distributed(info)
    log.info("transfer score: %s", dist.describe(info))
    device = resolve_device(cfg.device, info)
    run_files = open_embedding_run(cfg.embeddings, cfg.shards)
    emb_dir, emb_info, manifest = run_files.folder, run_files.info, run_files.manifest
    if cfg.split not in emb_info["splits"]:
        raise ValueError(f"split={cfg.split}: {emb_dir} holds embeddings of splits {emb_info['splits']} only")
    classnames = cfg.classnames or prompt_names(manifest.classes)
    if len(classnames) != len(manifest.classes):
        raise ValueError(f"classnames: {len(classnames)} names given, the manifest has {len(manifest.classes)} classes")
    templates = get_templates(cfg.templates)
    all_jobs, mine = plan_shards(manifest, [cfg.split], out, info)
    if cfg.shards:
        every = plan_shards(manifest, emb_info["splits"], out, info)[0]
        if shards_fingerprint(every, manifest.classes) != emb_info.get("shards_fingerprint"):
            raise ValueError(f"shards={cfg.shards} is not the shard set {emb_dir} was embedded from")
    record: Callable[[], None] = lambda: None  # ranks other than 0 neither check nor record
    if info.is_main:
        record = check_rerun(cfg, out, {
            "shards_fingerprint": emb_info.get("shards_fingerprint"),
            "teacher_fingerprint": emb_info.get("teacher_fingerprint"),
            "prompts_fingerprint": hash_json({"classnames": classnames, "templates": templates})})
        clean_temp_dir(out)  # files a killed run left half-written
    text = class_text_embeddings(emb_info, classnames, templates, device, str(emb_dir))
    start = time.perf_counter()
    stats = accumulate([(j.name, j.count) for j in mine], emb_dir, len(classnames), text.shape[1],
                       second_moment=bool(cfg.baselines), progress=cfg.progress and info.is_main)
    stats = all_reduce(stats)
    result = iimm_from_stats(stats, text)
    scores = {"iimm": result.iimm, "inter": result.inter, "intra": result.intra}
    scores.update({name: BASELINES[name](stats) for name in cfg.baselines})
    seconds = time.perf_counter() - start
    shards_per_rank = dist.all_gather_objects(len(mine))
    results: dict[str, Any] = {
        "stage": NAME, "action": "score", "task": cfg.task or out.resolve().name, "split": cfg.split,
        "scores": scores, "num_images": stats.num_images, "num_classes": len(classnames),
        "class_counts": {c: int(n) for c, n in zip(manifest.classes, stats.counts.round().long().tolist())},
        "world_size": info.world_size, "shards": len(all_jobs), "shards_per_rank": shards_per_rank,
        "score_seconds": seconds, "teacher": emb_info["teacher"], "templates": templates, "classnames": classnames,
    }
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(out / "text_embeddings.npy", text.numpy())
        write_run_files(out, to_dict(cfg), {**results, **provenance(classes=classnames, templates=templates)})
        record()
        log.info("transfer score %s: %s", results["task"], ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    dist.barrier()
    return results


def run_fit(cfg: Config, out: Path) -> dict[str, Any]:
    """Lines of each target on the chosen score, their R^2 and leave-one-out errors, and the figure."""
    tasks, values = read_table(Path(cfg.table), cfg.task_column, [cfg.score_column, *cfg.targets])
    fit = fit_table(tasks, values, cfg.score_column, cfg.targets)
    record = check_rerun(cfg, out, {"table_sha256": hash_file(Path(cfg.table))})
    clean_temp_dir(out)  # files a killed run left half-written
    fit_path = write_fit(out, fit, cfg.level)
    figure = fit_figure(fit, cfg.level, out / "fit.png")
    results = {"stage": NAME, "action": "fit", "score_column": cfg.score_column, "tasks": len(tasks),
               "fits": fit["fits"], "fit_file": str(fit_path), "figure": str(figure)}
    write_run_files(out, to_dict(cfg), {**results, **provenance()})
    record()
    for target, line in fit["fits"].items():
        log.info("transfer fit: %s = %.4g * %s + %.4g, R^2 %.3f, LOO RMSE %.4g (%d tasks)", target, line["slope"],
                 cfg.score_column, line["intercept"], line["r2"], line["loo_rmse"], len(tasks))
    return results


def run_predict(cfg: Config, out: Path) -> dict[str, Any]:
    """Each new task's predicted targets with their prediction intervals (``predictions.csv``); a score more
    than 10% of the fitted scores' range outside it is predicted but flagged ``extrapolated`` and warned about."""
    fit = load_fit(Path(cfg.fit))
    specs = [cfg.scores] if isinstance(cfg.scores, str) else cfg.scores
    fitted_low, fitted_high = min(fit["scores"]), max(fit["scores"])
    predictions = []
    for spec in specs:
        name, score = score_of(spec, fit["score_column"])
        row: dict[str, Any] = {"task": name, "score": score, "extrapolated": extrapolated(score, fit["scores"])}
        if row["extrapolated"]:
            log.warning("transfer predict %s: %s %.4g lies outside the fitted tasks' range [%.4g, %.4g]: the line "
                        "is extrapolated and its interval assumes it still holds there", name, fit["score_column"],
                        score, fitted_low, fitted_high)
        for target in fit["fits"]:
            pred, low, high = line_of(fit, target).predict(score, cfg.level)
            row[target] = {"prediction": pred, "low": low, "high": high}
        predictions.append(row)
    record = check_rerun(cfg, out, {"fit_fingerprint": hash_json(fit),
                                    "scores_read": [[row["task"], row["score"]] for row in predictions]})
    clean_temp_dir(out)  # files a killed run left half-written
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", fit["score_column"], *[f"{t}_{k}" for t in fit["fits"] for k in ("prediction", "low", "high")],
                     "extrapolated"])
    for row in predictions:
        writer.writerow([row["task"], row["score"], *[row[t][k] for t in fit["fits"] for k in ("prediction", "low", "high")],
                         row["extrapolated"]])
    atomic_write_text(out / "predictions.csv", buffer.getvalue())
    figure = fit_figure(fit, cfg.level, out / "predictions.png", predictions)
    results = {"stage": NAME, "action": "predict", "score_column": fit["score_column"], "level": cfg.level,
               "predictions": predictions, "figure": str(figure)}
    write_run_files(out, to_dict(cfg), {**results, **provenance()})
    record()
    for row in predictions:
        log.info("transfer predict %s (%s %.4f): %s", row["task"], fit["score_column"], row["score"],
                 ", ".join(f"{t} {row[t]['prediction']:.4g} [{row[t]['low']:.4g}, {row[t]['high']:.4g}]"
                           for t in fit["fits"]))
    return results
