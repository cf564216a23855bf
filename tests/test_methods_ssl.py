"""ZeroMatch / AdaMatch / FixMatch / distillation loss terms against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from zmdist.methods.ssl import (
    ANN_MODE,
    AdaMatchState,
    adamatch_mask,
    adamatch_unsup,
    consistency_loss,
    cross_entropy,
    distillation_loss,
    distribution_alignment,
    ema_update,
    fixmatch_mask,
    fixmatch_unsup,
    temper,
    zeromatch_alpha,
    zeromatch_loss,
)

# For 2 classes, CE of logits (a, b) against class 0 is log(1 + e^(b - a)).
CE_2_0 = math.log(1 + math.exp(-2))  # logits (2, 0), class 0: 0.126928
CE_0_0 = math.log(2)  # logits (0, 0), either class: 0.693147
CE_0_2 = math.log(1 + math.exp(2))  # logits (2, 0), class 1: 2.126928


def logits_of(*rows):
    """Logits whose softmax is exactly the given probability rows: log p."""
    return torch.tensor(rows, dtype=torch.float32).log()


# ------------------------------------------------------------------------------------ cross-entropy


def test_cross_entropy_hard_soft_weighted_empty():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    # (0.126928 + 0.693147) / 2 = 0.410038
    assert cross_entropy(logits, y).item() == pytest.approx((CE_2_0 + CE_0_0) / 2, abs=1e-6)
    # weights (1, 0): divided by the batch size 2, not by sum(w) = 1 -> 0.063464
    assert cross_entropy(logits, y, torch.tensor([1.0, 0.0])).item() == pytest.approx(CE_2_0 / 2, abs=1e-6)
    # weights (0.5, 1): (0.5 * 0.126928 + 0.693147) / 2 = 0.378305
    w = torch.tensor([0.5, 1.0])
    assert cross_entropy(logits, y, w).item() == pytest.approx((0.5 * CE_2_0 + CE_0_0) / 2, abs=1e-6)
    # soft targets: row 0 (0.5, 0.5) -> 0.5 * 0.126928 + 0.5 * 2.126928 = 1.126928; row 1 (1, 0) -> log 2
    q = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert cross_entropy(logits, q).item() == pytest.approx((0.5 * CE_2_0 + 0.5 * CE_0_2 + CE_0_0) / 2, abs=1e-6)
    # empty batch: exact 0, still differentiable
    empty = torch.zeros(0, 2, requires_grad=True)
    loss = cross_entropy(empty, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError):
        cross_entropy(logits, y, torch.ones(3))


# ------------------------------------------------------------------------------------- distillation


def test_temper_is_power_renormalised():
    # (0.8, 0.2) at T = 2: (sqrt .8, sqrt .2) / sum = (2/3, 1/3) since sqrt(.8 / .2) = 2
    assert temper(torch.tensor([[0.8, 0.2]]), 2.0)[0].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    # T = 0.5 squares: (0.36, 0.16) / 0.52
    assert temper(torch.tensor([[0.6, 0.4]]), 0.5)[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52], abs=1e-6)
    # on softmax(z) it equals softmax(z / T)
    z = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.allclose(temper(z.softmax(-1), 3.0), (z / 3.0).softmax(-1), atol=1e-6)
    with pytest.raises(ValueError):
        temper(z, 0.0)


def test_distillation_zero_when_student_equals_teacher():
    z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    for t in (1.0, 2.0, 4.0):
        assert distillation_loss(z, z.softmax(-1), temperature=t).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_hand_values_two_classes():
    student = torch.zeros(1, 2)  # s = (0.5, 0.5) at any T
    teacher = torch.tensor([[0.8, 0.2]])
    # T = 1: KL = 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5) = 0.376003 - 0.183258 = 0.192745
    kl1 = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(kl1, abs=1e-6)
    # T = 2: t = (2/3, 1/3); KL = 2/3 ln(4/3) + 1/3 ln(2/3) = 0.056633; times T^2 = 4 -> 0.226532
    kl2 = (2 / 3) * math.log(4 / 3) + (1 / 3) * math.log(2 / 3)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * kl2, abs=1e-6)
    # per-sample confidence weights (1, 0) on two identical rows: 0.192745 / 2 (whole-batch mean)
    two = distillation_loss(torch.zeros(2, 2), teacher.repeat(2, 1), 1.0, confidence=torch.tensor([1.0, 0.0]))
    assert two.item() == pytest.approx(kl1 / 2, abs=1e-6)


def test_distillation_gradient_reaches_student_only():
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[0.8, 0.2]], requires_grad=True)
    distillation_loss(student, teacher, 1.0).backward()
    # d KL / d z = s - t = (0.5 - 0.8, 0.5 - 0.2)
    assert student.grad[0].tolist() == pytest.approx([-0.3, 0.3], abs=1e-6)
    assert teacher.grad is None


# ----------------------------------------------------------------------------------------- FixMatch


def test_fixmatch_mask_at_095():
    probs = torch.tensor([[0.96, 0.04], [0.95, 0.05], [0.5, 0.5], [0.02, 0.98], [0.94, 0.06]])
    mask, labels = fixmatch_mask(probs, 0.95)
    assert mask.dtype == torch.float32 and labels.dtype == torch.long
    assert mask.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]  # >= : 0.95 itself passes
    assert labels[[0, 1, 3, 4]].tolist() == [0, 0, 1, 0]


def test_consistency_loss_divides_by_batch_size():
    strong = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 0])
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # (0.126928 + 0.693147) / 4 = 0.205019, not / sum(mask) = 2 (0.410038)
    assert consistency_loss(strong, labels, mask).item() == pytest.approx((CE_2_0 + CE_0_0) / 4, abs=1e-6)
    assert consistency_loss(strong, labels, torch.zeros(4)).item() == 0.0


def test_fixmatch_unsup_hard_and_soft():
    weak = logits_of([0.96, 0.04], [0.6, 0.4]).requires_grad_()
    strong = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss, mask = fixmatch_unsup(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0]
    assert loss.item() == pytest.approx(CE_2_0 / 2, abs=1e-6)  # 0.063464
    loss.backward()
    assert weak.grad is None and strong.grad is not None  # no gradient through the pseudolabel
    # soft, T = 0.5: target (0.96^2, 0.04^2) / 0.9232 = (0.998267, 0.001733)
    q0, q1 = 0.96**2 / (0.96**2 + 0.04**2), 0.04**2 / (0.96**2 + 0.04**2)
    soft, _ = fixmatch_unsup(weak, strong, threshold=0.95, hard=False, temperature=0.5)
    assert soft.item() == pytest.approx((q0 * CE_2_0 + q1 * CE_0_2) / 2, abs=1e-6)


# ----------------------------------------------------------------------------------------- AdaMatch


def test_distribution_alignment_two_classes():
    p = torch.tensor([[0.6, 0.4]])
    p_model, p_target = torch.tensor([0.75, 0.25]), torch.tensor([0.5, 0.5])
    # p * p_target / p_model = (0.6 * 0.5 / 0.75, 0.4 * 0.5 / 0.25) = (0.4, 0.8) -> (1/3, 2/3)
    assert distribution_alignment(p, p_model, p_target, eps=0.0)[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-6)
    assert distribution_alignment(p, p_model, p_target)[0].tolist() == pytest.approx([1 / 3, 2 / 3], abs=1e-5)
    # equal marginals: unchanged
    assert distribution_alignment(p, p_target, p_target)[0].tolist() == pytest.approx([0.6, 0.4], abs=1e-6)


def test_adamatch_relative_threshold():
    lb = torch.tensor([[0.8, 0.2], [0.4, 0.6]])  # max probs 0.8, 0.6 -> mean 0.7 -> tau = 0.95 * 0.7 = 0.665
    ulb = torch.tensor([[0.67, 0.33], [0.66, 0.34], [0.3, 0.7]])
    mask, labels = adamatch_mask(ulb, lb, p_cutoff=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    assert labels.tolist() == [0, 0, 1]


def test_adamatch_threshold_is_inclusive():
    """Catches: `>=` turned into `>` in AdaMatch's relative threshold (a sample exactly at tau is kept)."""
    lb = torch.tensor([[0.75, 0.25]])  # tau = 1.0 * 0.75, exactly representable
    mask, _ = adamatch_mask(torch.tensor([[0.75, 0.25], [0.25, 0.75], [0.7, 0.3]]), lb, p_cutoff=1.0)
    assert mask.tolist() == [1.0, 1.0, 0.0]
    mask, _ = fixmatch_mask(torch.tensor([[0.75, 0.25], [0.7, 0.3]]), threshold=0.75)
    assert mask.tolist() == [1.0, 0.0]


