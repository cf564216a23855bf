"""Scaling of ``zmdist embed``: images/s with 1 process vs N processes (torchrun) on the same data.

    python benchmarks/scaling.py                       # CPU: 1 vs 2 processes, 3 repeats, sklearn digits
    python benchmarks/scaling.py --repeats 5 --teacher zmdist-micro-vit --json runs/scaling.json
    python benchmarks/scaling.py --shards /data/shards --teacher ViT-B-32   # GPUs: 1 vs every GPU

Throughput is the stage's own ``images_per_second`` (images / the slowest rank's embedding time, so
process start-up and model loading are excluded); efficiency = ips_N / (N * ips_1). Each run writes
into a fresh folder (a rerun would skip finished shards). With CUDA and more than one device the
process counts are 1 and every GPU (``--procs`` overrides); on a CPU they are 1 and 2: on a CPU the
processes share cores, so read efficiency against the number of free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def make_digit_shards(root: Path, shard_size: int) -> Path:
    from zmdist.config import load_config
    from zmdist.stages import shard

    out = root / "shards"
    cfg = load_config(shard.Config, None, ["source=sklearn-digits", f"shard_size={shard_size}",
                                           "test_fraction=0", "progress=false"])
    shard.run(cfg, out)
    return out


def run_once(nproc: int, shards: Path, out: Path, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    if not torch.cuda.is_available():
        # share the cores fairly between processes instead of each grabbing all of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "zmdist", "embed", "--shards", str(shards), "--out", str(out),
           f"teacher.model={args.teacher}", "teacher.pretrained=random", f"batch_size={args.batch_size}", f"num_workers={args.num_workers}",
           "progress=false", *args.overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    if summary["world_size"] != nproc:
        raise RuntimeError(f"asked for {nproc} processes, the run had world size {summary['world_size']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=Path, help="an existing shard folder (default: sklearn digits, made once)")
    p.add_argument("--shard-size", type=int, default=150, help="samples per shard for the default digits set")
    p.add_argument("--teacher", default="zmdist-micro-vit")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="discarded runs per process count (page cache, JIT, allocator)")
    p.add_argument("--procs", type=int, nargs="+", help="process counts to compare (default: 1 and 2, or 1 and #GPUs)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more embed options")
    args = p.parse_args(argv)

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    procs = args.procs or ([1, gpus] if gpus > 1 else [1, 2])
    device = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else f"CPU ({os.cpu_count()} cores)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="zmdist-scaling-") as tmp:
        shards = args.shards or make_digit_shards(Path(tmp), args.shard_size)
        for n in procs:
            ips = []
            for w in range(args.warmup):
                run_once(n, shards, Path(tmp) / f"warmup-{n}-{w}", args)
            for r in range(args.repeats):
                summary = run_once(n, shards, Path(tmp) / f"emb-{n}-{r}", args)
                ips.append(summary["images_per_second"])
                print(f"  {n} proc(s), repeat {r + 1}/{args.repeats}: {ips[-1]:.0f} images/s", file=sys.stderr)
            rows.append({"processes": n, "images_per_second_median": statistics.median(ips),
                         "images_per_second": ips, "images": summary["images_embedded"]})
    base = rows[0]["images_per_second_median"] / rows[0]["processes"]
    for row in rows:
        row["speedup"] = row["images_per_second_median"] / rows[0]["images_per_second_median"]
        row["efficiency"] = row["images_per_second_median"] / (row["processes"] * base)
    print(f"\nzmdist embed scaling on {device}, teacher {args.teacher}, batch {args.batch_size}, "
          f"median of {args.repeats}")
    print(f"{'processes':>9} {'images/s':>10} {'speedup':>8} {'efficiency':>10}")
    for row in rows:
        print(f"{row['processes']:>9} {row['images_per_second_median']:>10.0f} {row['speedup']:>8.2f} "
              f"{row['efficiency']:>10.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "teacher": args.teacher, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
