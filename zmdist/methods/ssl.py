"""Loss terms for distillation from zero-shot pseudolabels and for ZeroMatch / AdaMatch / FixMatch.

Small pure functions on tensors: they know nothing of ranks, files, optimisers or backends. The engine
computes logits, calls these, logs the named terms and (across ranks) reduces what it chooses to reduce.
Facts behind them: ``docs/methods.md`` section 1. Unit-tested against hand-computed values in
tests/test_methods_ssl.py.

Conventions, shared by every loss here:

* Reduction: per-sample losses are averaged over the WHOLE batch, ``mean_i(w_i * l_i)``, also when
  per-sample weights ``w`` (a confidence mask or soft confidences) are given. A batch where few samples are
  trusted therefore contributes a proportionally smaller loss (the USB/FixMatch convention for masks;
  not ``sum(w l) / sum(w)``, which would blow a single trusted sample up to full weight). An empty batch
  gives an exact 0 that is still attached to the graph.
* Targets: a long tensor ``(N,)`` of class indices (hard) or a float tensor ``(N, C)`` of probabilities
  (soft); both go through :func:`cross_entropy`.
* Tempering a probability vector by ``T``: ``p ** (1 / T)`` renormalised (= ``softmax(log p / T)``). For
  ``T < 1`` it sharpens, for ``T > 1`` it flattens; on a softmax of logits it equals the softmax of the
  logits divided by ``T``.
* Things that only steer training (weak-view probabilities, masks, pseudolabels, EMA state) are computed
  without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Anneal = Literal["linear", "none"]
DAInit = Literal["first_batch", "uniform"]

#: The reference code's ``ann_mode`` integers in this module's names: 0 = alpha fixed at 1, 1 = linear ramp.
ANN_MODE: dict[int, Anneal] = {0: "none", 1: "linear"}

_TINY = 1e-12


# --------------------------------------------------------------------------------------------- basics


def _weighted_mean(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    """``mean_i(w_i * l_i)`` over the whole batch (see module docstring); exact 0 on an empty batch."""
    if weights is not None:
        if weights.shape != per_sample.shape:
            raise ValueError(f"weights shape {tuple(weights.shape)} != per-sample loss shape {tuple(per_sample.shape)}")
        per_sample = per_sample * weights.to(per_sample.dtype)
    if per_sample.numel() == 0:
        return per_sample.sum()
    return per_sample.mean()


def cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy ``mean_i(w_i * CE_i)`` of ``(N, C)`` logits against hard or soft targets.

    ``CE_i = -log softmax(z_i)[y_i]`` for hard targets (long ``(N,)``) and
    ``CE_i = -sum_c q_ic log softmax(z_i)_c`` for soft targets (float ``(N, C)``). ``weights`` (``(N,)``,
    e.g. a 0/1 confidence mask or soft confidences) multiply the per-sample terms; the sum is divided by
    N, not by ``sum(w)``, so the loss scale follows how much of the batch is trusted.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    if not targets.is_floating_point():
        per_sample = -log_p.gather(1, targets.long().view(-1, 1)).squeeze(1)
    else:
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}")
        per_sample = -(targets.float() * log_p).sum(dim=-1)
    return _weighted_mean(per_sample, weights)


def temper(probs: Tensor, temperature: float) -> Tensor:
    """Re-temper probabilities: ``p ** (1 / T)`` renormalised over the last axis, computed as
    ``softmax(log(max(p, 1e-12)) / T)`` for stability.

    Why: stored teacher outputs are probabilities, not logits; for ``p = softmax(z)`` this is exactly
    ``softmax(z / T)``, the tempered teacher of Hinton-style KD, and with ``T < 1`` it is the sharpening
    used for soft pseudolabels.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.softmax(probs.float().clamp_min(_TINY).log() / temperature, dim=-1)


def distillation_loss(
    student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0, confidence: Tensor | None = None
) -> Tensor:
    """Soft knowledge distillation: ``T^2 * mean_i(w_i * KL(t_i || s_i))``.

    ``t = temper(teacher_probs, T)`` (the stored teacher probabilities re-tempered, see :func:`temper`),
    ``s = softmax(student_logits / T)``, ``KL(t || s) = sum_c t_c (log t_c - log s_c)`` (0 when student
    and teacher agree). The ``T^2`` factor keeps gradient magnitudes comparable across temperatures
    (Hinton et al.). ``confidence`` (``(N,)``) optionally weights samples, e.g. by the teacher's top
    probability, with the module's whole-batch mean. Teacher probabilities get no gradient.

    Note for CLIP teachers: the stored probabilities already include CLIP's ``logit_scale`` (about 100), so
    ``T`` tempers ``softmax(logit_scale * cos)``, not raw cosines. Hard-label distillation (stage 0 of
    ZeroMatch) is plain :func:`cross_entropy` on the teacher's argmax.
    """
    t = temper(teacher_probs.detach(), temperature)
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_sample = (t * (t.clamp_min(_TINY).log() - log_s)).sum(dim=-1)
    return (temperature**2) * _weighted_mean(per_sample, confidence)