def test_adamatch_first_step_starts_from_the_first_batch_like_usb():
    """Catches: distribution alignment starting uniform by default (USB seeds the model marginal with the
    first unlabelled batch mean and keeps the target marginal uniform)."""
    ulb_weak = logits_of([0.9, 0.1], [0.6, 0.4])  # mean (0.75, 0.25)
    lb_weak = logits_of([0.8, 0.2], [0.4, 0.6])  # mean (0.6, 0.4)
    strong = torch.zeros(2, 2)
    _, _, state = adamatch_unsup(ulb_weak, strong, lb_weak, None, momentum=0.5)
    # p_model = first batch mean, then EMA with the same mean: unchanged; p_target = 0.5*0.5 + 0.5*(0.6, 0.4)
    assert state.p_model.tolist() == pytest.approx([0.75, 0.25])
    assert state.p_target.tolist() == pytest.approx([0.55, 0.45])
    _, _, uniform = adamatch_unsup(ulb_weak, strong, lb_weak, None, momentum=0.5, init="uniform")
    assert uniform.p_model.tolist() == pytest.approx([0.625, 0.375])
    # the first batch mean that seeds p_model is the rank-averaged one
    _, _, reduced = adamatch_unsup(ulb_weak, strong, lb_weak, None, momentum=0.5,
                                   reduce_mean=lambda m: torch.full_like(m, 0.5))
    assert reduced.p_model.tolist() == pytest.approx([0.5, 0.5])


