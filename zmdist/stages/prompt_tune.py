"""``zmdist prompt-tune``: tune the teacher's prompts on its own pseudolabels (FPL, IFPL, GRIP; Menghini et al. 2023).

Settings: ``ssl`` (``labels_per_class`` labels per class + the unlabelled rest), ``trzsl`` (every image of
the seen classes labelled; pseudolabels among the unseen classes), ``ul`` (no labels). Strategies:
``none`` (plain CoOp on the labels), ``fpl`` (one round on the zero-shot top-``k`` per class), ``ifpl``
(``rounds`` rounds of top-``k``, relabelling with each round's prompt), ``grip`` (``rounds`` rounds with K
growing from 10% of the pool to all of it). Every round re-initialises the prompt, trains it on the
labels plus that round's pseudolabels with the setting's loss weights, then relabels the pool with it.

Those are the method's clean choices (the defaults). The released code (BatsResearch/menghini-neurips23-code
at 2094fa5), which produced the published numbers, differs; each difference is an option, all of them on in
``configs/bench/grip.yaml``: ``loss_balance`` (weighted per-part means), ``k_schedule`` (floored K),
``rounds_init`` (warm-started rounds), ``keep_epoch`` (the last epoch), ``ssl_draw`` (labels drawn once,
80% trained on) and ``trzsl_softmax`` (a softmax over the unseen classes).

Textual (CoOp) prompts train on the cached image embeddings of ``zmdist embed``: no image goes through
the image tower. Visual (VPT-shallow) and multimodal (text + visual tokens from one shared transformer)
prompts decode the split's images from the shards once, keep them preprocessed in memory (so the pool must
fit: N x 3 x S x S floats), and run them through the frozen image tower every step.

Each round is saved in ``OUT/round-NN/`` (``prompt.safetensors``, ``pseudolabels.npz``, ``pool_probs.npy``,
``classifier.npy`` for textual prompts, and ``metrics.json`` last, which marks the round finished); a rerun
resumes after the last finished round (every file is written atomically, and the temp files of a killed
run are removed when it is rerun). ``OUT/classifier.npy`` (C x D, unit rows) is the final textual
prompt's head: ``zmdist pseudolabel classifier=OUT/classifier.npy``.
Data-parallel under torchrun (gloo on CPU): see ``zmdist.prompts.training``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from zmdist import dist
from zmdist.atomic import atomic_copy, atomic_save_npy, atomic_save_npz, atomic_write_text, clean_temp_dir
from zmdist.config import ConfigError, option, to_dict
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.methods.prompting import (candidate_probs, grip_k, harmonic_mean, loss_weights, released_loss_weights,
                                      top_k_per_class)
from zmdist.prompts import MultimodalPrompt, TextualPrompt, VisualPrompt, load_prompt, save_prompt
from zmdist.prompts.data import Labelling, SplitEmbeddings, load_split, make_labelling
from zmdist.prompts.training import OptimSettings, predict_probs, train_round
from zmdist.formats import open_embedding_run
from zmdist.provenance import hash_json, provenance, write_run_files
from zmdist.stages.common import check_run_info, resolve_device, shards_spec, warn_single_class
from zmdist.stages.outdir import own_output
from zmdist.teacher import build_zeroshot_classifier, get_templates, prompt_names
from zmdist.teacher.loading import Teacher, load_recorded_teacher

NAME = "prompt-tune"
HELP = "tune the teacher's prompts on its own pseudolabels (CoOp/VPT with FPL, IFPL or GRIP; SSL, TRZSL or UL)"
INFO_FILE = "prompt_tune_info.json"
log = logging.getLogger("zmdist")


@dataclass
class OptimConfig:
    lr: float = option(0.1, "SGD learning rate (the paper: 0.1 for textual and visual prompts)", min=0, min_exclusive=True)
    momentum: float = option(0.9, "SGD momentum", min=0, max=1)
    weight_decay: float = option(0.1, "SGD weight decay", min=0)
    batch_size: int = option(16, "GLOBAL batch size (split between ranks)", min=1)
    epochs: int = option(150, "epochs per round over labels + pseudolabels", min=1)
    warmup_epochs: int = option(5, "linear warm-up epochs, then cosine to 0", min=0)


@dataclass
class Config:
    embeddings: str = option(help="output of `zmdist embed` (teacher and shards are read from its embed_info.json)")
    shards: str = option("", "where the shards are now (visual prompts read images); empty = where `embed` read them")
    setting: Literal["ssl", "trzsl", "ul"] = option("ssl", "ssl: few labels per class; trzsl: seen classes labelled; ul: no labels")
    strategy: Literal["none", "fpl", "ifpl", "grip"] = option("grip", "none: labels only (CoOp); fpl; ifpl; grip")
    prompt: Literal["textual", "visual", "multimodal"] = option(
        "textual", "textual: CoOp on cached embeddings; visual: VPT shallow; multimodal: both, coupled (UPT-style)")
    rounds: int = option(10, "rounds of ifpl / grip (fpl and none: 1)", min=1)
    k: int = option(16, "pseudolabels per class for fpl / ifpl", min=1)
    labels_per_class: int = option(2, "ssl: labelled images per class, drawn with seed", min=1)
    seen_classes: list[int] = option(factory=list, help="trzsl: seen class indices; empty = a seeded seen_fraction")
    seen_fraction: float = option(0.62, "trzsl: share of classes seen when seen_classes is empty", min=0, max=1)
    holdout_fraction: float = option(0.2, "share of each class's pseudolabels held out to pick the round's best "
                                          "epoch (0 = none: keep the last epoch)", min=0, max=0.9)
    holdout_min_k: int = option(10, "hold pseudolabels out only in rounds with K >= this (the paper: 10)", min=1)
    n_ctx: int = option(16, "textual: learnable context vectors (must fit the text context length)", min=1)
    ctx_init: str = option("", "textual: start the context from this phrase's token embeddings (CoOp's word init; "
                               "n_ctx = its token count); empty = N(0, 0.02) as the paper")
    n_tokens: int = option(16, "visual / multimodal: learnable tokens before the patch tokens (multimodal: "
                               "the paper uses 4, and n_ctx=4)", min=1)
    shared_dim: int = option(128, "multimodal: width of the shared transformer that generates both prompts", min=4)
    templates: str | list[str] = option("simple", "templates of the zero-shot labeller of round 0 (and the visual head)")
    classnames: list[str] = option(factory=list, help="names used in prompts, in class order; empty = manifest's")
    train_split: str = option("train", "split whose images are the labelled + unlabelled pool")
    eval_split: str = option("test", "split evaluated after every round (skipped when absent)")
    optim: OptimConfig = option(factory=OptimConfig, help="optimiser of each round")
    seed: int = option(0, "seed of the labelled draw, the seen classes, prompt init and batch order")
    device: str = option("auto", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    threads: int = option(0, "torch CPU threads during the run (0 = torch's default). Prompt steps are many tiny "
                             "ops: on a busy 2-core machine one thread ran 11-24x faster than two", min=0)
    progress: bool = option(True, "show training steps per round (rank 0)")
    loss_balance: Literal["clean", "released"] = option(
        "clean", "clean: (w_L sum CE_L + w_P sum CE_P) / B, both sets about equal total weight every round; "
                 "released: w_L mean CE_L + w_P mean CE_P with the released weights (SSL IFPL/GRIP w_L = |L|/|P|), "
                 "what the published numbers used (BatsResearch/menghini-neurips23-code@2094fa5 methods/semi_supervised_learning/textual_fpl.py:115-165, "
                 "training_strategies.py:637; transductive_zsl/textual_fpl.py:109-122)")
    k_schedule: Literal["clean", "released"] = option(
        "clean", "grip's K: clean rounds up, so every round pseudolabels and the last labels the whole pool; "
                 "released floors (K can be 0 in round 0), as published "
                 "(BatsResearch/menghini-neurips23-code@2094fa5 methods/semi_supervised_learning/training_strategies.py:473-485, 553-560)")
    rounds_init: Literal["fresh", "released"] = option(
        "fresh", "fresh: every round starts from a new init (the method's description); released: textual "
                 "context / multimodal tokens warm-start from the last round, as the released prompt shares "
                 "storage with its init (BatsResearch/menghini-neurips23-code@2094fa5 models/prompts_models.py:28, 85-86; "
                 "training_strategies.py:147, 157-175); visual stays fresh")
    keep_epoch: Literal["best", "last"] = option(
        "best", "best: the epoch that agrees best with the held-out pseudolabels (what the hold-out is for); "
                "last: the last epoch, which the released train() returns whatever its validation said "
                "(BatsResearch/menghini-neurips23-code@2094fa5 methods/semi_supervised_learning/training_strategies.py:367)")
    ssl_draw: Literal["seeded", "released"] = option(
        "seeded", "ssl labels: seeded: labels_per_class per class drawn with seed, all trained on; released: "
                  "drawn with seed 0 for every seed, 80% trained on and 20% kept out as its unused validation "
                  "set (BatsResearch/menghini-neurips23-code@2094fa5 methods/main_SSL.py:105-145)")
    trzsl_softmax: Literal["all", "unseen"] = option(
        "all", "trzsl pseudolabels rank a softmax over all classes, restricted to the unseen ones (the seen "
               "classes' mass counts against an image); unseen: a softmax over the unseen classes only, as "
               "released (BatsResearch/menghini-neurips23-code@2094fa5 methods/transductive_zsl/textual_fpl.py:65-78, 185-186)")


@dataclass
class _Task:
    """What every round works on: the pool, its labelling, the test split and how to score them."""

    pool: SplitEmbeddings
    test: SplitEmbeddings | None
    labelling: Labelling
    n_classes: int
    scale: float


def run(cfg: Config, out: Path) -> dict[str, Any]:
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with own_output(out, NAME, main=dist.detect().is_main):  # one prompt-tune run writes `out`
            return _run(cfg, out)
    finally:
        torch.set_num_threads(before)  # the caller's setting (quickstart runs stages in one process)


def _run(cfg: Config, out: Path) -> dict[str, Any]:
    start = time.perf_counter()
    info = dist.detect()
    dist.init_distributed(info)
    log.info("%s: %s", NAME, dist.describe(info))
    device = resolve_device(cfg.device, info)
    if cfg.strategy == "none" and cfg.setting == "ul":
        raise ConfigError("strategy=none trains on labels only, and setting=ul has none: choose fpl, ifpl or grip")
    run_files = open_embedding_run(cfg.embeddings, cfg.shards)
    emb_dir, emb_info, manifest = run_files.folder, run_files.info, run_files.manifest
    classnames = cfg.classnames or prompt_names(manifest.classes)
    if len(classnames) != len(manifest.classes):
        raise ConfigError(f"classnames: {len(classnames)} names given, the manifest has {len(manifest.classes)} classes")
    templates = get_templates(cfg.templates)
    teacher, teacher_fp = load_recorded_teacher(emb_info, emb_dir, device)
    pool = load_split(emb_dir, manifest, cfg.train_split)
    test = load_split(emb_dir, manifest, cfg.eval_split) if cfg.eval_split in manifest.splits else None
    labelling = make_labelling(pool.labels, len(classnames), cfg.setting, labels_per_class=cfg.labels_per_class,
                               seen=cfg.seen_classes, seen_fraction=cfg.seen_fraction, seed=cfg.seed,
                               ssl_draw=cfg.ssl_draw)
    warn_single_class(pool.labels[labelling.labelled], manifest.classes, f"{NAME}: setting={cfg.setting}")
    task = _Task(pool, test, labelling, len(classnames), teacher.logit_scale)
    out.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        settings = {k: v for k, v in to_dict(cfg).items()
                    if k not in ("embeddings", "shards", "device", "threads", "progress")}
        check_run_info(out / INFO_FILE, {
            "shards_fingerprint": emb_info.get("shards_fingerprint"),
            "teacher_fingerprint": teacher_fp,
            "prompts_fingerprint": hash_json({"classnames": classnames, "templates": templates}),
            "settings": hash_json(settings),
        }, "prompt tuning rounds", recorded={
            "embeddings": shards_spec(cfg.embeddings), "settings_used": settings,
        })
        for folder in [out, *sorted(out.glob("round-*"))]:  # files a killed run left half-written
            clean_temp_dir(folder)
    dist.barrier()
    zero_shot = build_zeroshot_classifier(teacher.model, teacher.tokenizer, classnames, templates, device=device)
    images = (_Images(cfg, manifest, teacher, device, {cfg.train_split: pool, cfg.eval_split: test})
              if cfg.prompt != "textual" else None)
    zs_probs, zs_metrics = _relabel_and_evaluate(task, _head_scorer(task, zero_shot, device), None)
    rounds = cfg.rounds if cfg.strategy in ("ifpl", "grip") else 1
    first, probs = _resume(out, rounds, zs_probs)
    if first:
        log.info("%s: rounds 0..%d finished before; resuming at round %d", NAME, first - 1, first)
    for t in range(first, rounds):
        probs = _one_round(cfg, task, teacher, classnames, zero_shot, images, probs, t, rounds, out / f"round-{t:02d}",
                           device, info)
    per_round = [json.loads((out / f"round-{t:02d}" / "metrics.json").read_text()) for t in range(rounds)]
    final = out / f"round-{rounds - 1:02d}"
    results: dict[str, Any] = {
        "stage": NAME, "world_size": info.world_size, "setting": cfg.setting, "strategy": cfg.strategy,
        "prompt": cfg.prompt, "labelled": len(labelling.labelled), "unlabelled": len(labelling.unlabelled),
        "seen_classes": labelling.seen_classes if cfg.setting == "trzsl" else None,
        "zero_shot": zs_metrics, "rounds": per_round, "final": per_round[-1],
        "resumed_at_round": first, "seconds": time.perf_counter() - start,
    }
    if info.is_main:
        atomic_copy(final / "prompt.safetensors", out / "prompt.safetensors")
        if cfg.prompt == "textual":
            atomic_copy(final / "classifier.npy", out / "classifier.npy")
            results["classifier"] = str(out / "classifier.npy")
        write_run_files(out, to_dict(cfg), {**results, **provenance(seed=cfg.seed, classes=classnames,
                                                                      templates=templates)})
    dist.barrier()
    return results


class _Images:
    """The preprocessed images of the pool and eval splits (visual prompts), decoded once from the shards and
    kept in memory as float tensors, rows aligned with the embedding files."""

    def __init__(self, cfg: Config, manifest: Manifest, teacher: Teacher, device: torch.device,
                 embedded: dict[str, SplitEmbeddings | None]):
        self.splits = {split: self._load(manifest, split, teacher, device, data)
                       for split, data in embedded.items() if data is not None}

    @staticmethod
    def _load(manifest: Manifest, split: str, teacher: Teacher, device: torch.device,
              embedded: SplitEmbeddings) -> torch.Tensor:
        tensors, keys = [], []
        for shard, path in zip(manifest.split(split).shards, manifest.shard_paths(split)):
            for sample in iter_shard(path, expected=shard.count):
                tensors.append(teacher.preprocess(sample["image"]))
                keys.append(sample["key"])
        if keys != list(embedded.keys):
            raise ValueError(f"the {split} shards' keys differ from the embedding files' (another shard set, or "
                             "shards rebuilt since `zmdist embed`): re-run `zmdist embed`")
        return torch.stack(tensors).to(device)


def _head_scorer(task: _Task, head: torch.Tensor, device: torch.device) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """Probabilities of rows of the pool ("pool") or the test split ("test") from cached embeddings and ``head``."""

    def score(split: str, rows: torch.Tensor) -> torch.Tensor:
        data = task.pool if split == "pool" else task.test
        assert data is not None
        return (task.scale * data.embeddings[rows].to(device) @ head.T).softmax(dim=-1)

    return score


def _relabel_and_evaluate(task: _Task, score: Callable[[str, torch.Tensor], torch.Tensor],
                          assigned: dict[int, list[int]] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The pool's new probabilities (every row once over the ranks) and the metrics of this head."""
    probs = predict_probs(lambda rows: score("pool", rows), len(task.pool))
    metrics: dict[str, Any] = {}
    u = task.labelling.unlabelled
    truth = task.pool.labels[u]
    known = truth >= 0
    if known.any():
        metrics["pool_accuracy"] = float((probs[u].argmax(1)[known] == truth[known]).mean())
    if assigned is not None:
        rows = np.array([r for rs in assigned.values() for r in rs], dtype=np.int64)
        cls = np.array([c for c, rs in assigned.items() for _ in rs], dtype=np.int64)
        gt = task.pool.labels[u[rows]] if len(rows) else np.zeros(0, np.int64)
        metrics["pseudolabels"] = int(len(rows))
        if len(rows) and (gt >= 0).any():
            metrics["pseudolabel_accuracy"] = float((cls[gt >= 0] == gt[gt >= 0]).mean())
    if task.test is not None and (task.test.labels >= 0).any():
        test_probs = predict_probs(lambda rows: score("test", rows), len(task.test))
        metrics.update(_test_metrics(test_probs.argmax(1), task.test.labels, task.labelling.seen_classes,
                                     task.n_classes))
    return probs, metrics


