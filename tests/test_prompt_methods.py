"""The pure parts of prompt tuning (zmdist/methods/prompting.py) against hand-worked values and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from zmdist.methods.prompting import (candidate_probs, grip_k, harmonic_mean, loss_weights, part_mean_prompt_loss,
                                      released_loss_weights, top_k_per_class, weighted_prompt_loss)


def P(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_top_k_hand_worked_overflow_goes_to_next_class_and_short_classes_keep_what_they_get():
    """Class 0 is everyone's favourite but holds 2: it keeps its 2 strongest (rows 3: .8, 0: .7); rows 1 and 2
    move to class 1 (their second choice); class 2 has one candidate only (fewer than K). Kills: keeping
    the first-come instead of the strongest, dropping displaced rows instead of moving them on."""
    probs = P([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    assert top_k_per_class(probs, 2) == {0: [0, 3], 1: [1, 2], 2: [4]}


def test_top_k_a_displaced_image_displaces_in_turn_a_chain():
    """K = 1. Row 0 sits in class 0 until row 1 (stronger there) takes the seat; row 0 moves to class 1 and
    beats row 2 there (0.4 > 0.39), so row 2 moves to its next class, 2. Kills: no chain (row 0 or row 2
    left out), a displaced image re-trying its argmax."""
    probs = P([[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.25, 0.39, 0.36]])
    assert top_k_per_class(probs, 1) == {0: [1], 1: [0], 2: [2]}


def test_top_k_ties_go_to_the_lower_row_and_the_lower_class():
    """Equal probabilities: an image tries the lower class index first; a class prefers the lower row.
    Row 2 loses both tied seats and stays out (one image per list, none in two). Kills: tied classes tried
    in reverse index order (a flipped ascending sort), an image placed twice."""
    assert top_k_per_class(P([[0.5, 0.5], [0.5, 0.5]]), 1) == {0: [0], 1: [1]}
    assert top_k_per_class(P([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]]), 1) == {0: [0], 1: [1]}


def test_top_k_edge_cases_k0_empty_and_bad_input():
    assert top_k_per_class(P([[0.2, 0.8]]), 0) == {0: [], 1: []}
    assert top_k_per_class(torch.zeros(0, 3), 4) == {0: [], 1: [], 2: []}
    with pytest.raises(ValueError, match="must be"):
        top_k_per_class(torch.zeros(3), 1)


def _stable_assignments(probs: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Brute force: every assignment (row -> class or -1) with <= k rows per class and no blocking pair
    (a row and a class it prefers to its own where the class has a free seat or a weaker member)."""
    n, c = probs.shape
    found = []
    for assign in itertools.product(range(-1, c), repeat=n):
        members = {cls: [r for r in range(n) if assign[r] == cls] for cls in range(c)}
        if any(len(m) > k for m in members.values()):
            continue
        blocked = False
        for r in range(n):
            own = probs[r, assign[r]] if assign[r] >= 0 else -1.0
            for cls in range(c):
                if cls == assign[r] or probs[r, cls] <= own:
                    continue
                if len(members[cls]) < k or any(probs[m, cls] < probs[r, cls] for m in members[cls]):
                    blocked = True
                    break
            if blocked:
                break
        if not blocked:
            found.append(assign)
    return found


@pytest.mark.parametrize("seed", range(6))
def test_top_k_is_the_stable_assignment_every_image_likes_best_by_brute_force(seed):
    """On random untied probabilities (5 rows, 3 classes, K = 1 or 2): the result is stable, and every row
    gets a class at least as probable for it as in ANY stable assignment (enumerated). Kills: a greedy
    pass that never revisits a displaced image, argmax-only assignment."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(5, 3, generator=g, dtype=torch.float64).softmax(dim=1)
    k = 1 + seed % 2
    result = top_k_per_class(probs, k)
    assign = [-1] * 5
    for cls, rows in result.items():
        for r in rows:
            assign[r] = cls
    stable = _stable_assignments(probs, k)
    assert tuple(assign) in stable

    def value(a: int, r: int) -> float:
        return float(probs[r, a]) if a >= 0 else -1.0

    for other in stable:
        assert all(value(assign[r], r) >= value(other[r], r) for r in range(5))


def test_top_k_does_not_depend_on_row_order_and_fills_every_seat_it_can():
    """Permuting rows permutes the answer; with K * C >= N every row is placed; lists never overlap and
    hold at most K rows. Kills: order-dependent greedy, a row in two lists."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 7, generator=g).softmax(dim=1)
    result = top_k_per_class(probs, 20)
    rows = [r for rs in result.values() for r in rs]
    assert len(rows) == len(set(rows)) and all(len(rs) <= 20 for rs in result.values())
    assert len(rows) == 140  # 7 x 20 seats < 200 rows: all seats full
    full = top_k_per_class(probs, 29)  # 203 seats: everyone placed
    assert sorted(r for rs in full.values() for r in rs) == list(range(200))
    perm = torch.randperm(200, generator=g)
    permuted = top_k_per_class(probs[perm], 20)
    assert {c: sorted(int(perm[r]) for r in rs) for c, rs in permuted.items()} == result


