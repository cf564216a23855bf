"""Pseudolabels for prompt tuning a CLIP teacher (FPL / IFPL / GRIP, Menghini et al., NeurIPS 2023).

Pure functions on tensors, no ranks, files or models: the per-class top-K assignment of pseudolabels,
GRIP's growing K (clean and as released), the loss weights of each learning setting and the weighted loss
itself (clean, and the released code's per-part means). They are
checked against hand-worked examples and brute-force references in ``tests/test_prompt_methods.py``.
"""

from __future__ import annotations

import heapq
import math
from typing import Literal

import torch
import torch.nn.functional as F

Setting = Literal["ssl", "trzsl", "ul"]
Strategy = Literal["none", "fpl", "ifpl", "grip"]


def top_k_per_class(probs: torch.Tensor, k: int) -> dict[int, list[int]]:
    """Per class, the (at most) ``k`` rows of ``probs`` (N, C) it is most confident about; each row in at most one list.

    The rule of the paper, with each image assigned once (the published code lets an image enter several
    lists): an image goes to its most probable class if it beats that class's weakest member (or the class
    has fewer than ``k``); the member it displaces, or the image itself when it does not beat it, is tried on
    its next most probable class, and so on. This is deferred acceptance (Gale-Shapley with images
    proposing, classes holding ``k`` seats), so the result does not depend on the order rows are visited:
    it is the stable assignment every image likes best. "Beats" compares the class's probability; equal
    probabilities go to the lower row index, and an image with equal probabilities for two classes tries
    the lower class index first, so ties are deterministic. An image rejected by every class stays out.

    Returns ``{class: sorted row indices}`` for every class (empty lists included)."""
    if probs.ndim != 2:
        raise ValueError(f"top_k_per_class: probs must be (N, C), got shape {tuple(probs.shape)}")
    if k < 0:
        raise ValueError(f"top_k_per_class: k must be >= 0, got {k}")
    n, c = probs.shape
    p = probs.detach().double().cpu()
    # each image's classes from most to least probable (stable sort: ties -> lower class index first)
    order = torch.sort(-p, dim=1, stable=True).indices.tolist() if n else []
    values = p.tolist()
    seats: list[list[tuple[float, int]]] = [[] for _ in range(c)]  # min-heaps of (prob, -row): weakest on top
    next_choice = [0] * n
    free = list(range(n - 1, -1, -1))  # stack of images still to place
    while free and k > 0:
        row = free.pop()
        if next_choice[row] >= c:
            continue  # rejected everywhere: stays unassigned
        cls = order[row][next_choice[row]]
        next_choice[row] += 1
        entry = (values[row][cls], -row)  # larger = stronger; on equal prob the lower row is stronger
        heap = seats[cls]
        if len(heap) < k:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            _, loser = heapq.heapreplace(heap, entry)
            free.append(-loser)
        else:
            free.append(row)
    return {cls: sorted(-r for _, r in seats[cls]) for cls in range(c)}


