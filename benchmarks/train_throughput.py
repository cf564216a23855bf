"""Student samples/s of `zmdist train` against a plain PyTorch loop doing the same work, 1 and 2 processes.

Same model (``--student``), same per-process batches (labelled B + weak B + strong B, FixMatch-style, one
forward), same augmentations (weak crop / RandAugment strong, from ``zmdist.train.augment.make_views``),
AdamW, same number of DataLoader workers. The plain loop reads the images from memory with a
DistributedSampler and does nothing else; zmdist streams them from the tar shards, joins pseudolabels,
seeds every sample's augmentation, logs, all-reduces its stop flag every step, and evaluates once at the end
(evaluation is outside the measured window). Both report samples/s over the steady-state steps (the first
``--warmup`` steps are excluded); 2 processes run under torchrun with gloo on CPU (NCCL on GPUs).

    .venv/bin/python benchmarks/train_throughput.py [--steps 60] [--student cnn-tiny] [--repeats 3]
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
    """The baseline: what a user would write by hand (run under torchrun for 2 processes)."""
    import torch.distributed as dist
    import torch.nn.functional as F
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

    per_rank = args.batch_size // world
    def loader(seed: int) -> DataLoader:
        sampler = DistributedSampler(Pairs(), world, int(os.environ.get("RANK", "0")), seed=seed) if world > 1 else None
        return DataLoader(Pairs(), per_rank, sampler=sampler, shuffle=sampler is None, num_workers=args.workers,
                          drop_last=True, persistent_workers=False)

    model = create_student(args.student, 10)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lab, unl = iter(loader(1)), iter(loader(2))
    step, t0 = 0, None
    while step < args.steps:
        try:
            (x_lb, _, y_lb), (w, s, _) = next(lab), next(unl)
        except StopIteration:
            lab, unl = iter(loader(step + 1)), iter(loader(step + 2))
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
        print(json.dumps({"samples_per_s": 3 * args.batch_size * (args.steps - args.warmup) / elapsed}))


def _launch(nproc: int, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    prefix = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(nproc)]
    return subprocess.run(prefix + argv, capture_output=True, text=True, env=env, check=False)


def run_plain(nproc: int, args: argparse.Namespace, env: dict) -> float:
    r = _launch(nproc, [__file__, "--plain", "--shards", str(args.shards), "--steps", str(args.steps),
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

    prepare_digits(tmp, teacher_model="zmdist-micro-vit", num_workers=0)
    return tmp / "shards", tmp / "pseudolabels"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
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
            plain, ours = [], []
            for i in range(args.repeats):  # interleaved, so machine noise hits both alike
                plain.append(run_plain(nproc, args, env))
                ours.append(run_zmdist(nproc, args, env, tmp / f"run-{nproc}-{i}"))
            rows[nproc] = (statistics.median(plain), statistics.median(ours))
    print(f"\ntrain throughput: fixmatch step (B labelled + B weak + B strong), student {args.student} at "
          f"{args.img_size}px, global B={args.batch_size}, {args.workers} loader worker(s)/process, "
          f"{args.steps} steps ({args.warmup} warm-up excluded), median of {args.repeats}")
    print(f"{'procs':>5}{'plain samples/s':>17}{'zmdist samples/s':>18}{'zmdist/plain':>14}{'scaling eff.':>14}")
    base = rows.get(1)
    for nproc, (p, z) in rows.items():
        eff = f"{z / (nproc * base[1]):.2f}" if base and nproc > 1 else "-"
        print(f"{nproc:>5}{p:>17.0f}{z:>18.0f}{z / p:>14.2f}{eff:>14}")


if __name__ == "__main__":
    main()
