"""Pretrain a tiny open_clip teacher on synthetic captioned digits, for the offline embedded default (demo only).

The teacher never sees the real scikit-learn digits or their labels: it learns from
:func:`zmdist.demo.synth_digits.render_digit_corpus` (stroke- and font-rendered glyphs with captions) with
the CLIP contrastive loss, and is then used zero-shot on the real digits. The result is saved as an
open_clip ``.safetensors`` state dict, so it loads through the normal ``pretrained=<path>`` route
(``load_teacher(model, pretrained=str(path))``).

Images take exactly the path the rest of the project uses: 8x8 counts -> ``digits_array_to_image`` ->
RGB -> the teacher's preprocess (bicubic resize to 32, centre crop, ToTensor, CLIP normalisation).
:func:`digit_arrays_to_tensor` is a batched equivalent (checked against ``teacher.preprocess`` in the
tests).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zmdist.atomic import atomic_path
from zmdist.data.sklearn_digits import DIGIT_CLASSNAMES, digits_array_to_image
from zmdist.progress import Progress
from zmdist.train.schedule import warmup_cosine

# Bump when the corpus, the loss or the recipe changes in a way that changes the weights.
# v2: the shared zmdist.train.schedule.warmup_cosine (per step, warm-up from (step+1)/warmup) replaced
# the module's own fraction-based warm-up + cosine.
PRETRAIN_VERSION = "synthdigits-v2"

WARMUP_FRACTION = 0.05  # share of the steps spent warming up

DEFAULT_STEPS = 800
DEFAULT_BATCH_SIZE = 256
DEFAULT_LR = 2e-3
DEFAULT_CORPUS_SIZE = 30_000

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss for a batch of N matching (image, text) pairs.

    ``image_features`` and ``text_features`` are (N, D), L2-normalised; ``logit_scale`` is the
    multiplier (CLIP's learned temperature, already exponentiated). With ``logits = logit_scale *
    image_features @ text_features.T`` the loss is the mean of the cross-entropy of each row (image ->
    texts) and of each column (text -> images), the i-th pair being the positive:

        loss = (CE(logits, arange(N)) + CE(logits.T, arange(N))) / 2

    ``targets`` (optional, (N, N), rows summing to 1, symmetric) replaces the one-hot positives with soft
    ones, e.g. spreading the target over pairs whose captions are the same string, so identical captions
    in a batch are not pushed apart as negatives. ``targets=None`` is exactly the standard loss.
    """
    logits = logit_scale * image_features @ text_features.T
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    li = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    lt = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (li + lt)


def digit_arrays_to_tensor(arrays: np.ndarray, image_size: int = 32) -> torch.Tensor:
    """(n, 8, 8) arrays of 0..16 -> (n, 3, S, S) float tensors, as ``preprocess(digits_array_to_image(a).convert("RGB"))``.

    The 8x8 -> S bicubic resize is done by PIL on the ``"L"`` image (per channel identical to the RGB
    resize), then ToTensor's ``/255`` and the CLIP mean/std normalisation are applied in one go.
    """
    return _normalise_uint8(torch.from_numpy(_resize_uint8(np.asarray(arrays), image_size)))


def _resize_uint8(arrays: np.ndarray, image_size: int = 32) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(arrays), image_size, image_size), np.uint8)
    for i, a in enumerate(arrays):
        out[i] = np.asarray(digits_array_to_image(a).resize((image_size, image_size), Image.BICUBIC))
    return out