def test_grip_k_schedule_hand_computed():
    """|U| = 1346, C = 10 (the digits' train split): ceil(134.6 * (t+1) / 10) = 14, 27, ..., 135 = ceil(134.6),
    then capped. Kills: floor rounding (last round would leave 6 images out), a missing cap, t from 1."""
    assert [grip_k(t, 1346, 10) for t in range(10)] == [14, 27, 41, 54, 68, 81, 95, 108, 122, 135]
    assert grip_k(15, 1346, 10) == 135
    assert [grip_k(t, 100, 10) for t in (0, 4, 9)] == [1, 5, 10]
    assert [grip_k(t, 100, 10, rounds=4) for t in range(4)] == [3, 5, 8, 10]
    assert grip_k(0, 5, 10) == 1 and grip_k(0, 0, 3) == 0
    with pytest.raises(ValueError, match="from 0"):
        grip_k(-1, 10, 2)


def test_grip_last_round_pseudolabels_the_whole_pool():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(1346, 10, generator=g).softmax(dim=1)
    placed = top_k_per_class(probs, grip_k(9, 1346, 10))
    assert sum(len(r) for r in placed.values()) == 1346


def test_loss_weights_per_setting():
    """docs/methods.md section 2: SSL |P|/|L| * CE_L + CE_P (multimodal sqrt); TRZSL CE_L + |L|/|P| * CE_P; UL CE_P."""
    assert loss_weights("ssl", 20, 100) == (5.0, 1.0)
    assert loss_weights("ssl", 20, 100, multimodal=True) == (math.sqrt(5.0), 1.0)
    assert loss_weights("trzsl", 20, 100) == (1.0, 0.2)
    assert loss_weights("ul", 0, 100) == (0.0, 1.0)
    assert loss_weights("ssl", 20, 0) == (1.0, 0.0)  # strategy none: plain CoOp
    with pytest.raises(ValueError, match="needs labelled"):
        loss_weights("ssl", 0, 10)


def test_weighted_loss_hand_computed_and_global_batch_split():
    """Zero logits over 2 classes: every CE is ln 2. Weights (2, 1) on rows [L, P, P]: (2 + 1 + 1) ln2 / 3.
    Two halves with batch_total=3 add up to the whole. Kills: a mean per part, dividing by the local rows."""
    logits = torch.zeros(3, 2)
    targets = torch.tensor([0, 1, 0])
    lab = torch.tensor([True, False, False])
    whole = weighted_prompt_loss(logits, targets, lab, 2.0, 1.0)
    assert whole.item() == pytest.approx(4 * math.log(2) / 3)
    parts = (weighted_prompt_loss(logits[:1], targets[:1], lab[:1], 2.0, 1.0, batch_total=3)
             + weighted_prompt_loss(logits[1:], targets[1:], lab[1:], 2.0, 1.0, batch_total=3))
    assert parts.item() == pytest.approx(whole.item())
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3) and harmonic_mean(0, 0) == 0


def test_grip_k_released_schedule_floors_on_the_flowers102_pool():
    """Flowers102's SSL pool (816 unlabelled, 102 classes), the released code's arithmetic by hand:
    num_samples = int(816 / 10) = 81, K_t = int((t+1) * 81 / 102) = 0, 1, 2, 3, 3, 4, 5, 6, 7, 7, cap
    int(816 / 102) = 8; the clean schedule: ceil((t+1) * 816 / 1020) = 1, 2, ..., 8. Kills: rounding up in
    released mode, a cap of ceil, num_samples not floored first (int(729 * ... ) differs: t=9 -> 8)."""
    assert [grip_k(t, 816, 102, schedule="released") for t in range(10)] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    assert [grip_k(t, 816, 102) for t in range(10)] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]
    assert grip_k(10, 816, 102, schedule="released") == 8  # int(11 * 81 / 102)
    assert grip_k(30, 816, 102, schedule="released") == 8  # capped at floor(|U| / C), not int(31 * 81 / 102) = 24
    with pytest.raises(ValueError, match="schedule must be"):
        grip_k(0, 816, 102, schedule="ceil")


