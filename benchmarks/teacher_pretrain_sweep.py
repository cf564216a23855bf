"""Zero-shot accuracy on the 1,797 real scikit-learn digits vs. pretraining settings of the digit teacher.

    python benchmarks/teacher_pretrain_sweep.py                 # default grid
    python benchmarks/teacher_pretrain_sweep.py --steps 300 800 --seeds 0 1

Each row trains (or reuses the cached checkpoint in --out) and prints wall time and accuracy. Wall
times depend on the machine and on what else runs on it; the weights do not (fixed steps and seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zmdist.demo.teacher_pretrain import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CORPUS_SIZE,
    DEFAULT_LR,
    evaluate_zero_shot_on_sklearn_digits,
    pretrain_digit_teacher,
    read_pretrain_metadata,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".cache/teacher_pretrain_sweep"))
    ap.add_argument("--model", default="zmdist-tiny-vit")
    ap.add_argument("--steps", type=int, nargs="+", default=[300, 800])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--lr", type=float, nargs="+", default=[DEFAULT_LR])
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--corpus-size", type=int, default=DEFAULT_CORPUS_SIZE)
    args = ap.parse_args()

    print(f"{'steps':>6} {'lr':>8} {'seed':>5} {'train s':>8} {'loss':>14} {'zero-shot acc':>14}")
    for steps in args.steps:
        for lr in args.lr:
            for seed in args.seeds:
                t0 = time.perf_counter()
                path = pretrain_digit_teacher(
                    args.out, model=args.model, steps=steps, batch_size=args.batch_size, seed=seed, lr=lr,
                    corpus_size=args.corpus_size, progress=False,
                )
                meta = read_pretrain_metadata(path)
                took = meta.get("seconds_taken", time.perf_counter() - t0)
                acc = evaluate_zero_shot_on_sklearn_digits(path, args.model)
                loss = f"{meta['loss_first']:.2f}->{meta['loss_last']:.2f}"
                print(f"{steps:>6} {lr:>8.0e} {seed:>5} {took:>8.1f} {loss:>14} {acc:>14.4f}", flush=True)


if __name__ == "__main__":
    main()
