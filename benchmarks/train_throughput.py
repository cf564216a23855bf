"""Student samples/s of `zmdist train` against hand-written loops doing the same work, 1 and 2 processes.

Same model (``--student``), same per-process batches (B labelled weak views + B unlabelled images as weak
and strong views, FixMatch-style, one forward), same augmentations (``zmdist.train.augment.make_views``),
AdamW, same number of DataLoader workers per loader. Samples/s counts images drawn per step (B labelled +
B unlabelled), as `zmdist train` logs it. Two baselines in the same run:

- **plain**: the images decoded once into memory, a ``DistributedSampler``, nothing else;
- **wds**: the unlabelled stream read from the same tar shards by an open_clip-style WebDataset pipeline
  (``wds.WebDataset(shards, resampled=True).shuffle(1000).decode("pil").to_tuple("png", "cls")``),
  labelled batches as in plain.

zmdist streams from the shards with its exact-count planner, joins pseudolabels, seeds every sample's
augmentation, logs, all-reduces its stop flag every step, and evaluates once at the end (outside the
measured window). All report samples/s over the steady-state steps (the first ``--warmup`` excluded);
2 processes run under torchrun with gloo on CPU (NCCL on GPUs). Runs are interleaved, medians reported.

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--student cnn-small] [--img-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def plain_loop(args: argparse.Namespace) -> None:
    """The baselines: what a user would write by hand (run under torchrun for 2 processes)."""
    import torch.distributed as dist
    import torch.nn.functional as F
    import webdataset as wds
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    from zmdist.data.manifest import Manifest
    from zmdist.data.reader import iter_shard
    from zmdist.models import create_student
    from zmdist.train.augment import make_views

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    manifest = Manifest.load(args.shards)
    samples = [(s["image"], s["label"]) for p in manifest.shard_paths("train") for s in iter_shard(p)]
    views = make_views(args.img_size, hflip=False)

    class Pairs(Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int):
            img, label = samples[i]
            return views.weak(img), views.strong(img), label

    class Weak(Pairs):
        def __getitem__(self, i: int):
            img, label = samples[i]
            return views.weak(img), label

    per_rank = args.batch_size // world

    def loader(seed: int, data: Dataset) -> DataLoader:
        sampler = DistributedSampler(data, world, int(os.environ.get("RANK", "0")), seed=seed) if world > 1 else None
        return DataLoader(data, per_rank, sampler=sampler, shuffle=sampler is None, num_workers=args.workers,
                          drop_last=True, persistent_workers=False)

    def two_views(sample):
        img, label = sample
        return views.weak(img), views.strong(img), label

    def wds_loader() -> DataLoader:
        urls = [str(p) for p in manifest.shard_paths("train")]
        # open_clip's way for DDP: every rank and worker resamples shards on its own (no node split, which
        # webdataset refuses under WORLD_SIZE > 1 unless given); per-rank seeds keep the streams apart
        rank = int(os.environ.get("RANK", "0"))
        stream = (wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=None, seed=rank)
                  .shuffle(1000).decode("pil")
                  .to_tuple("png", "cls").map(two_views).batched(per_rank, partial=False))
        return wds.WebLoader(stream, batch_size=None, num_workers=args.workers)

    model = create_student(args.student, 10)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lab = iter(loader(1, Weak()))
    unl = iter(wds_loader() if args.pipeline == "wds" else loader(2, Pairs()))
    step, t0 = 0, None
    while step < args.steps:
        try:
            (x_lb, y_lb), (w, s, _) = next(lab), next(unl)
        except StopIteration:  # an epoch of the in-memory loaders ended (the wds stream never ends)
            lab = iter(loader(step + 1, Weak()))
            unl = unl if args.pipeline == "wds" else iter(loader(step + 2, Pairs()))
            continue
        logits = model(torch.cat([x_lb, w, s]))
        lb, lw, ls = logits.split([len(x_lb), len(w), len(s)])
        p = lw.detach().softmax(-1)
        conf, yhat = p.max(-1)
        loss = F.cross_entropy(lb, y_lb) + (F.cross_entropy(ls, yhat, reduction="none") * (conf >= 0.95)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        if step == args.warmup:
            t0 = time.perf_counter()
    elapsed = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"samples_per_s": 2 * args.batch_size * (args.steps - args.warmup) / elapsed}))


def _launch(nproc: int, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(nproc)]
    return subprocess.run(prefix + argv, capture_output=True, text=True, env=env, check=False)


def run_plain(nproc: int, args: argparse.Namespace, env: dict, pipeline: str) -> float:
    r = _launch(nproc, [__file__, "--plain", "--pipeline", pipeline, "--shards", str(args.shards), "--steps", str(args.steps),
                        "--warmup", str(args.warmup), "--student", args.student, "--img-size", str(args.img_size),
                        "--batch-size", str(args.batch_size), "--workers", str(args.workers)], env)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["samples_per_s"]


def run_zmdist(nproc: int, args: argparse.Namespace, env: dict, out: Path) -> float:
    log_every = args.warmup
    r = _launch(nproc, ["-m", "zmdist", "train", "--out", str(out), f"shards={args.shards}",
                        f"pseudolabels={args.pseudolabels}", "method.name=fixmatch", f"student={args.student}",
                        f"img_size={args.img_size}", f"batch_size={args.batch_size}", f"steps={args.steps}",
                        f"num_workers={args.workers}", "hflip=false", f"log_every={log_every}",
                        f"eval_every={args.steps}", "checkpoint_every=0", "warmup_steps=1", "resume=never",
                        "progress=false"], env)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    windows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [w["samples_per_s"] for w in windows if "samples_per_s" in w][1:]  # drop the warm-up window
    return statistics.median(rates)


def prepare(tmp: Path) -> tuple[Path, Path]:
    from zmdist.demo.digits_pipeline import prepare_digits

    prepare_digits(tmp, teacher_model="zmdist-micro-vit", pretrained="random", num_workers=0)
    return tmp / "shards", tmp / "pseudolabels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", choices=["memory", "wds"], default="memory", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--pseudolabels", type=Path)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--student", default="cnn-tiny")
    parser.add_argument("--img-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32, help="global labelled batch")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--procs", default="1,2")
    args = parser.parse_args()
    if args.plain:
        plain_loop(args)
        return
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.shards, args.pseudolabels = prepare(tmp)
        rows = {}
        for nproc in [int(p) for p in args.procs.split(",")]:
            plain, web, ours = [], [], []
            for i in range(args.repeats):  # interleaved, so machine noise hits all alike
                plain.append(run_plain(nproc, args, env, "memory"))
                web.append(run_plain(nproc, args, env, "wds"))
                ours.append(run_zmdist(nproc, args, env, tmp / f"run-{nproc}-{i}"))
            rows[nproc] = (statistics.median(plain), statistics.median(web), statistics.median(ours))
    print(f"\ntrain throughput: fixmatch step (B labelled weak + B unlabelled weak & strong), student {args.student} "
          f"at {args.img_size}px, global B={args.batch_size}, {args.workers} worker(s) per loader and process, "
          f"{args.steps} steps ({args.warmup} warm-up excluded), median of {args.repeats}, samples/s = images drawn")
    print(f"{'procs':>5}{'plain':>9}{'wds':>9}{'zmdist':>9}{'zmdist/plain':>14}{'zmdist/wds':>12}{'scaling eff.':>14}")
    base = rows.get(1)
    for nproc, (p, w, z) in rows.items():
        eff = f"{z / (nproc * base[2]):.2f}" if base and nproc > 1 else "-"
        print(f"{nproc:>5}{p:>9.0f}{w:>9.0f}{z:>9.0f}{z / p:>14.2f}{z / w:>12.2f}{eff:>14}")


if __name__ == "__main__":
    main()
