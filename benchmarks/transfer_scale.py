"""`zmdist transfer score`'s math on 10^6 synthetic embeddings (d=512): seconds, and memory that does not grow.

Each row runs in a fresh process (so its peak RSS is its own): synthetic float16 unit-row embeddings of
100 classes (class centres + noise), streamed in chunks of ``--chunk`` rows through
``TransferStats.from_batch`` and merged, then finalised into IIMM (and H-score + LogME when the second
moment is kept). Timed: the statistics and the scores, not the generation of the random chunks (reported
apart). The plain baseline in the same table: IIMM by its definition, an N x N similarity matrix, at a
size it can hold (``--brute``), and the streamed IIMM at that same size for the ratio.

    .venv/bin/python benchmarks/transfer_scale.py [--sizes 100000,1000000] [--brute 10000] [--chunk 50000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

DIM, CLASSES = 512, 100


def _chunks(total: int, chunk: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    for start in range(0, total, chunk):
        n = min(chunk, total - start)
        labels = rng.integers(0, CLASSES, n)
        x = centres[labels] + 2.0 * rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x.astype(np.float16), labels


def _texts() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((CLASSES, DIM))


def worker(mode: str, total: int, chunk: int, threads: int) -> dict:
    import torch

    from zmdist.methods.transfer import TransferStats, h_score_from_stats, iimm_from_stats, logme_from_stats

    torch.set_num_threads(threads)
    generate = compute = 0.0
    if mode == "brute":
        xs, ys = zip(*_chunks(total, chunk))
        x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys)
        t0 = time.perf_counter()
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        text = _texts() / np.linalg.norm(_texts(), axis=1, keepdims=True)
        sims = x @ x.T                                     # the N x N matrix the streaming form avoids
        intra = (sims.sum() - np.trace(sims)) / (total * (total - 1))
        to_text = x @ text.T
        inter = ((to_text.sum(1) - to_text[np.arange(total), y]) / (CLASSES - 1)).mean()
        compute = time.perf_counter() - t0
        return {"mode": mode, "n": total, "seconds": compute, "generate_s": 0.0, "iimm": (inter + intra) / 2,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    keep_moment = mode == "stream-all"
    stats = TransferStats.zeros(CLASSES, DIM, keep_moment)
    t_gen = time.perf_counter()
    for x, y in _chunks(total, chunk):
        t0 = time.perf_counter()
        generate += t0 - t_gen
        stats = stats + TransferStats.from_batch(x, y, CLASSES, keep_moment)
        t_gen = time.perf_counter()
        compute += t_gen - t0
    t0 = time.perf_counter()
    out = {"iimm": iimm_from_stats(stats, _texts()).iimm}
    if keep_moment:
        out.update(h_score=h_score_from_stats(stats), logme=logme_from_stats(stats))
    compute += time.perf_counter() - t0
    return {"mode": mode, "n": total, "seconds": compute, "generate_s": generate, **out,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--brute", type=int, default=10000, help="N of the N x N baseline (memory 8 N^2 bytes)")
    parser.add_argument("--chunk", type=int, default=50000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed 2-core machine, 2 threads ran 3-5x slower)")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.chunk, args.threads)))
        return
    plan = [("brute", args.brute), ("stream-iimm", args.brute)]
    plan += [(mode, int(n)) for n in args.sizes.split(",") for mode in ("stream-iimm", "stream-all")]
    rows = []
    for mode, n in plan:
        proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(n), "--chunk", str(args.chunk),
                               "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    brute = rows[0]
    stream_same = rows[1]
    print(f"transfer score math, d={DIM}, {CLASSES} classes, chunks of {args.chunk} float16 rows, "
          f"{args.threads} torch thread(s), one process per row")
    print(f"{'mode':<13}{'N':>10}{'seconds':>10}{'rows/s':>13}{'peak RSS MB':>13}{'gen s':>8}   scores")
    for r in rows:
        scores = ", ".join(f"{k} {r[k]:.5f}" for k in ("iimm", "h_score", "logme") if k in r)
        print(f"{r['mode']:<13}{r['n']:>10,}{r['seconds']:>10.2f}{r['n'] / r['seconds']:>13,.0f}"
              f"{r['peak_rss_mb']:>13.0f}{r['generate_s']:>8.1f}   {scores}")
    print(f"at N={brute['n']:,}: streamed IIMM {stream_same['seconds']:.3f} s vs N x N baseline {brute['seconds']:.3f} s "
          f"(ratio {brute['seconds'] / stream_same['seconds']:.1f}x; same IIMM to "
          f"{abs(brute['iimm'] - stream_same['iimm']):.1e}); the baseline at N=10^6 would need "
          f"{8e12 / 2**40:.1f} TiB for its matrix")


if __name__ == "__main__":
    main()