def ema_update(state: Tensor, batch_mean: Tensor, momentum: float = 0.999) -> Tensor:
    """Exponential moving average step ``momentum * state + (1 - momentum) * batch_mean``; returns a new
    tensor and leaves ``state`` untouched. Linear in its inputs, so averaging the result over ranks equals
    one update with the rank-averaged ``batch_mean`` when every rank starts from the same ``state``."""
    return momentum * state + (1.0 - momentum) * batch_mean.to(state.dtype)


# ------------------------------------------------------------------------------------------- FixMatch


@torch.no_grad()
def fixmatch_mask(probs_weak: Tensor, threshold: float = 0.95) -> tuple[Tensor, Tensor]:
    """FixMatch confidence filter: ``mask_i = 1[max_c p_ic >= threshold]`` (float) and the hard pseudolabel
    ``argmax_c p_ic`` (long), from weak-view probabilities."""
    max_probs, labels = probs_weak.max(dim=-1)
    return (max_probs >= threshold).float(), labels


def consistency_loss(logits_strong: Tensor, pseudo_labels: Tensor, mask: Tensor) -> Tensor:
    """Unlabelled consistency term ``(1 / B) * sum_i mask_i * CE(z_strong_i, yhat_i)``.

    Divided by the unlabelled batch size B, not by ``sum(mask)`` (the USB/FixMatch convention): early in
    training, when few samples pass the threshold, the term is small instead of being driven by a handful
    of samples. ``pseudo_labels`` may be hard (long ``(B,)``) or soft (``(B, C)``); they get no gradient.
    """
    return cross_entropy(logits_strong, pseudo_labels.detach(), weights=mask.detach())