def _normalise_uint8(x: torch.Tensor) -> torch.Tensor:
    """(n, S, S) uint8 grey -> (n, 3, S, S) float32 normalised with CLIP's mean/std (ToTensor + Normalize)."""
    x = x.to(torch.float32).div(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


class _CompactEmbedding(torch.nn.Module):
    """Stand-in for a token embedding that trains only the rows of the tokens the corpus uses.

    CLIP's vocabulary embedding is ~95% of the tiny teacher's parameters but a caption corpus touches a
    few hundred rows; training a compact copy makes each optimiser step far cheaper. Token ids are
    left unchanged (the text pooling looks for the end-of-text id), only the lookup is remapped.
    """

    def __init__(self, full: torch.nn.Embedding, used: torch.Tensor):
        super().__init__()
        lut = torch.zeros(full.num_embeddings, dtype=torch.long)
        lut[used] = torch.arange(len(used))
        self.register_buffer("lut", lut, persistent=False)
        self.used = used
        self.weight = torch.nn.Parameter(full.weight.detach()[used].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lut[ids], self.weight)

    def write_back(self, full: torch.nn.Embedding) -> None:
        with torch.no_grad():
            full.weight[self.used] = self.weight.detach()


def _settings_hash(settings: dict) -> str:
    blob = json.dumps({"version": PRETRAIN_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretrain_digit_teacher(
    out_dir: Path,
    *,
    model: str = "zmdist-tiny-vit",
    seconds: float | None = None,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    progress: bool = True,
    lr: float = DEFAULT_LR,
    corpus_size: int = DEFAULT_CORPUS_SIZE,
    num_threads: int | None = None,
) -> Path:
    """Train ``model`` contrastively on synthetic captioned digits; return the saved checkpoint's path.

    Writes ``out_dir/<model>-synthdigits-<hash>.safetensors`` (the model's state dict), where the hash
    covers every training setting and :data:`PRETRAIN_VERSION`; if that file exists it is returned at once
    without training. ``steps`` optimiser steps of ``batch_size`` pairs from a corpus of ``corpus_size``
    rendered samples (AdamW; lr ``lr * warmup_cosine(warmup, steps)(step)`` from
    :mod:`zmdist.train.schedule`, warm-up over 5% of the steps). ``seconds``, if given, caps the wall
    time: the schedule is then evaluated at ``max(step, steps * elapsed / seconds)``, so the run still ends
    on a decayed learning rate, but the weights depend on the machine's speed; leave it ``None`` for results
    that are deterministic for ``seed``. Identical captions in a batch are encoded once (their features
    are identical, and with identical text features soft targets over duplicates give the same loss and
    gradients as the standard one-hot targets, so the standard loss is used).
    """
    import open_clip
    from safetensors.torch import save_file

    from zmdist.demo.synth_digits import render_digit_corpus
    from zmdist.teacher.loading import register_model_configs

    settings = dict(
        model=model,
        seconds=seconds,
        steps=int(steps),
        batch_size=int(batch_size),
        seed=int(seed),
        lr=float(lr),
        corpus_size=int(corpus_size),
    )
    out_dir = Path(out_dir)
    path = out_dir / f"{model}-synthdigits-{_settings_hash(settings)}.safetensors"
    if path.is_file():
        return path

    t_start = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or min(prev_threads, max(1, os.cpu_count() or 1)))
    try:
        register_model_configs()
        torch.manual_seed(seed)
        net = open_clip.create_model(model)
        net.train()
        tokenizer = open_clip.get_tokenizer(model)
        image_size = int(net.visual.image_size[0]) if hasattr(net.visual, "image_size") else 32

        arrays, captions, _labels = render_digit_corpus(corpus_size, seed)
        pixels = torch.from_numpy(_resize_uint8(arrays, image_size))
        uniq, cap_ids = np.unique(np.asarray(captions), return_inverse=True)
        tokens = tokenizer(list(uniq))
        cap_ids_t = torch.from_numpy(cap_ids.astype(np.int64))
        full_embedding = net.token_embedding
        compact = _CompactEmbedding(full_embedding, torch.unique(tokens))
        net.token_embedding = compact

        decay, no_decay = [], []
        for name, p in net.named_parameters():
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.98),
            eps=1e-6,
            foreach=True,
        )
        gen = torch.Generator().manual_seed(seed)
        schedule = warmup_cosine(max(1, round(WARMUP_FRACTION * steps)), steps)
        bar = Progress(steps, "pretrain digit teacher", "step", enabled=progress)
        perm = torch.randperm(corpus_size, generator=gen)
        pos = 0
        losses: list[float] = []
        for step in range(steps):
            at = step
            if seconds is not None:
                elapsed = (time.perf_counter() - t_start) / seconds
                if elapsed >= 1.0:
                    break
                at = max(step, int(elapsed * steps))
            for g in opt.param_groups:
                g["lr"] = lr * schedule(at)
            if pos + batch_size > corpus_size:
                perm = torch.randperm(corpus_size, generator=gen)
                pos = 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            images = _normalise_uint8(pixels[idx])
            ids = cap_ids_t[idx]
            u, inv = torch.unique(ids, return_inverse=True)
            img_f = net.encode_image(images, normalize=True)
            txt_f = net.encode_text(tokens[u], normalize=True)[inv]
            loss = clip_contrastive_loss(img_f, txt_f, net.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                net.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        compact.write_back(full_embedding)
        net.token_embedding = full_embedding
    finally:
        torch.set_num_threads(prev_threads)

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    n_done = len(losses)
    k = max(1, min(20, n_done // 4))
    meta = {
        "zmdist_pretrain": json.dumps(
            {
                "version": PRETRAIN_VERSION,
                **settings,
                "steps_done": n_done,
                "loss_first": float(np.mean(losses[:k])) if losses else None,
                "loss_last": float(np.mean(losses[-k:])) if losses else None,
                "seconds_taken": round(time.perf_counter() - t_start, 2),
            }
        )
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_pretrain_metadata(checkpoint: str | Path) -> dict:
    """The training record stored in a checkpoint written by :func:`pretrain_digit_teacher`."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("zmdist_pretrain", "{}"))


@torch.no_grad()
def evaluate_zero_shot_on_sklearn_digits(
    checkpoint: str | Path | None, model: str = "zmdist-tiny-vit", templates: list[str] | None = None
) -> float:
    """Zero-shot top-1 accuracy of a teacher on all 1,797 real scikit-learn digits (``checkpoint`` None: the
    untrained, random-weight teacher, the baseline pretraining is measured against).

    Goes the project's way: ``load_teacher(model, pretrained=checkpoint)``, a classifier from
    ``DIGIT_CLASSNAMES`` and ``templates`` (default ``TEMPLATE_SETS["digits"]``) via
    ``build_zeroshot_classifier``, images as ``teacher.preprocess(digits_array_to_image(a).convert("RGB"))``.
    """
    from sklearn.datasets import load_digits

    from zmdist.teacher.loading import load_teacher
    from zmdist.teacher.templates import TEMPLATE_SETS
    from zmdist.teacher.zeroshot import build_zeroshot_classifier

    teacher = load_teacher(model, pretrained=str(checkpoint) if checkpoint else "random")
    weights = build_zeroshot_classifier(
        teacher.model, teacher.tokenizer, DIGIT_CLASSNAMES, templates or TEMPLATE_SETS["digits"]
    )
    digits = load_digits()
    x = torch.stack([teacher.preprocess(digits_array_to_image(a).convert("RGB")) for a in digits.images])
    feats = F.normalize(teacher.model.encode_image(x).float(), dim=-1)
    pred = (feats @ weights.T).argmax(1).numpy()
    return float((pred == digits.target).mean())