def test_ema_update_is_pure():
    state = torch.tensor([0.5, 0.5])
    new = ema_update(state, torch.tensor([1.0, 0.0]), momentum=0.9)
    assert new.tolist() == pytest.approx([0.55, 0.45])  # 0.9 * 0.5 + 0.1 * (1, 0)
    assert state.tolist() == [0.5, 0.5]


def test_adamatch_state_uniform_update_and_checkpoint():
    s = AdaMatchState.uniform(4)
    assert s.p_model.tolist() == [0.25] * 4 and s.p_target.tolist() == [0.25] * 4
    s2 = s.update(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0]), momentum=0.5)
    assert s2.p_model.tolist() == pytest.approx([0.625, 0.125, 0.125, 0.125])
    assert s2.p_target.tolist() == pytest.approx([0.125, 0.625, 0.125, 0.125])
    assert s.p_model.tolist() == [0.25] * 4  # pure
    sd = s2.state_dict()
    assert set(sd) == {"p_model", "p_target"}
    s.load_state_dict(sd)
    assert torch.equal(s.p_model, s2.p_model) and torch.equal(s.p_target, s2.p_target)
    sd["p_model"][0] = 9.0  # load copies: later edits of the dict do not leak in
    assert s.p_model[0].item() == pytest.approx(0.625)
    with pytest.raises(ValueError):
        s.load_state_dict({"p_model": torch.zeros(3), "p_target": torch.zeros(3)})


def test_adamatch_unsup_by_hand():
    ulb_weak = logits_of([0.9, 0.1], [0.6, 0.4])  # mean (0.75, 0.25)
    lb_weak = logits_of([0.8, 0.2], [0.4, 0.6])  # mean (0.6, 0.4); tau = 0.95 * 0.7 = 0.665
    strong = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    loss, mask, state = adamatch_unsup(ulb_weak, strong, lb_weak, AdaMatchState.uniform(2), momentum=0.5)
    # update first: p_model = 0.5 * 0.5 + 0.5 * (0.75, 0.25) = (0.625, 0.375); p_target = (0.55, 0.45)
    assert state.p_model.tolist() == pytest.approx([0.625, 0.375])
    assert state.p_target.tolist() == pytest.approx([0.55, 0.45])
    # ratio (0.55 / 0.625, 0.45 / 0.375) = (0.88, 1.2)
    # row 0: (0.792, 0.12) -> max 0.792 / 0.912 = 0.8684 >= 0.665 -> kept, label 0
    # row 1: (0.528, 0.48) -> max 0.528 / 1.008 = 0.5238 < 0.665 -> dropped
    assert mask.tolist() == [1.0, 0.0]
    assert loss.item() == pytest.approx(CE_2_0 / 2, abs=1e-6)
    # reduce_mean is applied to both batch means before the EMA
    _, _, reduced = adamatch_unsup(
        ulb_weak, strong, lb_weak, AdaMatchState.uniform(2), momentum=0.5, reduce_mean=lambda m: torch.full_like(m, 0.5)
    )
    assert reduced.p_model.tolist() == pytest.approx([0.5, 0.5])
    assert reduced.p_target.tolist() == pytest.approx([0.5, 0.5])