def _test_metrics(pred: np.ndarray, labels: np.ndarray, seen: list[int], n_classes: int) -> dict[str, float]:
    """Top-1 on the labelled test rows; with unseen classes (TRZSL) also seen / unseen accuracy and their
    harmonic mean, predictions always over all classes (generalised zero-shot)."""
    known = labels >= 0
    metrics = {"accuracy": float((pred[known] == labels[known]).mean())}
    if len(seen) < n_classes:
        is_seen = np.isin(labels, seen) & known
        is_unseen = ~np.isin(labels, seen) & known
        s = float((pred[is_seen] == labels[is_seen]).mean()) if is_seen.any() else 0.0
        un = float((pred[is_unseen] == labels[is_unseen]).mean()) if is_unseen.any() else 0.0
        metrics.update(seen_accuracy=s, unseen_accuracy=un, harmonic_mean=harmonic_mean(s, un))
    return metrics


def _resume(out: Path, rounds: int, zs_probs: np.ndarray) -> tuple[int, np.ndarray]:
    """(first round to run, the pool probabilities it starts from): after the last finished round
    (its ``metrics.json`` exists), from that round's relabelled pool; else round 0 from zero-shot."""
    first = 0
    while first < rounds and (out / f"round-{first:02d}" / "metrics.json").is_file():
        first += 1
    if first == 0:
        return 0, zs_probs
    path = out / f"round-{first - 1:02d}" / "pool_probs.npy"
    probs = np.load(path, allow_pickle=False)
    if probs.shape != zs_probs.shape:
        raise ValueError(f"{path} has shape {probs.shape}, the pool needs {zs_probs.shape}: delete {out} to start afresh")
    return first, probs


