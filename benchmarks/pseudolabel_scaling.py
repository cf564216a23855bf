"""`zmdist pseudolabel` from 10^4 to 10^6 samples: time per shard and peak memory must not grow with N.

Synthetic embeddings (d=512, float16, unit rows) in shards of 10,000 samples, 1,000 classes (so only the
top-k is stored, as for ImageNet), a teacher whose towers are tiny but whose embedding width is 512 (only
the text tower runs here: 1,000 class prompts). Every N runs `zmdist pseudolabel` in a fresh process, which
reports its peak RSS; seconds per shard are the stage's own labelling time divided by the shards.
The plain baseline in the same table: one shard labelled by a bare NumPy/torch loop (load, matmul,
softmax, top-k, save), the floor the stage's per-shard time is compared with.

    .venv/bin/python benchmarks/pseudolabel_scaling.py [--sizes 10000,100000,1000000] [--shard-size 10000]

The image shards are not read by this stage, so they are empty placeholder files listed in a manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, CLASSES = 512, 1000
TEACHER = {"embed_dim": DIM,
           "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def make_embeddings(root: Path, total: int, shard_size: int, config: Path) -> Path:
    """A manifest with placeholder shards and an embedding folder as `zmdist embed` leaves it."""
    from zmdist.data.manifest import Manifest, ShardInfo, SplitInfo, keys_digest
    from zmdist.formats import EmbeddingShard, sidecar_name
    from zmdist.provenance import hash_json
    from zmdist.teacher.loading import register_model_configs, teacher_fingerprint

    shards, emb = root / "shards", root / "embeddings"
    shards.mkdir(parents=True)
    emb.mkdir()
    rng = np.random.default_rng(0)
    infos = []
    for i, start in enumerate(range(0, total, shard_size)):
        n = min(shard_size, total - start)
        name = f"train-{i:06d}.tar"
        keys = [f"k{start + j:09d}" for j in range(n)]
        (shards / name).touch()
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        EmbeddingShard(np.array(keys), rng.integers(0, CLASSES, n), x.astype(np.float16)).save(emb / sidecar_name(name))
        infos.append(ShardInfo(name, n, keys_digest(keys)))
    Manifest("synthetic", [f"class{c}" for c in range(CLASSES)], "png",
             {"train": SplitInfo(infos, total, total)}).save(shards)
    register_model_configs(config)
    teacher = {"model": config.stem, "pretrained": "random", "model_config": str(config)}
    (emb / "embed_info.json").write_text(json.dumps({
        "splits": ["train"], "shards_fingerprint": hash_json(["synthetic", total]),
        "teacher_fingerprint": teacher_fingerprint(config.stem, "random", 0),
        "shards": str(shards), "teacher": teacher, "seed": 0}))
    return emb


def child(emb: Path, out: Path) -> None:
    """Runs in a fresh process: the stage, then its own peak RSS."""
    import resource

    from zmdist.config import load_config
    from zmdist.stages import pseudolabel

    start = time.perf_counter()
    res = pseudolabel.run(load_config(pseudolabel.Config, None, [f"embeddings={emb}", "progress=false"]), out)
    print(json.dumps({"wall": time.perf_counter() - start, "label_seconds": res["label_seconds"],
                      "shards": res["sidecars_written"], "samples": res["samples"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def plain_shard(emb_file: Path, out: Path) -> float:
    """The floor: one shard labelled by hand (same math, same outputs, no framework)."""
    import torch

    classifier = torch.nn.functional.normalize(torch.randn(CLASSES, DIM), dim=-1)
    start = time.perf_counter()
    with np.load(emb_file) as f:
        keys, labels, x = f["keys"], f["labels"], torch.from_numpy(f["embeddings"]).float()
    probs = (100 * torch.nn.functional.normalize(x, dim=-1) @ classifier.T).softmax(-1)
    top, cls = probs.topk(5, dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    np.savez(out, keys=keys, labels=labels, pseudolabel=cls[:, 0].numpy(), confidence=top[:, 0].numpy(),
             margin=(top[:, 0] - top[:, 1]).numpy(), entropy=entropy.numpy(), topk_classes=cls.numpy(),
             topk_probs=top.numpy())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--shard-size", type=int, default=10000)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench-d512.json"
        config.write_text(json.dumps(TEACHER))
        for total in [int(s) for s in args.sizes.split(",")]:
            root = Path(tmp) / f"n{total}"
            t0 = time.perf_counter()
            emb = make_embeddings(root, total, args.shard_size, config)
            made = time.perf_counter() - t0
            plain = np.median([plain_shard(emb / "train-000000.npz", root / "plain.npz") for _ in range(3)])
            r = subprocess.run([sys.executable, __file__, "--child", str(emb), str(root / "pl")], capture_output=True,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), check=False)
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            res = json.loads(r.stdout.strip().splitlines()[-1])
            assert res["samples"] == total
            rows.append((total, res["shards"], res["label_seconds"] / res["shards"], plain, res["wall"],
                         res["peak_rss_mb"], made))
            subprocess.run(["rm", "-rf", str(root)], check=True)
    print(f"\npseudolabel scaling: d={DIM}, {CLASSES} classes (top-5 stored), shards of {args.shard_size}, 1 process, CPU")
    print(f"{'samples':>10}{'shards':>8}{'s/shard':>9}{'plain s/shard':>15}{'ratio':>7}{'wall s':>8}{'peak RSS MB':>13}")
    for total, shards, per, plain, wall, rss, _ in rows:
        print(f"{total:>10}{shards:>8}{per:>9.3f}{plain:>15.3f}{per / plain:>7.2f}{wall:>8.1f}{rss:>13.0f}")


if __name__ == "__main__":
    main()