# ---------------------------------------------------------------------------------------- ZeroMatch


def test_zeromatch_alpha_annealing():
    assert zeromatch_alpha(0, 101, "linear") == 0.0
    assert zeromatch_alpha(50, 101, "linear") == pytest.approx(0.5)
    assert zeromatch_alpha(100, 101, "linear") == 1.0  # last step reaches 1
    assert zeromatch_alpha(500, 101, "linear") == 1.0  # held past the end
    assert zeromatch_alpha(0, 1, "linear") == 1.0
    assert [zeromatch_alpha(s, 101, "none") for s in (0, 50, 100)] == [1.0, 1.0, 1.0]
    assert ANN_MODE == {0: "none", 1: "linear"}
    with pytest.raises(ValueError):
        zeromatch_alpha(0, 10, "cosine")  # type: ignore[arg-type]


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.main = nn.Linear(4, 2)
        self.aux = nn.Linear(4, 2)


def _forward(model, n_lb=2, n_ulb=3):
    g = torch.Generator().manual_seed(0)
    x_lb, x_ulb_w, x_ulb_s = (torch.randn(n, 3, generator=g) for n in (n_lb, n_ulb, n_ulb))
    f_lb, f_w, f_s = model.backbone(x_lb), model.backbone(x_ulb_w), model.backbone(x_ulb_s)
    main_lb = model.main(f_lb)
    aux = model.aux(torch.cat([f_lb, f_w]))
    # relaxed cutoff so some samples pass and L_u has a gradient
    unsup, _, _ = adamatch_unsup(model.main(f_w), model.main(f_s), main_lb, AdaMatchState.uniform(2), p_cutoff=0.1)
    y_lb = torch.tensor([0, 1])
    yp = torch.tensor([1, 1, 0, 1, 0])
    return main_lb, y_lb, aux, yp, unsup


def _grads(module):
    return [p.grad for p in module.parameters()]


def _nonzero(grads):
    return all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def _absent(grads):
    return all(g is None or torch.all(g == 0) for g in grads)


def test_pseudolabels_reach_the_model_only_through_the_aux_head():
    torch.manual_seed(0)
    model = TinyModel()
    out = zeromatch_loss(*_forward(model), alpha=0.5)
    out["pseudo"].backward()
    assert _absent(_grads(model.main))
    assert _nonzero(_grads(model.aux)) and _nonzero(_grads(model.backbone))

    for term in ("sup", "unsup"):
        model.zero_grad(set_to_none=True)
        out = zeromatch_loss(*_forward(model), alpha=0.5)
        assert out[term].item() > 0
        out[term].backward()
        assert _absent(_grads(model.aux)), term
        assert _nonzero(_grads(model.main)) and _nonzero(_grads(model.backbone)), term


def test_zeromatch_total_composition():
    torch.manual_seed(0)
    model = TinyModel()
    main_lb, y_lb, aux, yp, unsup = _forward(model)
    out = zeromatch_loss(main_lb, y_lb, aux, yp, unsup, alpha=0.0, lambda_p=1.0, lambda_u=0.7)
    assert out["total"].item() == (out["sup"] + 0.7 * out["unsup"]).item()  # exact
    out["total"].backward()
    assert all(g is not None and torch.all(g == 0) for g in _grads(model.aux))  # in the graph, zero gradient
    out = zeromatch_loss(main_lb, y_lb, aux, yp, unsup, alpha=0.25, lambda_p=2.0, lambda_u=0.7)
    expected = out["sup"] + 2.0 * 0.25 * out["pseudo"] + 0.7 * out["unsup"]
    assert out["total"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert out["pseudo"].item() == pytest.approx(cross_entropy(aux, yp).item())
    # no unsupervised term: L_u = 0
    none = zeromatch_loss(main_lb, y_lb, aux, yp, None, alpha=1.0)
    assert none["unsup"].item() == 0.0
    assert none["total"].item() == pytest.approx((none["sup"] + none["pseudo"]).item(), abs=1e-6)
    with pytest.raises(ValueError):
        zeromatch_loss(main_lb, y_lb, aux, yp[:3], unsup, alpha=1.0)
    with pytest.raises(ValueError):
        zeromatch_loss(main_lb, y_lb, main_lb, y_lb, unsup, alpha=1.0)