def _round_k(cfg: Config, t: int, rounds: int, n_unlabelled: int, n_candidates: int) -> int:
    if cfg.strategy == "none":
        return 0
    if cfg.strategy == "grip":
        return grip_k(t, n_unlabelled, n_candidates, rounds, schedule=cfg.k_schedule)
    return cfg.k


def _hold_out(assigned: dict[int, list[int]], fraction: float, seed: int) -> dict[int, list[int]]:
    """Per class, ``floor(fraction * len(list))`` of its pseudolabelled rows drawn with ``seed``: held out of
    training to pick the round's best epoch (the paper holds out 20% of pseudolabels when K >= 10)."""
    rng = np.random.default_rng(seed)
    held = {}
    for cls, rows in assigned.items():
        order = rng.permutation(len(rows))[: int(fraction * len(rows))]
        held[cls] = sorted(rows[i] for i in order)
    return held


def _one_round(cfg: Config, task: _Task, teacher: Teacher, classnames: list[str], zero_shot: torch.Tensor,
               images: _Images | None, probs: np.ndarray, t: int, rounds: int, folder: Path, device: torch.device,
               info: dist.DistInfo) -> np.ndarray:
    """Assign top-K pseudolabels from ``probs``, train a prompt (fresh, or warm from the last round with
    ``rounds_init=released``) on labels + pseudolabels (minus the held-out ones), relabel the pool with it,
    save the round. A round with nothing to train on (``k_schedule=released``'s K = 0 without labels)
    keeps its initial prompt, logged."""
    t0 = time.perf_counter()
    lab, cand = task.labelling, task.labelling.candidate_classes
    k = _round_k(cfg, t, rounds, len(lab.unlabelled), len(cand))
    seed = cfg.seed * 1_000_003 + t
    over = "candidates" if cfg.setting == "trzsl" and cfg.trzsl_softmax == "unseen" else "all"
    picked = top_k_per_class(candidate_probs(torch.from_numpy(probs[lab.unlabelled]), cand, over), k)
    assigned = {cand[j]: rows for j, rows in picked.items()}  # class -> rows of the unlabelled pool
    use_holdout = cfg.holdout_fraction > 0 and k >= cfg.holdout_min_k
    held = _hold_out(assigned, cfg.holdout_fraction, seed) if use_holdout else {c: [] for c in assigned}
    all_rows = np.array([lab.unlabelled[r] for rs in assigned.values() for r in rs], dtype=np.int64)
    all_cls = np.array([c for c, rs in assigned.items() for _ in rs], dtype=np.int64)
    is_held = np.array([r in set(held[c]) for c, rs in assigned.items() for r in rs], dtype=bool)
    p_rows, p_cls = all_rows[~is_held], all_cls[~is_held]
    rows = np.concatenate([lab.labelled, p_rows]).astype(np.int64)
    targets = torch.from_numpy(np.concatenate([task.pool.labels[lab.labelled], p_cls])).to(device)
    is_labelled = torch.zeros(len(rows), dtype=torch.bool, device=device)
    is_labelled[:len(lab.labelled)] = True
    weights = (released_loss_weights(cfg.setting, cfg.strategy, len(lab.labelled), len(p_rows),
                                     multimodal=cfg.prompt == "multimodal") if cfg.loss_balance == "released"
               else loss_weights(cfg.setting, len(lab.labelled), len(p_rows), multimodal=cfg.prompt == "multimodal"))
    o = cfg.optim
    optim = OptimSettings(o.lr, o.momentum, o.weight_decay, o.batch_size, o.epochs, o.warmup_epochs)
    prompt, pool_logits, eval_logits, tensors, meta = _make_prompt(cfg, task, teacher, classnames, zero_shot,
                                                                   images, seed, device)
    if cfg.rounds_init == "released" and t > 0:
        _warm_start(cfg, prompt, folder.parent / f"round-{t - 1:02d}" / "prompt.safetensors")
    index = torch.from_numpy(rows).to(device)
    val_rows = torch.from_numpy(all_rows[is_held]).to(device)
    val_targets = torch.from_numpy(all_cls[is_held]).to(device)
    validate = ((lambda: (pool_logits(val_rows).argmax(1) == val_targets).float().mean().item())
                if len(val_rows) else None)
    if len(rows):
        stats = train_round(prompt, lambda r: pool_logits(index[r]), targets, is_labelled, weights, optim, seed,
                            cfg.progress, f"{NAME} round {t}", validate=validate, loss_balance=cfg.loss_balance,
                            keep_epoch=cfg.keep_epoch)
    else:
        log.warning("%s round %d: K=%d and no labels: nothing to train on, the round keeps its initial prompt",
                    NAME, t, k)
        stats = {"steps": 0, "last_epoch_loss": 0.0}

    def score(split: str, r: torch.Tensor) -> torch.Tensor:
        return (pool_logits(r.to(device)) if split == "pool" else eval_logits(r.to(device))).softmax(dim=-1)

    with torch.no_grad():
        new_probs, metrics = _relabel_and_evaluate(task, score, assigned)
    metrics.update(round=t, k=k, labelled=len(lab.labelled), held_out=int(is_held.sum()),
                   loss_weights=list(weights), seconds=time.perf_counter() - t0, **stats)
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        save_prompt(folder / "prompt.safetensors", tensors, {**meta, "classnames": classnames, "round": t})
        atomic_save_npz(folder / "pseudolabels.npz", keys=task.pool.keys[all_rows], shards=task.pool.shards[all_rows],
                        pseudolabel=all_cls, labels=task.pool.labels[all_rows], held_out=is_held)
        if cfg.prompt == "textual":
            atomic_save_npy(folder / "classifier.npy", prompt.classifier().cpu().numpy().astype(np.float32))
        atomic_save_npy(folder / "pool_probs.npy", new_probs)
        atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # last: round finished
    log.info("%s round %d: K=%d, %d pseudolabels (%d held out), test accuracy %s (%.1fs)", NAME, t, k,
             len(all_rows), int(is_held.sum()), metrics.get("accuracy"), metrics["seconds"])
    dist.barrier()
    return new_probs


