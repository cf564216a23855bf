"""The ``demo-digits`` teacher recipe of ``zmdist bench``: the quickstart's teacher as a sweep step.

A tiny open_clip model pretrained contrastively on synthetic captioned digits
(``zmdist.demo.teacher_pretrain``: offline, deterministic for its settings), copied to the checkpoint file
the sweep's embed step loads. Run as a step of the plan (``python -m zmdist.demo.teacher_recipe --out FILE
--model NAME --steps N``) so it gets a log and its failure is reported like any other step's; the
checkpoint is written atomically, last. The sweep names it by module path (``zmdist.bench.plan.RECIPES``),
so the core never imports the demo.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from zmdist.atomic import atomic_path

def demo_digits(out: Path, model: str, steps: int) -> Path:
    from zmdist.demo.teacher_pretrain import pretrain_digit_teacher

    checkpoint = pretrain_digit_teacher(out.parent / "cache", model=model, steps=steps, seed=0, progress=False)
    with atomic_path(out) as tmp:
        shutil.copyfile(checkpoint, tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zmdist.demo.teacher_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint file to write")
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    print(f"teacher recipe demo-digits: {demo_digits(args.out, args.model, args.steps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
