"""Images/s of `zmdist embed` against a plain open_clip + ImageFolder/DataLoader loop, same run.

Both sides use the same open_clip model, transform, batch size and worker count, on the same images:
photo-sized JPEGs (default 500x375, like ImageNet or Flowers; random crops of scikit-learn's two sample
photos) in an ImageFolder, sharded with `zmdist shard` (JPEG shards). The plain loop only embeds; `zmdist
embed` also writes one float16 embedding file per shard. zmdist runs twice: with its default JPEG draft
decoding (libjpeg DCT scaling to the teacher's input size) and with `jpeg_draft=false` (full decode, as
the plain loop); the table also gives the mean cosine between the two runs' embeddings.

    .venv/bin/python benchmarks/embed_throughput.py [--images 2000] [--model zmdist-tiny-vit] [--repeats 3]

Prints a table of medians over the repeats (images/s over the embedding loop; wall seconds of the
whole call, model load included for zmdist).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_imagefolder(root: Path, n: int, width: int, height: int, classes: int = 10, seed: int = 0) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 640x427 photos
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - height + 1)
        x = rng.integers(0, photo.shape[1] - width + 1)
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + height, x : x + width]).save(folder / f"{i:06d}.jpg", quality=90)


def plain_loop(folder: Path, model_name: str, batch_size: int, workers: int) -> tuple[float, float]:
    """The baseline a user would write: torchvision ImageFolder + DataLoader + encode_image."""
    import open_clip
    from torchvision.datasets import ImageFolder

    from zmdist.teacher import register_model_configs

    register_model_configs()
    start = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    model.eval()
    loader = torch.utils.data.DataLoader(ImageFolder(str(folder), transform=preprocess), batch_size=batch_size,
                                         num_workers=workers)
    n = 0
    t0 = time.perf_counter()
    feats = []
    with torch.inference_mode():
        for images, _ in loader:
            feats.append(model.encode_image(images, normalize=True).half())
            n += len(images)
    loop = time.perf_counter() - t0
    return n / loop, time.perf_counter() - start


def zmdist_embed(shards: Path, out: Path, model_name: str, batch_size: int, workers: int,
                 draft: bool) -> tuple[float, float]:
    from zmdist.config import load_config
    from zmdist.stages import embed

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    cfg = load_config(embed.Config, None, [f"shards={shards}", f"teacher.model={model_name}", "teacher.pretrained=random",
                                           f"batch_size={batch_size}", f"num_workers={workers}", "progress=false",
                                           f"jpeg_draft={draft}"])
    results = embed.run(cfg, out)
    return results["images_per_second"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--model", default="zmdist-tiny-vit")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--image-format", default="jpg", choices=["jpg", "png"], help="how shards store images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()

    from zmdist.config import load_config
    from zmdist.stages import shard

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_imagefolder(tmp / "images", args.images, args.width, args.height)
        shard.run(load_config(shard.Config, None, [f"source=imagefolder:{tmp / 'images'}",
                                                   f"shard_size={args.shard_size}", f"image_format={args.image_format}",
                                                   "progress=false"]), tmp / "shards")
        plain, draft, full = [], [], []
        for _ in range(args.repeats):  # interleaved so drift on a noisy machine hits every side alike
            plain.append(plain_loop(tmp / "images", args.model, args.batch_size, args.workers))
            draft.append(zmdist_embed(tmp / "shards", tmp / "emb", args.model, args.batch_size, args.workers, True))
            full.append(zmdist_embed(tmp / "shards", tmp / "emb-full", args.model, args.batch_size, args.workers, False))
        cosine = mean_cosine(tmp / "emb", tmp / "emb-full")

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    p_ips, p_wall = med(plain, 0), med(plain, 1)
    print(f"\nembed throughput: {args.images} images {args.width}x{args.height} JPEG, model {args.model}, batch "
          f"{args.batch_size}, {args.workers} workers, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'':34}{'images/s':>10}{'wall s':>9}{'vs plain':>10}")
    print(f"{'plain open_clip ImageFolder loop':34}{p_ips:10.0f}{p_wall:9.2f}{1:10.2f}")
    for name, rows in (("zmdist embed (JPEG draft, default)", draft), ("zmdist embed jpeg_draft=false", full)):
        print(f"{name:34}{med(rows, 0):10.0f}{med(rows, 1):9.2f}{med(rows, 0) / p_ips:10.2f}")
    print(f"mean cosine(draft, full decode) of the embeddings: {cosine:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"plain_ips": p_ips, "draft_ips": med(draft, 0), "full_ips": med(full, 0),
                                         "cosine": cosine, **vars(args)}, default=str))


def mean_cosine(a: Path, b: Path) -> float:
    from zmdist.formats import EmbeddingShard

    sims = []
    for path in sorted(a.glob("*.npz")):
        x, y = (EmbeddingShard.load(p).embeddings.astype(np.float32) for p in (path, b / path.name))
        sims.append((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    return float(np.concatenate(sims).mean())


if __name__ == "__main__":
    main()
