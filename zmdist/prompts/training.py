"""One round of prompt training, and relabelling a pool with the trained prompt, data-parallel over ranks.

Data parallelism is explicit and exact: every rank draws the same seeded batch order, takes its contiguous
slice of each GLOBAL batch, computes its share of the loss ``(sum of weighted CE over its rows) / B`` (``B``
the global batch), and the prompt's gradients are summed over ranks with one ``all_reduce`` before the
step. The summed gradient is the one-process gradient (up to float summation order), so a run on W
processes follows the one-process run. (DDP would average, and need a module forward per step; the prompt
is a handful of vectors, so one flat all-reduce is all it needs.) Relabelling splits the rows into W
contiguous slices, each scored once by its rank, and gathers them in rank order: every row exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from zmdist import dist
from zmdist.methods.prompting import part_mean_prompt_loss, weighted_prompt_loss
from zmdist.progress import Progress
from zmdist.train.schedule import warmup_cosine


@dataclass(frozen=True)
class OptimSettings:
    """SGD with momentum and weight decay, cosine schedule after a linear warm-up (the paper's recipe)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int


def _world() -> tuple[int, int]:
    if torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def _slice(n: int, rank: int, world: int) -> slice:
    return slice(rank * n // world, (rank + 1) * n // world)


def train_round(prompt: nn.Module, logits_of: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                is_labelled: torch.Tensor, weights: tuple[float, float], optim: OptimSettings, seed: int,
                progress: bool = False, desc: str = "prompt-tune",
                validate: Callable[[], float] | None = None, loss_balance: str = "clean",
                keep_epoch: str = "best") -> dict[str, float]:
    """Train ``prompt``'s parameters for ``optim.epochs`` epochs over the rows of ``targets``.

    ``logits_of(rows)`` gives the (len(rows), C) logits of those rows with the current prompt (textual:
    cached image embeddings against the prompt's class features; visual: prompted image features against
    a fixed head). ``validate()`` (optional) scores the prompt after every epoch (accuracy on held-out
    pseudolabels); with ``keep_epoch="best"`` the prompt of the best-scoring epoch is kept (the earliest on
    ties), with ``"last"`` the last epoch's (as the released code returns, whatever its validation said).
    Every rank holds the same parameters and scores the same rows, so every rank keeps the same epoch.
    ``loss_balance``: ``"clean"`` (:func:`weighted_prompt_loss`, a sum over the batch / B) or
    ``"released"`` (:func:`part_mean_prompt_loss`, weighted means per part; counts of the GLOBAL batch).
    Returns the number of steps, the mean loss of the last epoch (summed over ranks) and, with
    ``validate``, the best epoch."""
    n = len(targets)
    if n == 0:
        raise ValueError("prompt training got no sample: no labels and no pseudolabels this round")
    rank, world = _world()
    params = [p for p in prompt.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    per_epoch = math.ceil(n / optim.batch_size)
    total = per_epoch * optim.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(optim.warmup_epochs * per_epoch, total))
    generator = torch.Generator().manual_seed(seed)
    last_epoch_loss = 0.0
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    with Progress(total, desc, "step", enabled=progress and rank == 0) as bar:
        for epoch in range(optim.epochs):
            order = torch.randperm(n, generator=generator)
            epoch_loss = torch.zeros(())
            for start in range(0, n, optim.batch_size):
                batch = order[start:start + optim.batch_size]
                mine = batch[_slice(len(batch), rank, world)].to(targets.device)
                if loss_balance == "released":
                    n_l = int(is_labelled[batch.to(is_labelled.device)].sum())
                    loss = part_mean_prompt_loss(logits_of(mine), targets[mine], is_labelled[mine], *weights,
                                                 batch_labelled=n_l, batch_pseudo=len(batch) - n_l)
                else:
                    loss = weighted_prompt_loss(logits_of(mine), targets[mine], is_labelled[mine], *weights,
                                                batch_total=len(batch))
                opt.zero_grad(set_to_none=False)
                loss.backward()
                for p in params:
                    if p.grad is None:  # a rank whose slice of a short last batch is empty
                        p.grad = torch.zeros_like(p)
                if world > 1:
                    flat = torch.cat([p.grad.reshape(-1) for p in params])
                    torch_dist.all_reduce(flat)
                    offset = 0
                    for p in params:
                        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                        offset += p.numel()
                opt.step()
                sched.step()
                epoch_loss += loss.detach().cpu()
                bar.update(1)
            last_epoch_loss = float(epoch_loss) / per_epoch
            if validate is not None:
                with torch.no_grad():
                    score = float(validate())
                if best is None or score > best[0]:
                    best = (score, epoch, {k: v.detach().clone() for k, v in prompt.state_dict().items()})
    if world > 1:
        last_epoch_loss = sum(dist.all_gather_objects(last_epoch_loss))  # type: ignore[arg-type]
    stats = {"steps": total, "last_epoch_loss": last_epoch_loss}
    if best is not None:
        if keep_epoch == "best":
            prompt.load_state_dict(best[2])
        stats.update(best_epoch=best[1], validation_accuracy=best[0], kept_epoch=(
            best[1] if keep_epoch == "best" else optim.epochs - 1))
    return stats


@torch.no_grad()
def predict_probs(probs_of: Callable[[torch.Tensor], torch.Tensor], n: int, chunk: int = 4096) -> np.ndarray:
    """(n, C) float32 probabilities of rows ``0..n-1``: each rank scores its contiguous slice once
    (``probs_of(rows)``, in chunks), the slices are gathered in rank order, every rank gets the whole."""
    rank, world = _world()
    mine = np.arange(n)[_slice(n, rank, world)]
    parts = [probs_of(torch.from_numpy(mine[i:i + chunk])).float().cpu().numpy() for i in range(0, len(mine), chunk)]
    local = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    gathered = [g for g in dist.all_gather_objects(local) if len(g)]  # type: ignore[arg-type]
    return np.concatenate(gathered).astype(np.float32) if gathered else np.zeros((0, 0), np.float32)