def grip_k(round_index: int, n_unlabelled: int, n_classes: int, rounds: int = 10,
           schedule: Literal["clean", "released"] = "clean") -> int:
    """GRIP's per-class pseudolabel count in round ``round_index`` (from 0): ``(t+1) * |U| / (rounds * C)``,
    capped at ``|U| / C``.

    ``clean``: rounded UP (both the growth and the cap, in exact integer arithmetic), so every round takes at
    least one image per class and the last round (``t = rounds - 1``) has ``K * C >= |U|`` seats: with the
    one-list-per-image assignment of :func:`top_k_per_class`, the whole pool is pseudolabelled, as the
    paper's schedule ("from 10% of U to all of it") intends. Rounds past the last stay at the cap.

    ``released``: floored everywhere, as the released code computes it (BatsResearch/menghini-neurips23-code
    at 2094fa5, ``methods/semi_supervised_learning/training_strategies.py``:473-485 and 553-560):
    ``num_samples = int(|U| / rounds)``, ``K_t = int((t+1) * num_samples / C)``, capped at ``floor(|U| / C)``.
    It can be 0 in early rounds of a small pool (Flowers102's 816 images over 102 classes: round 0 gets
    K = 0) and never labels the last ``|U| - C * K`` images."""
    if round_index < 0:
        raise ValueError(f"grip_k: round_index counts from 0, got {round_index}")
    if n_classes < 1 or rounds < 1 or n_unlabelled < 0:
        raise ValueError(f"grip_k: need n_classes >= 1, rounds >= 1, n_unlabelled >= 0 "
                         f"(got {n_classes}, {rounds}, {n_unlabelled})")
    if schedule == "released":
        return min((round_index + 1) * (n_unlabelled // rounds) // n_classes, n_unlabelled // n_classes)
    if schedule != "clean":
        raise ValueError(f"grip_k: schedule must be 'clean' or 'released', got {schedule!r}")
    grown = -(-(round_index + 1) * n_unlabelled // (rounds * n_classes))  # ceil without floats
    cap = -(-n_unlabelled // n_classes)
    return min(grown, cap)


def loss_weights(setting: Setting, n_labelled: int, n_pseudo: int, *, multimodal: bool = False) -> tuple[float, float]:
    """(weight of the labelled CE, weight of the pseudolabelled CE) of docs/methods.md section 2 for a setting.

    SSL: ``|P|/|L| * CE_L + CE_P`` (multimodal prompts: ``sqrt(|P|/|L|)``); TRZSL: ``CE_L + |L|/|P| * CE_P``;
    UL: ``CE_P`` only. A set that is empty gets weight 0 (no pseudolabels: plain CoOp on the labels)."""
    if n_labelled < 0 or n_pseudo < 0:
        raise ValueError(f"loss_weights: set sizes must be >= 0, got |L|={n_labelled}, |P|={n_pseudo}")
    if setting == "ul":
        return 0.0, (1.0 if n_pseudo else 0.0)
    if n_labelled == 0:
        raise ValueError(f"loss_weights: setting {setting!r} needs labelled samples, got |L| = 0")
    if n_pseudo == 0:
        return 1.0, 0.0
    if setting == "ssl":
        ratio = n_pseudo / n_labelled
        return (math.sqrt(ratio) if multimodal else ratio), 1.0
    if setting == "trzsl":
        return 1.0, n_labelled / n_pseudo
    raise ValueError(f"loss_weights: unknown setting {setting!r} (ssl, trzsl, ul)")


def weighted_prompt_loss(logits: torch.Tensor, targets: torch.Tensor, is_labelled: torch.Tensor,
                         w_labelled: float, w_pseudo: float, batch_total: int | None = None) -> torch.Tensor:
    """``(w_L * sum of CE over the batch's labelled rows + w_P * sum over its pseudolabelled rows) / B``.

    Why a sum over the whole batch rather than a mean per part: batches are drawn from ``L u P`` at random,
    so a batch holds labelled rows in proportion ``|L| / (|L| + |P|)``; summing and weighting by ``|P|/|L|``
    (SSL) then gives both sets the same expected share of the gradient, which is what the reweighting is
    for. ``B`` is ``batch_total`` when given (the GLOBAL batch: each rank of a data-parallel run passes it,
    so summing the ranks' gradients gives exactly the one-process gradient), else the rows here."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    weights = torch.where(is_labelled, torch.as_tensor(w_labelled, dtype=ce.dtype, device=ce.device),
                          torch.as_tensor(w_pseudo, dtype=ce.dtype, device=ce.device))
    total = batch_total if batch_total is not None else logits.shape[0]
    if total <= 0:
        raise ValueError(f"weighted_prompt_loss: batch_total must be >= 1, got {total}")
    return (weights * ce).sum() / total


def released_loss_weights(setting: Setting, strategy: Strategy, n_labelled: int, n_pseudo: int,
                          multimodal: bool = False) -> tuple[float, float]:
    """(w_L, w_P) of the released code: the weights of the MEAN cross-entropy over a batch's labelled rows and
    of the mean over its pseudolabelled rows (:func:`part_mean_prompt_loss`), as BatsResearch/
    menghini-neurips23-code computes them at 2094fa5 (paths under ``methods/``):

    - ``ssl`` ``fpl``: ``(|P|/|L|, 1)`` (``semi_supervised_learning/textual_fpl.py``:115, 128); multimodal
      ``(sqrt(|P|/|L|), 1)`` (``multimodal_fpl.py``:107, 118);
    - ``ssl`` ``ifpl`` / ``grip``: ``(|L|/|P|, 1)``, textual and multimodal alike: every round's
      ``update_training_set`` resets the weight to ``len(seen) / len(unseen)``
      (``semi_supervised_learning/training_strategies.py``:637, called at 418 and 520) and the loss stays
      ``balance * CE_L + CE_P``;
    - ``trzsl`` ``fpl``: ``(1, |L|/|P|)`` (``transductive_zsl/textual_fpl.py``:109, 122); multimodal
      ``(1, sqrt(|L|/|P|))`` (``transductive_zsl/multimodal_fpl.py``:104, 115);
    - ``trzsl`` ``ifpl`` / ``grip``: ``(1, |L|/|P|)`` (``transductive_zsl/training_strategies.py``:637);
    - ``ul``: ``(0, 1)`` (``unsupervised_learning/textual_fpl.py``:112-116);
    - ``none`` (CoOp on the labels): ``(1, 0)`` (``training_strategies.py``:582-583, plain mean CE).

    ``|L|``, ``|P|``: labelled and pseudolabelled TRAINING rows of the round. A round without pseudolabels
    gets ``(1, 0)`` (``ul``: ``(0, 0)``, nothing to train on), where the released code would divide by zero."""
    if n_labelled < 0 or n_pseudo < 0:
        raise ValueError(f"released_loss_weights: set sizes must be >= 0, got |L|={n_labelled}, |P|={n_pseudo}")
    if setting not in ("ssl", "trzsl", "ul"):
        raise ValueError(f"released_loss_weights: unknown setting {setting!r} (ssl, trzsl, ul)")
    if strategy not in ("none", "fpl", "ifpl", "grip"):
        raise ValueError(f"released_loss_weights: unknown strategy {strategy!r} (none, fpl, ifpl, grip)")
    if setting == "ul":
        return 0.0, (1.0 if n_pseudo else 0.0)
    if n_labelled == 0:
        raise ValueError(f"released_loss_weights: setting {setting!r} needs labelled samples, got |L| = 0")
    if strategy == "none" or n_pseudo == 0:
        return 1.0, 0.0
    if strategy == "fpl":
        ratio = n_pseudo / n_labelled if setting == "ssl" else n_labelled / n_pseudo
        ratio = math.sqrt(ratio) if multimodal else ratio
        return (ratio, 1.0) if setting == "ssl" else (1.0, ratio)
    return (n_labelled / n_pseudo, 1.0) if setting == "ssl" else (1.0, n_labelled / n_pseudo)


def part_mean_prompt_loss(logits: torch.Tensor, targets: torch.Tensor, is_labelled: torch.Tensor,
                          w_labelled: float, w_pseudo: float, batch_labelled: int | None = None,
                          batch_pseudo: int | None = None) -> torch.Tensor:
    """``w_L * mean CE over the batch's labelled rows + w_P * mean CE over its pseudolabelled rows``, a part
    absent from the batch adding 0: the released code's loss (``define_loss_function`` with
    ``torch.nn.CrossEntropyLoss()`` per part, ``methods/semi_supervised_learning/textual_fpl.py``:123-165 at
    2094fa5). Unlike :func:`weighted_prompt_loss`, a row's weight depends on how many rows of its part the
    batch drew. ``batch_labelled`` / ``batch_pseudo``: the counts in the GLOBAL batch (each rank of a
    data-parallel run passes them, so the ranks' summed gradients are the one-process gradient); default:
    the rows here."""
    ce = F.cross_entropy(logits, targets, reduction="none")
    n_l = int(is_labelled.sum()) if batch_labelled is None else batch_labelled
    n_p = int((~is_labelled).sum()) if batch_pseudo is None else batch_pseudo
    zero = ce.sum() * 0.0  # keeps the graph (and the dtype) when a part is absent
    labelled = ce[is_labelled].sum() / n_l if n_l else zero
    pseudo = ce[~is_labelled].sum() / n_p if n_p else zero
    return w_labelled * labelled + w_pseudo * pseudo


def candidate_probs(probs: torch.Tensor, candidates: list[int], softmax_over: Literal["all", "candidates"] = "all"
                    ) -> torch.Tensor:
    """The (N, len(candidates)) probabilities pseudolabels are ranked by, from softmax ``probs`` (N, C).

    ``all``: the columns of the softmax over all classes (TRZSL: an image's mass on seen classes lowers its
    rank for every unseen class). ``candidates``: a softmax over the candidates' logits only, what the
    released TRZSL code ranks by (its text features are the unseen classes'); computed by renormalising the
    columns in float64, which equals that softmax; a row whose candidate mass underflowed to 0 gets 0."""
    if softmax_over not in ("all", "candidates"):
        raise ValueError(f"candidate_probs: softmax_over must be 'all' or 'candidates', got {softmax_over!r}")
    picked = probs[:, candidates].double()
    if softmax_over == "all":
        return picked
    mass = picked.sum(dim=1, keepdim=True)
    return torch.where(mass > 0, picked / mass.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(picked))


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)`` (0 when both are 0): TRZSL's summary of seen and unseen accuracy."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)
