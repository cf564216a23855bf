"""The worked example of `zmdist transfer`: 11 offline digit tasks scored, fine-tuned and fitted.

Pretrains (or reuses from ``--cache``) the quickstart's demo teacher, then for each task of
``zmdist.transfer.worked_example.digit_tasks``: shard, embed, ``transfer score`` (IIMM, H-score, LogME),
fine-tune the image tower, measure in-domain gain and forgetting on synthetic reference digits; then
``transfer fit`` per score and a table of how well each score predicted gain and forgetting.

    .venv/bin/python benchmarks/transfer_worked_example.py [--out runs/transfer-example] [--steps 60]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from zmdist.demo.teacher_pretrain import pretrain_digit_teacher
from zmdist.demo.transfer_example import format_report, run_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transfer-example"))
    parser.add_argument("--cache", type=Path, default=Path("runs/quickstart/cache"), help="demo teacher cache folder")
    parser.add_argument("--model", default="zmdist-tiny-vit")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps per task")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    checkpoint = pretrain_digit_teacher(args.cache, model=args.model, steps=args.teacher_steps, seed=args.seed)
    report = run_example(args.out, args.model, str(checkpoint), steps=args.steps, lr=args.lr, seed=args.seed)
    print("\n".join(format_report(report)))
    print(f"table {args.out / 'tasks.csv'}, figure {report['figure']}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
