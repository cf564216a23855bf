"""Pseudolabel statistics and calibration against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from zmdist.methods.pseudolabels import (
    accuracy_at_thresholds,
    expected_calibration_error,
    pseudolabel_stats,
    reliability_bins,
    zero_shot_probs,
)


def test_zero_shot_probs_normalises_and_scales():
    # image (3, 4) -> (0.6, 0.8); logits 10 * (0.6, 0.8) = (6, 8); softmax = (1, e^2) / (1 + e^2)
    probs = zero_shot_probs(torch.tensor([[3.0, 4.0]]), torch.eye(2), logit_scale=10.0)
    e2 = math.exp(2)
    assert probs[0].tolist() == pytest.approx([1 / (1 + e2), e2 / (1 + e2)], abs=1e-6)


def test_pseudolabel_stats_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    s = pseudolabel_stats(probs, k=2)
    assert s.label.tolist() == [0, 2]
    assert s.confidence.tolist() == pytest.approx([0.7, 0.5])
    assert s.margin.tolist() == pytest.approx([0.5, 0.25])
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))  # 0.80182
    h1 = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))  # 1.03972
    assert s.entropy.tolist() == pytest.approx([h0, h1], abs=1e-6)
    assert s.topk_classes.shape == (2, 2)
    assert s.topk_classes[0].tolist() == [0, 1]
    assert s.topk_probs[0].tolist() == pytest.approx([0.7, 0.2])
    # k larger than C is clipped; one class: margin = top probability
    assert pseudolabel_stats(probs, k=10).topk_classes.shape == (2, 3)
    one = pseudolabel_stats(torch.ones(3, 1), k=5)
    assert one.margin.tolist() == [1.0, 1.0] + [1.0]


def test_ece_and_bins_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1])
    # 5 bins: 0.6 falls in (0.4, 0.6], 0.9 in (0.8, 1.0]
    bins = reliability_bins(conf, correct, 5)
    assert bins["count"].tolist() == [0, 0, 2, 0, 2]
    assert bins["accuracy"][2] == 1.0 and bins["accuracy"][4] == 0.5
    # ECE = 0.5 * |1 - 0.6| + 0.5 * |0.5 - 0.9| = 0.4
    assert expected_calibration_error(conf, correct, 5) == pytest.approx(0.4)
    # confidence exactly 1.0 and 0.0 land in the end bins
    edge = reliability_bins(np.array([0.0, 1.0]), np.array([0, 1]), 4)
    assert edge["count"].tolist() == [1, 0, 0, 1]
    # perfectly calibrated -> 0
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1]), 10) == pytest.approx(0.0)


def test_accuracy_at_thresholds_by_hand():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1])
    rows = accuracy_at_thresholds(conf, correct, [0.5, 0.7, 0.95])
    assert [r["count"] for r in rows] == [4, 2, 0]
    assert [r["coverage"] for r in rows] == [1.0, 0.5, 0.0]
    assert rows[0]["accuracy"] == 0.75 and rows[1]["accuracy"] == 0.5
    assert math.isnan(rows[2]["accuracy"])