def fixmatch_unsup(
    logits_ulb_weak: Tensor,
    logits_ulb_strong: Tensor,
    threshold: float = 0.95,
    hard: bool = True,
    temperature: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """FixMatch unlabelled loss; returns ``(loss, mask)``.

    ``p = softmax(z_weak)`` (detached); mask = ``max p >= threshold``; target = ``argmax p`` when ``hard``
    (the default, where ``temperature`` plays no part) or ``temper(p, temperature)`` otherwise; loss =
    :func:`consistency_loss` on the strong view. The mask always uses the untempered ``p``.

    Soft targets and USB: USB's FixMatch hands the pseudo-labelling hook probabilities with
    ``softmax=False``, and that hook then returns them unchanged, so USB's soft targets are ``p`` itself and
    its ``T = 0.5`` default has no effect. Here soft targets are sharpened by ``temperature``; pass
    ``temperature=1.0`` to get USB's behaviour.
    """
    probs = F.softmax(logits_ulb_weak.detach().float(), dim=-1)
    mask, labels = fixmatch_mask(probs, threshold)
    targets = labels if hard else temper(probs, temperature)
    return consistency_loss(logits_ulb_strong, targets, mask), mask


# ------------------------------------------------------------------------------------------- AdaMatch


@torch.no_grad()
def distribution_alignment(probs_weak: Tensor, p_model: Tensor, p_target: Tensor, eps: float = 1e-6) -> Tensor:
    """AdaMatch distribution alignment: ``p~ = normalize(p * (p_target + eps) / (p_model + eps))``.

    Why: rescales the unlabelled predictions so that their running class marginal (``p_model``) moves
    towards that of the labelled data (``p_target``), countering the drift of pseudolabels towards the
    classes the model already favours. ``normalize`` divides each row by its sum.
    """
    aligned = probs_weak * (p_target + eps) / (p_model + eps)
    return aligned / aligned.sum(dim=-1, keepdim=True)


@torch.no_grad()
def adamatch_mask(probs_aligned: Tensor, probs_lb_weak: Tensor, p_cutoff: float = 0.95) -> tuple[Tensor, Tensor]:
    """AdaMatch relative confidence threshold; returns ``(mask float, pseudo_labels long)``.

    ``tau = p_cutoff * mean_j(max_c p_lb_jc)`` over the labelled batch (unaligned probabilities), and
    ``mask_i = 1[max_c p~_ic >= tau]``, ``yhat_i = argmax_c p~_ic``. Why: the threshold follows the model's
    own confidence on data whose labels it is fitted to, so it is lenient early and strict later, and
    does not need retuning when the number of classes changes what "confident" means.
    """
    tau = p_cutoff * probs_lb_weak.max(dim=-1).values.mean()
    max_probs, labels = probs_aligned.max(dim=-1)
    return (max_probs >= tau).float(), labels


@dataclass
class AdaMatchState:
    """Running class marginals of AdaMatch's distribution alignment.

    ``p_model``: EMA of the mean weak-view prediction on unlabelled batches; ``p_target``: EMA of the mean
    prediction on labelled batches (the model's predictions, not the labels; the reference code's
    ``p_target_type='model'``). How they start (:meth:`initial`): USB's AdaMatch seeds ``p_model`` with the
    first unlabelled batch mean and ``p_target`` uniform (``"first_batch"``, the default); ``"uniform"``
    starts both at ``1/C``, which keeps the alignment ratio at 1 before any data is seen.
    The tensors are explicit so the engine can checkpoint them and all-reduce them across ranks.
    """

    p_model: Tensor
    p_target: Tensor

    @classmethod
    def uniform(cls, num_classes: int, device: torch.device | str | None = None) -> "AdaMatchState":
        """Both marginals ``1/C``, float32."""
        u = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float32, device=device)
        return cls(p_model=u.clone(), p_target=u.clone())

    @classmethod
    def initial(cls, mean_ulb: Tensor, init: DAInit = "first_batch") -> "AdaMatchState":
        """The state before the first update, given the first (rank-averaged) unlabelled batch mean.

        ``"first_batch"`` (USB): ``p_model = mean_ulb``, ``p_target`` uniform, so the first EMA update keeps
        ``p_model`` at exactly that mean. ``"uniform"``: both ``1/C``."""
        if init not in ("first_batch", "uniform"):
            raise ValueError(f"init must be 'first_batch' or 'uniform', got {init!r}")
        state = cls.uniform(mean_ulb.shape[-1], device=mean_ulb.device)
        if init == "first_batch":
            state.p_model = mean_ulb.detach().float().clone()
        return state

    def update(self, mean_ulb: Tensor, mean_lb: Tensor, momentum: float = 0.999) -> "AdaMatchState":
        """New state after one step: each marginal gets :func:`ema_update` with the batch-mean prediction
        (``mean_ulb``, ``mean_lb``: ``(C,)``). Pure: ``self`` is unchanged."""
        return AdaMatchState(
            p_model=ema_update(self.p_model, mean_ulb.detach(), momentum),
            p_target=ema_update(self.p_target, mean_lb.detach(), momentum),
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of both tensors, keyed ``p_model`` and ``p_target``."""
        return {"p_model": self.p_model.detach().clone(), "p_target": self.p_target.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replace both tensors (in this object) by copies from :meth:`state_dict` output; shapes must match."""
        for key in ("p_model", "p_target"):
            new = state[key]
            old = getattr(self, key)
            if new.shape != old.shape:
                raise ValueError(f"{key}: shape {tuple(new.shape)} != {tuple(old.shape)}")
            setattr(self, key, new.detach().to(device=old.device, dtype=old.dtype).clone())


def adamatch_unsup(
    logits_ulb_weak: Tensor,
    logits_ulb_strong: Tensor,
    logits_lb_weak: Tensor,
    state: AdaMatchState | None,
    p_cutoff: float = 0.95,
    momentum: float = 0.999,
    hard: bool = True,
    temperature: float = 0.5,
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
    init: DAInit = "first_batch",
) -> tuple[Tensor, Tensor, AdaMatchState]:
    """AdaMatch unlabelled loss (ZeroMatch's ``L_u``); returns ``(loss, mask, new_state)``.

    1. ``p = softmax(z_ulb_weak)``, ``p_lb = softmax(z_lb_weak)`` (detached; ``z_lb_weak`` are the main
       head's logits on the labelled batch).
    2. ``state' = state.update(mean_i p_i, mean_j p_lb_j)``; ``reduce_mean``, if given (e.g. an all-reduce
       average across ranks), is applied to both batch means first so all ranks keep one state. On the
       first step ``state`` is None and starts as ``AdaMatchState.initial(mean_i p_i, init)``.
    3. ``p~ = distribution_alignment(p, state'.p_model, state'.p_target)`` (update first, then align, as in
       the reference code).
    4. ``mask, yhat = adamatch_mask(p~, p_lb, p_cutoff)``.
    5. loss = :func:`consistency_loss` on the strong view against ``yhat`` (``hard``; ``temperature``
       unused) or ``temper(p~, temperature)``. USB's AdaMatch, like its FixMatch, passes probabilities with
       ``softmax=False``, so its soft targets are ``p~`` unsharpened and ``T`` has no effect there;
       ``temperature=1.0`` reproduces that.
    """
    probs_ulb = F.softmax(logits_ulb_weak.detach().float(), dim=-1)
    probs_lb = F.softmax(logits_lb_weak.detach().float(), dim=-1)
    mean_ulb, mean_lb = probs_ulb.mean(dim=0), probs_lb.mean(dim=0)
    if reduce_mean is not None:
        mean_ulb, mean_lb = reduce_mean(mean_ulb), reduce_mean(mean_lb)
    if state is None:
        state = AdaMatchState.initial(mean_ulb, init)
    new_state = state.update(mean_ulb, mean_lb, momentum)
    aligned = distribution_alignment(probs_ulb, new_state.p_model, new_state.p_target)
    mask, labels = adamatch_mask(aligned, probs_lb, p_cutoff)
    targets = labels if hard else temper(aligned, temperature)
    return consistency_loss(logits_ulb_strong, targets, mask), mask, new_state


# ------------------------------------------------------------------------------------------ ZeroMatch


def zeromatch_alpha(step: int, total_steps: int, anneal: Anneal = "linear") -> float:
    """Weight ``alpha_t`` of ZeroMatch's pseudolabel term at 0-based ``step`` of ``total_steps``.

    ``"linear"`` (reference ``ann_mode=1``): ``alpha_t = clamp(step / (total_steps - 1), 0, 1)``, so 0 at
    the first step and exactly 1 at the last, like ``linspace(0, 1, total_steps)[step]`` in the reference
    code, and held at 1 past the end. ``"none"`` (reference ``ann_mode=0``): ``alpha_t = 1`` throughout.
    The linear ramp is the default (docs/methods.md section 1: alpha_t rises linearly from 0 to 1).
    """
    if anneal == "none":
        return 1.0
    if anneal != "linear":
        raise ValueError(f"anneal must be 'linear' or 'none', got {anneal!r}")
    if total_steps <= 1:
        return 1.0
    return float(min(1.0, max(0.0, step / (total_steps - 1))))


def zeromatch_loss(
    main_lb_logits: Tensor,
    y_lb: Tensor,
    aux_logits: Tensor,
    pseudolabels: Tensor,
    unsup_loss: Tensor | None,
    alpha: float,
    lambda_p: float = 1.0,
    lambda_u: float = 1.0,
    pseudo_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """ZeroMatch stage-1 objective ``L = L_sup + lambda_p * alpha * L_p + lambda_u * L_u``; returns the
    named terms ``{"sup", "pseudo", "unsup", "total"}`` (unweighted terms plus the weighted total).

    * ``L_sup = CE(main(x_lb), y_lb)``: ``main_lb_logits`` from the MAIN head on the labelled batch.
    * ``L_p = CE(aux([x_lb; weak(x_ulb)]), [yp_lb; yp_ulb])``: ``aux_logits`` from the AUXILIARY head on the
      labelled batch followed by the weak unlabelled batch, ``pseudolabels`` the teacher's labels for the
      same rows (hard long ``(N,)`` or soft ``(N, C)``), optional ``pseudo_weights`` per row (whole-batch
      mean). Pseudolabels enter ONLY here, so they reach the model only through the aux head (and the
      shared backbone); the main head, which is evaluated, sees true labels and its own consistency
      targets only.
    * ``L_u``: precomputed consistency loss on the main head (e.g. :func:`adamatch_unsup`); ``None``
      means 0.

    The pseudolabel term is always part of the graph, multiplied by ``lambda_p * alpha`` even when that is
    0, so DDP sees gradients (zeros) for the aux head at every step; since ``0 * L_p`` is exactly 0 for a
    finite ``L_p``, ``total`` then equals ``L_sup + lambda_u * L_u`` exactly.
    """
    if aux_logits.shape[0] != pseudolabels.shape[0]:
        raise ValueError(f"aux_logits has {aux_logits.shape[0]} rows but pseudolabels {pseudolabels.shape[0]}")
    if aux_logits is main_lb_logits:
        raise ValueError("aux_logits must come from the auxiliary head, not the main head")
    sup = cross_entropy(main_lb_logits, y_lb)
    pseudo = cross_entropy(aux_logits, pseudolabels.detach(), weights=pseudo_weights)
    unsup = sup.new_zeros(()) if unsup_loss is None else unsup_loss
    total = sup + (lambda_p * alpha) * pseudo + lambda_u * unsup
    return {"sup": sup, "pseudo": pseudo, "unsup": unsup, "total": total}
