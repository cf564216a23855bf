"""Cost model for internet-scale runs (LAION-2B: 2 x 10^9 images), from per-image costs measured here.

Prints, per stage (embed, pseudolabel, train) and GPU kind, the images/s of one GPU under each bound
(compute, JPEG decode on the node's CPU share, network), which bound wins, GPU-hours, and wall time on N
nodes of 8 GPUs; then how to cut the embedding job array. Every input is printed with where it comes from:

- measured HERE (this run): FLOPs per image of the teacher and students (``torch.utils.flop_counter`` on a
  random-weight model, CPU: a count, not a timing, so the machine's load does not matter), JPEG decode +
  resize images/s per core, and JPEG bytes per image (photo crops re-encoded like ``img2dataset`` writes
  them: 256 px, quality 95), zero-shot head cost per image (a timed CPU matmul; negligible either way);
- PUBLISHED: the GPUs' dense bf16 peaks (NVIDIA datasheets: A100 SXM 312 TFLOP/s, H100/H200 SXM 989 TFLOP/s);
- ASSUMED (replace with measured figures once a GPU run exists; ``benchmarks/COST.md`` lists the GPU
  measurements still to take): the model FLOP utilisation
  (``--mfu``, default 0.40 for batched bf16 inference of a ViT), cores per GPU (``--cores-per-gpu``, 12), the
  node's network bandwidth (``--network-gbit``, 100 Gbit/s) and the student's training MFU (``--train-mfu``).

    .venv/bin/python benchmarks/cost_model.py [--images 2e9] [--nodes 1 4 16] [--mfu 0.4]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import torch
from PIL import Image

from zmdist.bench.cost import GPU_PEAK_TFLOPS, flops_per_image, teacher_image_flops


def timm_train_flops(name: str, size: int) -> float:
    """FLOPs per image of one training step (forward + backward) of a timm student."""
    import timm

    return flops_per_image(timm.create_model(name, pretrained=False, num_classes=100).train(), size, backward=True)


def photo_jpegs(count: int, width: int = 500, height: int = 375) -> list[bytes]:
    """Photo-like JPEGs: random crops of scikit-learn's two sample photos (as the embed benchmark uses)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - 200), rng.integers(0, photo.shape[1] - 200)
        crop = Image.fromarray(photo[y:y + 200, x:x + 260]).resize((width, height))
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode_rate(jpegs: list[bytes], size: int, repeats: int = 3) -> float:
    """Images/s of one core decoding each JPEG and resizing it to ``size`` (median of ``repeats``)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for data in jpegs:
            Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC)
        rates.append(len(jpegs) / (time.perf_counter() - t0))
    return statistics.median(rates)


def web_jpegs(jpegs: list[bytes]) -> list[bytes]:
    """The photos re-encoded as ``img2dataset`` stores web-scale sets by default (256 px, quality 95)."""
    out = []
    for data in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize((256, 256)).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def head_seconds_per_image(dim: int = 768, classes: int = 1000, batch: int = 65536) -> float:
    """CPU seconds per image of the zero-shot head (matmul + softmax + top-5), one process."""
    x = torch.randn(batch, dim)
    w = torch.randn(dim, classes)
    t0 = time.perf_counter()
    torch.softmax(100 * x @ w, dim=1).topk(5, dim=1)
    return (time.perf_counter() - t0) / batch


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds < 3600 * 48 else f"{seconds / 86400:,.1f} d"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=float, default=2e9)
    ap.add_argument("--teachers", nargs="+", default=["ViT-L-14", "ViT-B-32"])
    ap.add_argument("--student", default="resnet50")
    ap.add_argument("--student-size", type=int, default=224)
    ap.add_argument("--train-epochs", type=float, default=1.0, help="student passes over the 2B images")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--mfu", type=float, default=0.40, help="ASSUMED inference FLOP utilisation")
    ap.add_argument("--train-mfu", type=float, default=0.35, help="ASSUMED training FLOP utilisation")
    ap.add_argument("--cores-per-gpu", type=int, default=12, help="ASSUMED CPU cores per GPU for decoding")
    ap.add_argument("--network-gbit", type=float, default=100.0, help="ASSUMED node bandwidth, Gbit/s")
    ap.add_argument("--decode-rate", type=float, help="JPEG decodes/s per core to use instead of measuring")
    ap.add_argument("--shard-size", type=int, default=10_000, help="images per tar shard")
    ap.add_argument("--task-hours", type=float, default=4.0, help="target hours per array task")
    args = ap.parse_args()
    torch.set_num_threads(1)

    jpegs = photo_jpegs(200)
    web = web_jpegs(jpegs)
    decode_224 = args.decode_rate or decode_rate(web, 224)
    photo_224 = decode_rate(jpegs, 224)
    jpeg_bytes = float(np.mean([len(data) for data in web]))
    head_s = head_seconds_per_image()
    teacher_flops = {name: teacher_image_flops(name) for name in args.teachers}
    student_flops = timm_train_flops(args.student, args.student_size)

    print("inputs")
    for name, flops in teacher_flops.items():
        print(f"  {name} image tower: {flops / 1e9:,.1f} GFLOP/image (measured here: torch flop counter)")
    print(f"  student {args.student} at {args.student_size} px, one training step: {student_flops / 1e9:,.1f}"
          " GFLOP/image (measured here)")
    source = "given by --decode-rate" if args.decode_rate else "measured here"
    print(f"  JPEG decode + resize to 224 of a 256 px web JPEG: {decode_224:,.0f} images/s per core ({source}); "
          f"of a 500x375 photo: {photo_224:,.0f} (measured here)")
    print(f"  web JPEG (256 px, q95): {jpeg_bytes / 1e3:,.1f} kB/image (measured here)")
    print(f"  zero-shot head, 768-d x 1,000 classes: {head_s * 1e6:,.2f} us/image on one CPU core (measured here)")
    print(f"  GPU dense bf16 peaks (published): " + ", ".join(f"{k} {v:,.0f} TFLOP/s" for k, v in GPU_PEAK_TFLOPS.items()))
    print(f"  assumed: MFU {args.mfu:.2f} inference, {args.train_mfu:.2f} training; {args.cores_per_gpu} cores/GPU;"
          f" {args.network_gbit:,.0f} Gbit/s per node of 8 GPUs")

    decode_per_gpu = decode_224 * args.cores_per_gpu
    network_per_gpu = args.network_gbit * 1e9 / 8 / jpeg_bytes / 8
    rows = []
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        for name, flops in teacher_flops.items():
            compute = peak * 1e12 * args.mfu / flops
            rows.append((f"embed {name}", gpu, compute, decode_per_gpu, network_per_gpu))
        compute = peak * 1e12 * args.train_mfu / student_flops
        rows.append((f"train {args.student} x{args.train_epochs:g}", gpu, compute, decode_per_gpu, network_per_gpu))

    print(f"\nper GPU, {args.images:.2g} images (images/s under each bound; the smallest wins)")
    header = f"  {'stage':<24}{'GPU':<11}{'compute':>9}{'decode':>9}{'network':>9}  {'bound':<8}{'GPU-hours':>10}"
    header += "".join(f"{f'{n} node' + 's' * (n > 1):>11}" for n in args.nodes)
    print(header)
    for stage, gpu, compute, decode, network in rows:
        bounds = {"compute": compute, "decode": decode, "network": network}
        bound = min(bounds, key=bounds.get)
        rate = bounds[bound]
        work = args.images * (args.train_epochs if stage.startswith("train") else 1.0)
        gpu_hours = work / rate / 3600
        walls = "".join(f"{hours(work / rate / (8 * n)):>11}" for n in args.nodes)
        print(f"  {stage:<24}{gpu:<11}{compute:>9,.0f}{decode:>9,.0f}{network:>9,.0f}  {bound:<8}{gpu_hours:>10,.0f}{walls}")
    pl_cpu_hours = args.images * head_s / 3600
    print(f"  {'pseudolabel (CPU)':<24}{'-':<11}{'':>9}{'':>9}{'':>9}  {'CPU':<8}{pl_cpu_hours:>10,.1f}"
          "  core-hours: reads only the embeddings (2B x 768 x 2 B = "
          f"{args.images * 768 * 2 / 1e12:,.1f} TB float16)")

    print("\njob array for embed (one task = one GPU, whole shards)")
    for gpu, peak in GPU_PEAK_TFLOPS.items():
        name = args.teachers[0]
        rate = min(peak * 1e12 * args.mfu / teacher_flops[name], decode_per_gpu, network_per_gpu)
        shards = int(np.ceil(args.images / args.shard_size))
        per_task = max(1, int(args.task_hours * 3600 * rate // args.shard_size))
        tasks = int(np.ceil(shards / per_task))
        print(f"  {name} on {gpu}: {shards:,} shards of {args.shard_size:,}; {per_task:,} shards "
              f"({per_task * args.shard_size / rate / 3600:.1f} h) per task -> --array {tasks:,}, "
              f"--array-parallelism = the GPUs you may hold")


if __name__ == "__main__":
    main()
