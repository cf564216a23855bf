"""Textual prompt tuning on cached embeddings vs the image-forward way (the published code's), same result.

Both train the same CoOp context from the same seed on the same labelled + pseudolabelled rows in the same
batch order; the only difference is where the image features come from:

- ``cached``: the float16 embeddings ``zmdist embed`` wrote (what ``zmdist prompt-tune`` does);
- ``image-forward``: every step runs the batch's images through the frozen image tower (no grad), as the
  published code does. Its images are decoded and preprocessed ONCE, up front, and kept in memory, so the
  baseline pays for the image tower only (not for JPEG decoding or a DataLoader): the ratio is a floor.

Prints median seconds per round over ``--repeats`` (interleaved so machine noise hits both), the ratio, and
how far the two results are apart (max |ctx difference|, agreement of the pool's argmax). Run:

    .venv/bin/python benchmarks/prompt_tune_textual.py                 # tiny-vit (the demo's architecture)
    .venv/bin/python benchmarks/prompt_tune_textual.py --data runs/quickstart \
        --pretrained runs/quickstart/cache/zmdist-tiny-vit-synthdigits-*.safetensors   # the demo teacher
    .venv/bin/python benchmarks/prompt_tune_textual.py --teacher-model zmdist-micro-vit --epochs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zmdist.data.location import Location
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.demo.digits_pipeline import prepare_digits
from zmdist.methods.prompting import top_k_per_class
from zmdist.prompts import TextualPrompt
from zmdist.prompts.data import load_split
from zmdist.prompts.training import OptimSettings, train_round
from zmdist.teacher import build_zeroshot_classifier, get_templates, load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a prepare_digits folder (shards/, embeddings/); default: made in a temp dir")
    parser.add_argument("--teacher-model", default="zmdist-tiny-vit")
    parser.add_argument("--pretrained", default="random", help="teacher checkpoint the --data was embedded with (random: seed 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--k", type=int, default=16, help="pseudolabels per class (FPL)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-ctx", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        if args.data is None:
            prepare_digits(data, teacher_model=args.teacher_model, pretrained=args.pretrained, shard_size=400)
        run(data, args)


def run(data: Path, args: argparse.Namespace) -> None:
    manifest = Manifest.load(data / "shards")
    teacher = load_teacher(args.teacher_model, args.pretrained, seed=0)  # as prepare_digits embedded
    pool = load_split(Location.parse(data / "embeddings"), manifest, "train")
    images = torch.stack([teacher.preprocess(s["image"]) for shard in manifest.shard_paths("train")
                          for s in iter_shard(shard)])
    names = [c.replace("_", " ") for c in manifest.classes]
    head = build_zeroshot_classifier(teacher.model, teacher.tokenizer, names, get_templates("simple"))
    scale = teacher.logit_scale
    probs = (scale * pool.embeddings @ head.T).softmax(dim=-1)
    picked = top_k_per_class(probs, args.k)
    rows = torch.tensor([r for rs in picked.values() for r in rs])
    targets = torch.tensor([c for c, rs in picked.items() for _ in rs])
    is_labelled = torch.zeros(len(rows), dtype=torch.bool)
    optim = OptimSettings(0.1, 0.9, 0.1, args.batch_size, args.epochs, 1)

    def cached(prompt: TextualPrompt):
        feats = pool.embeddings
        return lambda r: scale * feats[rows[r]] @ prompt().T

    def image_forward(prompt: TextualPrompt):
        def logits(r: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                feats = F.normalize(teacher.model.encode_image(images[rows[r]]).float(), dim=-1)
            return scale * feats @ prompt().T
        return logits

    times: dict[str, list[float]] = {"cached": [], "image-forward": []}
    final: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, make in (("cached", cached), ("image-forward", image_forward)):
            prompt = TextualPrompt(teacher.model, teacher.tokenizer, names, args.n_ctx, seed=0)
            t0 = time.perf_counter()
            train_round(prompt, make(prompt), targets, is_labelled, (0.0, 1.0), optim, seed=0)
            times[name].append(time.perf_counter() - t0)
            final[name] = prompt.classifier()
    steps = args.epochs * -(-len(rows) // args.batch_size)
    base = statistics.median(times["image-forward"])
    agree = float(((pool.embeddings @ final["cached"].T).argmax(1)
                   == (pool.embeddings @ final["image-forward"].T).argmax(1)).float().mean())
    print(f"textual prompt tuning, {args.teacher_model}, {len(rows)} pseudolabelled digits, {steps} steps "
          f"(batch {args.batch_size}, {args.epochs} epochs), median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'way':<16}{'s/round':>10}{'steps/s':>10}{'speed-up':>10}")
    for name in ("image-forward", "cached"):
        med = statistics.median(times[name])
        print(f"{name:<16}{med:>10.2f}{steps / med:>10.1f}{base / med:>10.2f}")
    print(f"same result: max |head difference| {float((final['cached'] - final['image-forward']).abs().max()):.2e} "
          f"(cached embeddings are float16), pool argmax agreement {agree:.4f}")


if __name__ == "__main__":
    main()
