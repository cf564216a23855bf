"""Time and peak memory of ``centroid`` and ``dropquery`` selection on synthetic pools of growing size.

    python benchmarks/select_scale.py                        # 10^4, 10^5, 10^6 x 512, budget 10 (minutes on 2 cores)
    python benchmarks/select_scale.py --sizes 10000 100000 --repeats 5 --budget 20 --json runs/select_scale.json
    python benchmarks/select_scale.py --threads 0           # torch's default thread count (all cores)

Each (method, N) runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own. The
pool is N unit-norm float16 rows of dimension d around 100 random directions (made block by block,
never as a float32 N x d array); DropQuery gets 10 labelled rows per class of 10 classes. Reported per
row: median seconds over ``--repeats`` (1 from 10^5 on), the baseline = one pass over the pool in the same
process (row norms in float32 blocks, the least any strategy must do), the ratio method / baseline (a
flat ratio across N means linear growth), and peak memory above the pool itself. The stated bound
(zmdist/methods/kmeans.py): pool + O(N) vectors + one chunk x k block; the extra column checks it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def make_pool(n: int, dim: int, seed: int = 0, block: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(100, dim, generator=g), dim=1)
    pool = torch.empty((n, dim), dtype=torch.float16)
    blob = torch.randint(100, (n,), generator=g)
    for s in range(0, n, block):
        b = blob[s:s + block]
        rows = centres[b] + 0.08 * torch.randn(len(b), dim, generator=g)
        pool[s:s + len(b)] = torch.nn.functional.normalize(rows, dim=1).half()
    return pool, blob % 10


def one_pass(pool: torch.Tensor, block: int = 16384) -> float:
    t0 = time.perf_counter()
    total = 0.0
    for s in range(0, len(pool), block):
        total += float(pool[s:s + block].float().norm(dim=1).sum())
    return time.perf_counter() - t0


def worker(method: str, n: int, dim: int, budget: int, repeats: int) -> dict:
    """One (method, N) measurement, in this (fresh) process."""
    from zmdist.selection.probe import ProbeConfig
    from zmdist.selection.strategies import RuleConfig, choose
    from zmdist.selection.updp import UpdpConfig

    pool, labels = make_pool(n, dim)
    rss_pool_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labelled = torch.cat([torch.nonzero(labels == c).flatten()[:10] for c in range(10)])
    if method == "centroid":
        labelled = torch.empty(0, dtype=torch.long)
    kw = dict(rules=RuleConfig(), probe=ProbeConfig(), updp=UpdpConfig(), device=torch.device("cpu"))
    times, base, info = [], [], {}
    for r in range(repeats):
        base.append(one_pass(pool))
        t0 = time.perf_counter()
        picked, info = choose(method, pool, labelled, labels[labelled], 10, budget, seed=r, **kw)
        times.append(time.perf_counter() - t0)
        assert len(picked) == budget
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "n": n, "dim": dim, "budget": budget, "repeats": repeats,
            "seconds": statistics.median(times), "baseline_pass_s": statistics.median(base),
            "pool_mib": pool.numel() * 2 / 2**20, "peak_rss_mib": peak_kb / 1024,
            "extra_over_pool_mib": (peak_kb - rss_pool_kb) / 1024,
            "details": {k: v for k, v in info.items() if k in ("threshold", "candidates")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--methods", nargs="+", default=["centroid", "dropquery"])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3,
                   help="repeats per size below 10^5 (from 10^5 on: 1, to bound the run time)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per measurement (default 1: "
                   "comparable when other jobs share the cores; 0 = torch's default)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        method, n = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(method, n, args.dim, args.budget, 1 if n >= 100_000 else args.repeats)))
        return 0
    rows = []
    print(f"{'method':<10}{'N':>10}{'seconds':>10}{'1-pass s':>10}{'ratio':>8}{'pool MiB':>10}{'peak MiB':>10}"
          f"{'extra MiB':>11}  details")
    for n in args.sizes:  # interleaved: both methods at one size before the next size
        for method in args.methods:
            proc = subprocess.run([sys.executable, __file__, "--worker", method, str(n), "--dim", str(args.dim),
                                   "--budget", str(args.budget), "--repeats", str(args.repeats),
                                   "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{method} at N={n} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{method:<10}{n:>10}{row['seconds']:>10.2f}{row['baseline_pass_s']:>10.3f}"
                  f"{row['seconds'] / row['baseline_pass_s']:>8.1f}{row['pool_mib']:>10.0f}{row['peak_rss_mib']:>10.0f}"
                  f"{row['extra_over_pool_mib']:>11.0f}  {row['details'] or ''}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
