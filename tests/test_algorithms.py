"""Each method's wiring on a hand-built batch: which inputs reach which head, with which targets.

The loss functions themselves are checked by hand in test_methods_ssl.py; here the question is whether the
algorithm objects feed them the right tensors (true labels vs teacher pseudolabels, main vs aux head)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zmdist.algorithms import METHODS, PlanContext
from zmdist.algorithms.adamatch import AdaMatch
from zmdist.algorithms.distill import Distill
from zmdist.algorithms.fixmatch import FixMatch
from zmdist.algorithms.pseudolabel import PseudoLabel
from zmdist.algorithms.supervised import Supervised
from zmdist.algorithms.zeromatch import ZeroMatch
from zmdist.methods import ssl
from zmdist.models import DualHead
from zmdist.train.contract import Batch

# the CUDA case is the GPU twin of the CPU case: same code path, marked and skipped without a GPU
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                 reason="needs a CUDA device")])]


def _batch(device: str = "cpu") -> Batch:
    g = torch.Generator().manual_seed(0)
    x = lambda n: torch.randn(n, 4, generator=g)  # noqa: E731
    return Batch(x_lb=x(3), y_lb=torch.tensor([0, 1, 2]), yp_lb=torch.tensor([2, 0, 1]),
                 x_ulb_w=x(4), x_ulb_s=x(4), yp_ulb=torch.tensor([1, 1, 0, 2]),
                 conf_ulb=torch.tensor([0.9, 0.2, 0.6, 1.0]),
                 probs_ulb=F.softmax(torch.randn(4, 3, generator=g), dim=1)).to(torch.device(device))


def _model(dual: bool = False, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return (DualHead(model) if dual else model).to(device)


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def test_supervised_uses_true_labels_on_labelled_inputs():
    """Catches: supervised fed pseudolabels or unlabelled inputs."""
    b, m = _batch(), _model()
    loss, _ = Supervised().loss(m, b, 0, 10, _no_reduce)
    assert loss.item() == pytest.approx(F.cross_entropy(m(b.x_lb), b.y_lb).item(), abs=1e-6)


def test_pseudolabel_masks_by_teacher_confidence():
    """Catches: the confidence threshold ignored or applied with `>` (0.6 is kept at threshold 0.6)."""
    b, m = _batch(), _model()
    loss, terms = PseudoLabel(threshold=0.6).loss(m, b, 0, 10, _no_reduce)
    per = F.cross_entropy(m(b.x_ulb_w), b.yp_ulb, reduction="none")
    assert loss.item() == pytest.approx((per * torch.tensor([1.0, 0, 1, 1])).mean().item(), abs=1e-6)
    assert terms["mask"].item() == 0.75


def test_distill_soft_uses_teacher_probs_hard_uses_pseudolabels():
    """Catches: soft distillation fed one-hot pseudolabels, or hard distillation fed probabilities."""
    b, m = _batch(), _model()
    soft, _ = Distill(soft=True, temperature=2.0).loss(m, b, 0, 10, _no_reduce)
    assert soft.item() == pytest.approx(ssl.distillation_loss(m(b.x_ulb_w), b.probs_ulb, 2.0).item(), abs=1e-6)
    hard, _ = Distill(soft=False).loss(m, b, 0, 10, _no_reduce)
    assert hard.item() == pytest.approx(F.cross_entropy(m(b.x_ulb_w), b.yp_ulb).item(), abs=1e-6)


def test_fixmatch_sup_plus_weighted_consistency():
    """Catches: lambda_u dropped, the strong and weak views swapped, or the labelled term missing."""
    b, m = _batch(), _model()
    loss, terms = FixMatch(p_cutoff=0.3, lambda_u=2.0).loss(m, b, 0, 10, _no_reduce)
    unsup, _ = ssl.fixmatch_unsup(m(b.x_ulb_w), m(b.x_ulb_s), 0.3)
    sup = F.cross_entropy(m(b.x_lb), b.y_lb)
    assert terms["unsup"].item() == pytest.approx(unsup.item(), abs=1e-6) and unsup.item() > 0
    assert loss.item() == pytest.approx(sup.item() + 2.0 * unsup.item(), abs=1e-5)


def test_zeromatch_aux_head_learns_teacher_pseudolabels_not_true_labels():
    """Catches: ZeroMatch's auxiliary head fed the true labels (y_lb) instead of the teacher's
    pseudolabels (yp_lb) for the labelled part, or the main head used for the pseudolabel term."""
    b, m = _batch(), _model(dual=True)
    algo = ZeroMatch(FixMatch(p_cutoff=0.99), lambda_p=1.0, anneal="none")
    loss, terms = algo.loss(m, b, 5, 10, _no_reduce)
    main, aux = m(torch.cat([b.x_lb, b.x_ulb_w]))
    expected = F.cross_entropy(aux, torch.cat([b.yp_lb, b.yp_ulb]))
    wrong = F.cross_entropy(aux, torch.cat([b.y_lb, b.yp_ulb]))
    assert terms["pseudo"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(wrong.item() - expected.item()) > 1e-3  # the batch tells the two apart
    assert abs(F.cross_entropy(main, torch.cat([b.yp_lb, b.yp_ulb])).item() - expected.item()) > 1e-3
    assert terms["sup"].item() == pytest.approx(F.cross_entropy(main[:3], b.y_lb).item(), abs=1e-6)
    loss.backward()
    assert m.aux.weight.grad.abs().sum() > 0


def test_zeromatch_alpha_anneals_over_the_phase():
    """Catches: alpha_t not annealed (the pseudolabel term at full weight on step 0)."""
    b, m = _batch(), _model(dual=True)
    _, first = ZeroMatch(FixMatch(), anneal="linear").loss(m, b, 0, 11, _no_reduce)
    _, mid = ZeroMatch(FixMatch(), anneal="linear").loss(m, b, 5, 11, _no_reduce)
    assert first["alpha"].item() == 0.0 and mid["alpha"].item() == pytest.approx(0.5)
    assert first["loss"].item() == pytest.approx(first["sup"].item() + first["unsup"].item(), abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_adamatch_state_is_restored_on_the_model_device(device):
    """Catches: AdaMatch's marginals rebuilt on the CPU after a resume (fails at the first GPU update) or
    not restored at all (the state after the next step differs from the uninterrupted one's)."""
    b, m = _batch(device), _model(device=device)
    whole = AdaMatch(p_cutoff=0.5)
    whole.loss(m, b, 0, 10, _no_reduce)
    saved = whole.state_dict()
    resumed = AdaMatch(p_cutoff=0.5)
    resumed.load_state_dict(saved, torch.device(device))
    assert resumed.state.p_model.device.type == device
    whole.loss(m, b, 1, 10, _no_reduce)
    resumed.loss(m, b, 1, 10, _no_reduce)
    assert torch.equal(whole.state.p_model, resumed.state.p_model)
    assert torch.equal(whole.state.p_target, resumed.state.p_target)
    fresh = AdaMatch(p_cutoff=0.5)
    fresh.loss(m, b, 1, 10, _no_reduce)
    assert not torch.equal(fresh.state.p_model, whole.state.p_model)


def test_methods_plan_their_phases():
    """Catches: zeromatch's stage 0 selecting on the eval split, stage 1 not starting from stage 0, or a
    registered method that cannot be planned."""
    ctx = PlanContext(num_classes=3, steps=7)
    for name in METHODS.names():
        phases = METHODS.get(name)().phases(ctx)
        assert phases and phases[-1].steps == 7
    stage0, stage1 = METHODS.get("zeromatch")(stage0_steps=5).phases(ctx)
    assert (stage0.name, stage0.steps, stage0.selection, stage0.dual_head) == ("stage0", 5, "holdout_agreement", False)
    assert (stage1.name, stage1.init_from, stage1.selection, stage1.dual_head) == ("stage1", "stage0", "top1", True)
    assert isinstance(stage1.algorithm.ssl_method, AdaMatch)
    assert [p.name for p in METHODS.get("zeromatch")(stage0_steps=0).phases(ctx)] == ["stage1"]
