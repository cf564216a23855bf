"""Images/s of `zmdist embed` against a plain open_clip + ImageFolder/DataLoader loop, same run.

Both sides use the same open_clip model, transform, batch size and worker count, on the same images
(random 160x160 crops of scikit-learn's two sample photos, saved as JPEGs in an ImageFolder, then
sharded with `zmdist shard`). The plain loop only embeds; `zmdist embed` also writes one float16
embedding file per shard, so the ratio is the framework's cost (or gain) for resumable sharded output.

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


def make_imagefolder(root: Path, n: int, classes: int = 10, size: int = 160, seed: int = 0) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        y = rng.integers(0, photo.shape[0] - size)
        x = rng.integers(0, photo.shape[1] - size)
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + size, x : x + size]).save(folder / f"{i:06d}.jpg", quality=90)


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


def zmdist_embed(shards: Path, out: Path, model_name: str, batch_size: int, workers: int) -> tuple[float, float]:
    from zmdist.config import load_config
    from zmdist.stages import embed

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    cfg = load_config(embed.Config, None, [f"shards={shards}", f"teacher.model={model_name}",
                                           f"batch_size={batch_size}", f"num_workers={workers}", "progress=false"])
    results = embed.run(cfg, out)
    return results["images_per_second"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
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
        make_imagefolder(tmp / "images", args.images)
        shard.run(load_config(shard.Config, None, [f"source=imagefolder:{tmp / 'images'}",
                                                   f"shard_size={args.shard_size}", f"image_format={args.image_format}",
                                                   "progress=false"]), tmp / "shards")
        plain, ours = [], []
        for _ in range(args.repeats):  # interleaved so drift on a noisy machine hits both sides alike
            plain.append(plain_loop(tmp / "images", args.model, args.batch_size, args.workers))
            ours.append(zmdist_embed(tmp / "shards", tmp / "emb", args.model, args.batch_size, args.workers))

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    p_ips, z_ips, p_wall, z_wall = med(plain, 0), med(ours, 0), med(plain, 1), med(ours, 1)
    print(f"\nembed throughput: {args.images} images 160x160 JPEG, model {args.model}, batch {args.batch_size}, "
          f"{args.workers} workers, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'':28}{'images/s':>10}{'wall s':>9}")
    print(f"{'plain ImageFolder loop':28}{p_ips:10.0f}{p_wall:9.2f}")
    print(f"{'zmdist embed (shards)':28}{z_ips:10.0f}{z_wall:9.2f}")
    print(f"{'ratio zmdist / plain':28}{z_ips / p_ips:10.2f}{z_wall / p_wall:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"plain_ips": p_ips, "zmdist_ips": z_ips, "plain_wall_s": p_wall,
                                         "zmdist_wall_s": z_wall, "ratio": z_ips / p_ips, **vars(args)}, default=str))


if __name__ == "__main__":
    main()