Logits = Callable[[torch.Tensor], torch.Tensor]


def _warm_start(cfg: Config, prompt: Any, previous: Path) -> None:
    """``rounds_init=released``: start from the last round's learned vectors, as the released code does (its
    prompt parameter shares storage with the initial tensor, so training updates the init in place):
    textual ``ctx``; multimodal the input ``tokens`` only (the released UPT re-creates its projections and
    transformer every round, fresh); visual prompts stay fresh (the released visual prefix is copied off
    its init by ``Module.to`` on a GPU)."""
    if cfg.prompt == "visual":
        return
    name = "ctx" if cfg.prompt == "textual" else "tokens"
    tensors, _ = load_prompt(previous)
    if name not in tensors or tensors[name].shape != getattr(prompt, name).shape:
        raise ValueError(f"{previous} has no {name} of shape {tuple(getattr(prompt, name).shape)}: delete "
                         f"{previous.parent.parent} to start afresh")
    with torch.no_grad():
        getattr(prompt, name).copy_(tensors[name])


def _make_prompt(cfg: Config, task: _Task, teacher: Teacher, classnames: list[str], zero_shot: torch.Tensor,
                 images: _Images | None, seed: int, device: torch.device
                 ) -> tuple[Any, Logits, Logits, dict[str, torch.Tensor], dict[str, Any]]:
    """A freshly initialised prompt of ``cfg.prompt``, the logits of pool rows and of eval rows with it,
    and what of it is saved (tensors + metadata)."""
    scale = task.scale
    if cfg.prompt == "textual":
        prompt = TextualPrompt(teacher.model, teacher.tokenizer, classnames, cfg.n_ctx, ctx_init=cfg.ctx_init, seed=seed)
        pool = task.pool.embeddings.to(device)
        test = task.test.embeddings.to(device) if task.test is not None else None
        return (prompt, lambda r: scale * pool[r] @ prompt().T, lambda r: scale * test[r] @ prompt().T,
                {"ctx": prompt.ctx}, {"kind": "textual", "n_ctx": prompt.n_ctx, "ctx_init": cfg.ctx_init})
    assert images is not None
    pool_images, test_images = images.splits[cfg.train_split], images.splits.get(cfg.eval_split)
    if cfg.prompt == "multimodal":
        mm = MultimodalPrompt(teacher.model, teacher.tokenizer, classnames, cfg.n_ctx, cfg.n_tokens,
                              dim=cfg.shared_dim, seed=seed)
        return (mm, lambda r: scale * mm(pool_images[r]), lambda r: scale * mm(test_images[r]),
                {k: v for k, v in mm.named_parameters() if v.requires_grad},
                {"kind": "multimodal", "n_ctx": cfg.n_ctx, "n_tokens": cfg.n_tokens, "shared_dim": cfg.shared_dim})
    vpt = VisualPrompt(teacher.model, cfg.n_tokens, seed=seed)
    return (vpt, lambda r: scale * vpt(pool_images[r]) @ zero_shot.T,
            lambda r: scale * vpt(test_images[r]) @ zero_shot.T,
            {"tokens": vpt.tokens}, {"kind": "visual", "n_tokens": cfg.n_tokens})