@pytest.mark.parametrize("setting, strategy, multimodal, expected", [
    ("ssl", "fpl", False, (4.0, 1.0)),            # |P|/|L| * CE_L + CE_P
    ("ssl", "fpl", True, (2.0, 1.0)),             # sqrt(|P|/|L|)
    ("ssl", "ifpl", False, (0.25, 1.0)),          # update_training_set: |L|/|P| every round
    ("ssl", "grip", True, (0.25, 1.0)),           # ... multimodal too (no sqrt there)
    ("trzsl", "fpl", False, (1.0, 0.25)),         # CE_L + |L|/|P| * CE_P
    ("trzsl", "fpl", True, (1.0, 0.5)),           # multimodal FPL: sqrt(|L|/|P|)
    ("trzsl", "grip", False, (1.0, 0.25)),
    ("trzsl", "ifpl", True, (1.0, 0.25)),
    ("ul", "grip", False, (0.0, 1.0)),
    ("ssl", "none", False, (1.0, 0.0)),           # CoOp on the labels
])
def test_released_loss_against_a_hand_computed_batch(setting, strategy, multimodal, expected):
    """|L| = 10, |P| = 40 training rows. A batch of rows [L, L, P] over 2 classes with logits (ln 3, 0), (0, 0),
    (ln 3, 0) and targets 0, 1, 1: CEs ln(4/3), ln 2, ln 4, so the released loss is
    w_L * (ln(4/3) + ln 2) / 2 + w_P * ln 4; checked too against the released code's own computation (one
    torch CrossEntropyLoss per part). Kills: the clean sum / B (which gives (w_L (ln 4/3 + ln 2) + w_P ln 4) / 3),
    the SSL FPL weight kept in IFPL/GRIP, a sqrt outside multimodal FPL, swapped parts."""
    w = released_loss_weights(setting, strategy, 0 if setting == "ul" else 10, 40, multimodal=multimodal)
    assert w == pytest.approx(expected)
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [math.log(3), 0.0]])
    targets = torch.tensor([0, 1, 1])
    lab = torch.tensor([True, True, False])
    by_hand = w[0] * (math.log(4 / 3) + math.log(2)) / 2 + w[1] * math.log(4)
    loss = part_mean_prompt_loss(logits, targets, lab, *w)
    assert loss.item() == pytest.approx(by_hand)
    ce = torch.nn.CrossEntropyLoss()
    assert loss.item() == pytest.approx(w[0] * ce(logits[:2], targets[:2]).item() + w[1] * ce(logits[2:], targets[2:]).item())


def test_released_loss_absent_part_global_batch_split_and_bad_input():
    """A batch without labelled rows adds 0 for them (the released ``error = 0``), and two ranks' halves with
    the global per-part counts add up to the whole. Kills: nan from an empty mean, local counts."""
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 1, 1, 0])
    lab = torch.tensor([True, False, False, False])
    only_p = part_mean_prompt_loss(logits[1:], targets[1:], lab[1:], 5.0, 1.0)
    assert only_p.item() == pytest.approx((math.log(2) + math.log(4) + math.log(2)) / 3)
    whole = part_mean_prompt_loss(logits, targets, lab, 5.0, 1.0)
    halves = (part_mean_prompt_loss(logits[:2], targets[:2], lab[:2], 5.0, 1.0, batch_labelled=1, batch_pseudo=3)
              + part_mean_prompt_loss(logits[2:], targets[2:], lab[2:], 5.0, 1.0, batch_labelled=1, batch_pseudo=3))
    assert halves.item() == pytest.approx(whole.item())
    assert whole.item() == pytest.approx(5 * math.log(4 / 3) + only_p.item())
    assert released_loss_weights("ssl", "grip", 10, 0) == (1.0, 0.0)  # a K = 0 round: the labels alone
    with pytest.raises(ValueError, match="needs labelled"):
        released_loss_weights("trzsl", "grip", 0, 10)
    with pytest.raises(ValueError, match="unknown strategy"):
        released_loss_weights("ssl", "fixmatch", 10, 10)


def test_candidate_probs_released_trzsl_softmax_is_the_softmax_over_unseen_logits():
    """The released TRZSL ranks by a softmax over the unseen classes' logits: renormalised columns equal it
    (independent reference: softmax of the logit columns), and the ranking can differ from the restricted
    all-class softmax: for class 1, image 1 has more probability in absolute terms, image 0 relative to
    the other unseen class (most of image 0's mass is on the seen class 0).
    Kills: restricting without renormalising, renormalising over the wrong columns."""
    logits = torch.tensor([[5.0, 2.0, 0.0], [0.0, 0.5, 0.0]])  # class 0 seen, classes 1 and 2 unseen
    probs = logits.softmax(dim=1)
    released = candidate_probs(probs, [1, 2], "candidates")
    torch.testing.assert_close(released, logits[:, [1, 2]].double().softmax(dim=1))
    clean = candidate_probs(probs, [1, 2])
    torch.testing.assert_close(clean, probs[:, [1, 2]].double())
    assert top_k_per_class(clean, 1)[0] == [1] and top_k_per_class(released, 1)[0] == [0]  # column 0 = class 1
    with pytest.raises(ValueError, match="softmax_over"):
        candidate_probs(probs, [1], "unseen")
